"""labhub_serve --replicas: several processes on one socket, their counters summed, and ending together."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.runtimes.serve_support import clean_env, curl, post_json
from tests.runtimes.support import BuiltRuntime


def start(runtime: BuiltRuntime, workdir: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    (workdir / "tmp").mkdir(parents=True)
    out, err = workdir / "stdout", workdir / "stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen([str(runtime.python), "-m", "labhub_serve", *args], stdout=stdout, stderr=stderr,
                                   stdin=subprocess.DEVNULL, cwd=workdir, env=clean_env(TMPDIR=str(workdir / "tmp")))
    return process, out, err


def wait_for(what: Any, timeout: float = 90, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s")


def ready(*where: str) -> bool:
    """Whether the server answers its readiness route with 200 (a refused connection is not yet)."""
    done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", *where],
                          capture_output=True, text=True, check=False)
    return done.stdout == "200"


def onnx_request(x: list[list[float]]) -> dict[str, Any]:
    rows = len(x)
    return {"inputs": [{"name": "a", "shape": [rows, 2], "datatype": "FP32", "data": [v for r in x for v in r[:2]]},
                       {"name": "b", "shape": [rows, 2], "datatype": "FP32", "data": [v for r in x for v in r[2:]]}]}


def test_replicas_share_one_socket_and_their_counters(serve_runtime, models, tmp_path):
    directory, expected = models
    process, out, err = start(serve_runtime, tmp_path, "--model", str(directory / "tiny.onnx"), "--port", "0",
                              "--replicas", "3", "--store", str(tmp_path / "store"))
    try:
        line = wait_for(lambda: re.search(r"3 replicas on 127\.0\.0\.1:(\d+), pids ([\d ]+)", out.read_text()))
        url, pids = f"http://127.0.0.1:{line[1]}", [int(p) for p in line[2].split()]
        wait_for(lambda: ready(f"{url}/v2/health/ready") or process.poll() is not None)
        assert process.poll() is None, err.read_text()
        for _ in range(30):  # a new connection each: the kernel hands them to the replicas accepting
            status, body = post_json(f"{url}/v2/models/tiny/infer", onnx_request(expected["x"]))
            assert status == 200, body
            assert body["outputs"][1]["data"] == pytest.approx([v for r in expected["onnx"]["prob"] for v in r])
        # every replica's counters, whichever answers /metrics
        status, text = curl(f"{url}/metrics")
        found = re.search(r'labhub_serve_requests_total\{code="200",model="tiny",protocol="v2",version="1"\} (\S+)',
                          text)
        assert status == 200 and found and float(found[1]) == 30.0, text[-2000:]
        served_by = {int(m[1]) for m in (re.fullmatch(r".*_(\d+)\.db", p.name) for p in (tmp_path / "tmp").rglob(
            "*.db")) if m}
        assert len(served_by & set(pids)) >= 2, (served_by, pids)  # more than one replica counted requests
        # what is served is fixed while several replicas serve it
        status, body = curl("-X", "PUT", "-d", json.dumps({"version": 1}), f"{url}/models/tiny/default")
        assert status == 409 and "replicas" in body["error"]

        os.kill(pids[1], signal.SIGKILL)  # one replica dies: the service is not whole, so all of it ends
        assert process.wait(30) != 0
        assert all(not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
                   for pid in pids)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not list((tmp_path / "tmp").glob("labhub-serve-metrics-*"))  # its metrics directory is removed


def test_sigterm_stops_every_replica(serve_runtime, models, tmp_path):
    directory, _ = models
    process, out, _ = start(serve_runtime, tmp_path, "--model", str(directory / "clf.skops"),
                            "--socket", str(tmp_path / "sock"), "--replicas", "2")
    line = wait_for(lambda: re.search(r"pids ([\d ]+)", out.read_text()))
    pids = [int(p) for p in line[1].split()]
    wait_for(lambda: ready("--unix-socket", str(tmp_path / "sock"), "http://x/v2/health/ready"))
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_a_model_that_does_not_load_ends_it_with_the_loaders_error(serve_runtime, tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"no graph")
    process, _, err = start(serve_runtime, tmp_path, "--model", str(tmp_path / "bad.onnx"), "--port", "0",
                            "--replicas", "2")
    assert process.wait(90) == 1
    assert err.read_text().rstrip().splitlines()[-1].startswith("ValueError: bad.onnx: ")
