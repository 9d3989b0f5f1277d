"""Helpers for the serve runtime's tests: models made in the runtime, a labhub_serve process, HTTP over loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.runtimes.support import BuiltRuntime

# Run with the serve runtime's python: writes the models into argv[1], and what each predicts for the
# inputs it drew (computed by the libraries themselves, from the files as saved) into argv[1]/expected.json.
MAKE_MODELS = """
import json, os, sys
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from pathlib import Path
import numpy as np
out = Path(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.random((5, 4)).astype("float32")
expected = {"x": x.tolist()}

import keras
for version, seed in ((1, 1), (2, 2)):
    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(8, activation="relu"),
                            keras.layers.Dense(1, activation="sigmoid")])
    net.save(out / f"higgs-{version}.keras")
    saved = keras.saving.load_model(out / f"higgs-{version}.keras", compile=False)
    expected[f"keras{version}"] = saved.predict(x, verbose=0).tolist()

import onnx
from onnx import TensorProto, helper, numpy_helper
weights = rng.normal(size=(4, 3)).astype("float32")
bias = rng.normal(size=3).astype("float32")
graph = helper.make_graph(
    [helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
     helper.make_node("Gemm", ["ab", "W", "c"], ["logits"]),
     helper.make_node("Softmax", ["logits"], ["prob"], axis=1)],
    "tiny",
    [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
     helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
     helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3])],
    initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "c")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, out / "tiny.onnx")
import onnxruntime
session = onnxruntime.InferenceSession(str(out / "tiny.onnx"), providers=["CPUExecutionProvider"])
logits, prob = session.run(["logits", "prob"], {"a": x[:, :2], "b": x[:, 2:]})
expected["onnx"] = {"logits": logits.tolist(), "prob": prob.tolist()}

import joblib
import skops.io
from sklearn.linear_model import LogisticRegression
train = rng.random((60, 4))
clf = LogisticRegression().fit(train, (train[:, 0] + train[:, 1] > 1).astype(int))
skops.io.dump(clf, out / "clf.skops")
joblib.dump(clf, out / "clf.joblib")
expected["sklearn"] = skops.io.load(out / "clf.skops").predict(x.astype("float64")).tolist()


import torch
torch.manual_seed(0)
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
    def forward(self, x):
        return torch.softmax(self.fc(x), dim=1)
torch.jit.trace(Net(), torch.zeros(1, 4)).save(str(out / "net.pt"))  # trace: -c code has no source to script
with torch.no_grad():
    expected["torch"] = torch.jit.load(str(out / "net.pt"))(torch.from_numpy(x)).numpy().tolist()


class Sneaky:  # loading it would mean trusting code skops does not know: what the server must refuse
    def predict(self, rows):
        return rows


skops.io.dump(Sneaky(), out / "sneaky.skops")
(out / "expected.json").write_text(json.dumps(expected))
"""


def make_models(runtime: BuiltRuntime, directory: Path) -> dict[str, Any]:
    """Write higgs-1.keras, higgs-2.keras, tiny.onnx, clf.skops, clf.joblib, net.pt (TorchScript), sneaky.skops;
    return what they predict."""
    result = subprocess.run([str(runtime.python), "-c", MAKE_MODELS, str(directory)], capture_output=True,
                            text=True, timeout=180, env=clean_env(), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((directory / "expected.json").read_text())


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the hub's interpreter settings (a runtime is its own world)."""
    inherited = {key: value for key, value in os.environ.items()
                 if not key.startswith(("PYTHON", "KERAS", "LABHUB_", "VIRTUAL_ENV", "JAX"))}
    return {**inherited, "LABHUB_SECRET": "not-for-the-server", **extra}


@dataclass
class Server:
    """A running ``python -m labhub_serve``; its output goes to files (a full pipe would stall it)."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    port: int | None = None
    socket_path: Path | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, as the hub stops an instance; the exit status (uvicorn exits by the signal it got)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(runtime: BuiltRuntime, workdir: Path, args: Sequence[str], *, pass_fds: Sequence[int] = (),
                 timeout: float = 60) -> Server:
    """Start labhub_serve with ``args`` and wait until it says where it serves (or exits)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stdout, stderr = workdir / "stdout", workdir / "stderr"
    argv = [str(runtime.python), "-m", "labhub_serve", *args]
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=workdir,
                                   env=clean_env(), pass_fds=tuple(pass_fds))
    server = Server(process, stdout, stderr, argv=argv)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in stdout.read_text(errors="replace").splitlines():
            if line.startswith("labhub_serve: serving ") and " on " in line:
                where = line.rsplit(" on ", 1)[1]
                if where.startswith("socket "):
                    server.socket_path = Path(where.removeprefix("socket "))
                elif not where.startswith("fd "):
                    server.port = int(where.rsplit(":", 1)[1])
                return server
        if process.poll() is not None:
            return server
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise AssertionError(f"labhub_serve did not start in {timeout} s:\n{server.output()}")


def run_to_exit(runtime: BuiltRuntime, workdir: Path, args: Sequence[str], timeout: float = 60) -> Server:
    """Run labhub_serve expecting it to exit (a start that fails)."""
    server = start_server(runtime, workdir, args, timeout=timeout)
    server.process.wait(timeout)
    return server


def last_stderr_line(server: Server) -> str:
    lines = server.stderr.read_text(errors="replace").rstrip("\n").splitlines()
    return lines[-1] if lines else ""


def curl(*args: str, timeout: float = 30) -> tuple[int, Any]:
    """``curl`` a loopback URL; returns the status and the JSON body (or the text when it is not JSON)."""
    result = subprocess.run(["curl", "-sS", "--max-time", str(timeout), "-w", "\n%{http_code}", *args],
                            capture_output=True, text=True, timeout=timeout + 5)
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    try:
        return int(status), json.loads(body)
    except json.JSONDecodeError:
        return int(status), body


def post_json(url: str, data: Any, *extra: str) -> tuple[int, Any]:
    return curl("-X", "POST", "-H", "content-type: application/json", "--data-binary", json.dumps(data),
                *extra, url)
