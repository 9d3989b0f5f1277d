"""LabHub on Slurm, launch -> reachable, against a raw ``sbatch`` -> RUNNING of the same command.

Both sides run ``benchmarks/backend.py`` (a trivial HTTP server) as one Slurm
job with the same resources (1 CPU, 2 GiB) as the same user, on the same
cluster.  The baseline is the least a scheduler-backed launch can cost:
``sbatch --parsable`` until ``squeue`` says RUNNING (polled every 10 ms); it
does not even wait for the server to listen.  LabHub's figure is the whole
user-visible path: ``POST /api/v1/instances`` until a GET through LabHub's
proxy returns the server's answer (job start, call-home, readiness probe,
route).  Launches alternate between the two; the medians are compared.

By default a private single-node Slurm is started (``tests/slurmcluster.py``,
needs root and Debian's slurm-wlm + munge); ``--slurm-conf`` uses an existing
cluster instead.  Prints one JSON object on stdout.

usage: python benchmarks/slurm_launch.py [--runs 7] [--slurm-conf /etc/slurm/slurm.conf]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BACKEND = REPO / "benchmarks" / "backend.py"
NAME = "slurm launch -> reachable / raw sbatch -> RUNNING"


def log(*args: object) -> None:
    print("bench:", *args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Slurm:
    def __init__(self, conf: Path) -> None:
        self.env = {**os.environ, "SLURM_CONF": str(conf)}

    def run(self, *argv: str, input: str | None = None) -> str:
        return subprocess.run(list(argv), env=self.env, input=input, capture_output=True, text=True,
                              check=True, timeout=60).stdout

    def state(self, job: str) -> str:
        return self.run("squeue", "-h", "--states=all", "-j", job, "-o", "%T").strip()


def raw_launch(slurm: Slurm, workdir: Path, user: str | None) -> float:
    """Seconds from calling sbatch until squeue reports RUNNING; the job is cancelled afterwards."""
    script = (f"#!/bin/bash\n#SBATCH --cpus-per-task=1\n#SBATCH --mem=2048M\n#SBATCH --time=10\n"
              f"#SBATCH --chdir={workdir}\n#SBATCH --output=/dev/null\n"
              f"exec {sys.executable} {BACKEND} --port {free_port()} --host 127.0.0.1\n")
    uid = [f"--uid={user}", f"--gid={user}"] if user else []
    started = time.perf_counter()
    job = slurm.run("sbatch", "--parsable", *uid, input=script).strip().split(";")[0]
    while slurm.state(job) != "RUNNING":
        time.sleep(0.01)
    took = time.perf_counter() - started
    slurm.run("scancel", job)
    while slurm.state(job) not in ("CANCELLED", "COMPLETED", "FAILED", ""):
        time.sleep(0.05)
    return took


async def labhub_launch(hub, http: httpx.AsyncClient, name: str) -> float:
    """Seconds from POST /api/v1/instances until the server answers through the proxy; stopped afterwards."""
    started = time.perf_counter()
    resp = await http.post("/api/v1/instances", json={"template": "bench", "name": name, "size": "small",
                                                      "backend": "slurm"})
    resp.raise_for_status()
    inst = resp.json()
    origin = {"Host": urlsplit(inst["url"]).netloc}  # its own origin (Python cannot resolve *.localhost)
    while True:
        try:
            answer = await http.get("/", headers=origin)
            if answer.status_code == 200 and answer.text == "Hello, World!":
                break
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.01)
    took = time.perf_counter() - started
    (await http.delete(f"/api/v1/instances/{inst['id']}")).raise_for_status()
    for _ in range(1200):
        if (await http.get(f"/api/v1/instances/{inst['id']}")).json()["status"] == "stopped":
            break
        await asyncio.sleep(0.05)
    return took


def _account_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def prepare(root: Path) -> None:
    root.chmod(0o711)  # job accounts traverse it
    (root / "templates").mkdir()
    (root / "templates" / "bench.yaml").write_text(yaml.safe_dump({
        "title": "Benchmark server", "ready_path": "",
        "command": [sys.executable, str(BACKEND), "--port", "{port}", "--host", "{ip}"]}))
    (root / "raw").mkdir(mode=0o777)


async def measure(conf: Path, runs: int) -> dict:
    from labhub import server
    from labhub.services import credentials, users
    from labhub.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="labhub-bench-slurm-"))
    job_user: str | None = None
    existed = _account_exists("labhub-bench")
    try:
        prepare(root)
        settings = Settings(data_dir=root / "data", bind=f"127.0.0.1:{free_port()}", backends=["slurm"],
                            templates_dir=root / "templates", log_level="warning",
                            database_url=f"sqlite+aiosqlite:///{root / 'hub.sqlite'}",
                            slurm={"conf": str(conf), "kill_wait": 30})
        running = await server.start(settings)
        try:
            async with running.hub.tx() as session:
                user = await users.create_user(session, name="bench", password=secrets.token_urlsafe(16))
                _, token = await credentials.issue_token(session, user=user, note="bench")
            backend = running.hub.backends["slurm"]
            job_user = f"{backend.account_prefix}bench" if backend.run_as == "accounts" else None
            slurm = Slurm(conf)
            workdir = root / "raw"
            raw, lab = [], []
            async with httpx.AsyncClient(base_url=running.url, timeout=60,
                                         headers={"Authorization": f"Bearer {token}"}) as http:
                await labhub_launch(running.hub, http, "warmup")  # creates the account, warms caches
                await asyncio.to_thread(raw_launch, slurm, workdir, job_user)
                for i in range(runs):
                    raw.append(await asyncio.to_thread(raw_launch, slurm, workdir, job_user))
                    lab.append(await labhub_launch(running.hub, http, f"b{i}"))
                    log(f"run {i + 1}/{runs}: raw sbatch -> RUNNING {raw[-1]:.3f} s, "
                        f"LabHub launch -> reachable {lab[-1]:.3f} s")
        finally:
            await running.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if job_user and not existed:  # the per-user account the hub created for the benchmark
            subprocess.run(["userdel", job_user], check=False, capture_output=True)  # noqa: ASYNC221 - at exit
    baseline, labhub = statistics.median(raw), statistics.median(lab)
    return {"name": NAME, "unit": "s", "labhub": round(labhub, 3), "baseline": round(baseline, 3),
            "ratio": round(labhub / baseline, 2), "runs": runs,
            "labhub_runs": [round(x, 3) for x in lab], "baseline_runs": [round(x, 3) for x in raw]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--slurm-conf", type=Path, help="an existing cluster's slurm.conf (default: start one)")
    args = ap.parse_args()
    cluster = None
    if args.slurm_conf is None:
        from tests.slurmcluster import SlurmCluster

        cluster = SlurmCluster().start()
        log(f"started a single-node Slurm in {cluster.root}")
    try:
        result = asyncio.run(measure(args.slurm_conf or cluster.conf, args.runs))
    finally:
        if cluster is not None:
            cluster.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
