"""A hub killed with SIGKILL comes back and re-adopts its running workspace (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from labhub.backends import procinfo
from labhub.backends.local import LocalBackend
from tests.e2e.conftest import run_code

pytestmark = [pytest.mark.asyncio, pytest.mark.jupyter]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubProcess:
    """`labhub serve` in a child process, as an operator runs it."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LABHUB_DATA_DIR": str(data_dir), "LABHUB_DATABASE_URL": database_url,
                    "LABHUB_LOG_LEVEL": "warning", "LABHUB_RECONCILE_INTERVAL": "0.5"}
        self.log = data_dir.parent / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, stdin: str = "") -> str:
        out = subprocess.run([sys.executable, "-m", "labhub.cli.main", *args], env=self.env, input=stdin,
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout

    async def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "labhub.cli.main", "serve", "--bind",
                                          f"127.0.0.1:{self.port}"], env=self.env, stdout=log, stderr=log)
        async with httpx.AsyncClient() as http:
            for _ in range(600):  # 30 s: a loaded 2-core machine can take seconds to import the hub
                try:
                    if (await http.get(f"{self.url}/api/v1/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert self.proc.poll() is None, self.log.read_text()
                await asyncio.sleep(0.05)
        raise AssertionError("hub did not come up: " + self.log.read_text())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)


async def _wait(http: httpx.AsyncClient, iid: str, status: str, timeout: float = 90) -> dict:
    for _ in range(int(timeout / 0.1)):
        body = (await http.get(f"/api/v1/instances/{iid}")).json()
        if body["status"] == status:
            return body
        assert body["status"] not in {"failed", "stopped", "expired"} or status == body["status"], body
        await asyncio.sleep(0.1)
    raise AssertionError(f"not {status}: {body}")


async def test_sigkilled_hub_readopts_running_workspace(database_url, shared_tmp):
    data = shared_tmp / "data"
    hub = HubProcess(data, database_url)
    await hub.start()
    try:
        hub.cli("user", "add", "alice", "--password-stdin", stdin="correct horse battery\n")
        token = hub.cli("token", "issue", "alice").strip()
        async with httpx.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {token}"},
                                     timeout=30) as http:
            inst = (await http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws1"})).json()
            await _wait(http, inst["id"], "running")
            kernel = (await http.post("/user/alice/ws1/api/kernels", json={"name": "python3"})).json()

            hub.kill(signal.SIGKILL)
            owned = await LocalBackend(state_dir=data / "instances", isolation="none").list_owned()
            assert [h["instance_id"] for h in owned] == [inst["id"]]  # the workspace outlived the hub
            pid, ticks = owned[0]["pid"], owned[0]["start_ticks"]

            await hub.start()
            again = await _wait(http, inst["id"], "running", timeout=10)
            assert again["started_at"] == (await http.get(f"/api/v1/instances/{inst['id']}")).json()["started_at"]
            ws = hub.url.replace("http://", "ws://") + f"/user/alice/ws1/api/kernels/{kernel['id']}/channels"
            assert await run_code(ws, token, "6*7") == "42"  # the same kernel, through the new proxy

            owned = await LocalBackend(state_dir=data / "instances", isolation="none").list_owned()
            assert [(h["pid"], h["start_ticks"]) for h in owned] == [(pid, ticks)]  # not duplicated
            assert len((await http.get("/api/v1/instances")).json()) == 1
            events = (await http.get(f"/api/v1/instances/{inst['id']}/events")).json()
            assert [e["status"] for e in events].count("starting") == 1

            assert (await http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
            await _wait(http, inst["id"], "stopped", timeout=30)
            assert not procinfo.is_alive(pid, ticks)
            assert await LocalBackend(state_dir=data / "instances", isolation="none").list_owned() == []
    finally:
        hub.kill(signal.SIGTERM)
