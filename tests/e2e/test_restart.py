"""A hub killed with SIGKILL comes back and re-adopts its running workspace (SQLite and PostgreSQL)."""

from __future__ import annotations

import signal
from urllib.parse import urlsplit

import httpx
import pytest

from labhub.backends import procinfo
from labhub.backends.local import LocalBackend
from tests.e2e.conftest import run_code
from tests.hubprocess import HubProcess, wait_status

pytestmark = [pytest.mark.asyncio, pytest.mark.jupyter]


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
            await wait_status(http, inst["id"], "running")
            on_origin = {"Host": urlsplit(inst["url"]).netloc}  # its own origin (*.localhost: Python names it)
            kernel = (await http.post("/api/kernels", json={"name": "python3"}, headers=on_origin)).json()

            hub.kill(signal.SIGKILL)
            owned = await LocalBackend(state_dir=data / "instances", isolation="none").list_owned()
            assert [h["instance_id"] for h in owned] == [inst["id"]]  # the workspace outlived the hub
            pid, ticks = owned[0]["pid"], owned[0]["start_ticks"]

            await hub.start()
            again = await wait_status(http, inst["id"], "running", within=10)
            assert again["started_at"] == (await http.get(f"/api/v1/instances/{inst['id']}")).json()["started_at"]
            ws = inst["url"].replace("http://", "ws://") + f"api/kernels/{kernel['id']}/channels"
            assert await run_code(ws, token, "6*7", connect=hub.url) == "42"  # the same kernel, through the new proxy

            owned = await LocalBackend(state_dir=data / "instances", isolation="none").list_owned()
            assert [(h["pid"], h["start_ticks"]) for h in owned] == [(pid, ticks)]  # not duplicated
            assert len((await http.get("/api/v1/instances")).json()) == 1
            events = (await http.get(f"/api/v1/instances/{inst['id']}/events")).json()
            assert [e["status"] for e in events].count("starting") == 1

            assert (await http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
            await wait_status(http, inst["id"], "stopped", within=30)
            assert not procinfo.is_alive(pid, ticks)
            assert await LocalBackend(state_dir=data / "instances", isolation="none").list_owned() == []
    finally:
        hub.kill(signal.SIGTERM)
