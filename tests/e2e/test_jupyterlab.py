"""A real JupyterLab, launched through the API and used through the proxy (SQLite and PostgreSQL)."""

from __future__ import annotations

import os

import pytest

from labhub.backends import procinfo
from tests.e2e.conftest import run_code

pytestmark = [pytest.mark.asyncio, pytest.mark.jupyter]


async def test_launch_kernel_over_websocket_and_stop(start_hub, database_url, shared_tmp):
    hub = await start_hub(database_url, data_dir=shared_tmp / "data")
    alice = await hub.user("alice")
    resp = await alice.http.post("/api/v1/instances", json={
        "template": "jupyterlab", "name": "ws1", "size": "small", "hours": 2, "params": {}})
    assert resp.status_code == 201, resp.text
    inst = resp.json()
    await hub.wait_status(alice, inst["id"], {"running"}, timeout=90)

    assert inst["url"] == f"http://ws1--alice.localhost:{hub.running.proxy.port}/"  # an origin of its own
    lab = hub.instance_client(alice, inst)
    api = await lab.get("/api")
    assert api.status_code == 200 and "version" in api.json()
    kernel = await lab.post("/api/kernels", json={"name": "python3"})
    assert kernel.status_code == 201, kernel.text
    ws_url = inst["url"].replace("http://", "ws://") + f"api/kernels/{kernel.json()['id']}/channels"
    assert await run_code(ws_url, alice.token, "6*7", connect=hub.url) == "42"

    async with hub.hub.sessions() as session:
        from labhub.models import Instance

        handle = (await session.get(Instance, inst["id"])).handle
    assert procinfo.start_ticks(handle["pid"]) == handle["start_ticks"]
    assert handle["socket"] and handle["port"] is None  # a Unix socket in a private directory, no TCP port
    if os.geteuid() == 0:  # isolation in force: the server runs as the owner's system account
        assert handle["user"] == "labhub-alice"
        assert procinfo.proc_uid(handle["pid"]) == handle["uid"] != 0

    assert (await alice.http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
    await hub.wait_status(alice, inst["id"], {"stopped"}, timeout=30)
    assert procinfo.start_ticks(handle["pid"]) != handle["start_ticks"]  # the process is gone
    with pytest.raises(ProcessLookupError):
        os.killpg(handle["pgid"], 0)
    logs = await alice.http.get(f"/api/v1/instances/{inst['id']}/logs")
    assert "Jupyter Server" in logs.text


async def test_failing_template_ends_failed_with_its_output(start_hub, sqlite_url, tmp_path):
    site = tmp_path / "templates"
    site.mkdir()
    (site / "broken.yaml").write_text(
        "title: Broken\ncommand: [python3, -c, \"import sys; print('boom: no GPU driver'); sys.exit(3)\"]\n")
    hub = await start_hub(sqlite_url, templates_dir=site)
    alice = await hub.user("alice")
    inst = (await alice.http.post("/api/v1/instances", json={"template": "broken", "name": "b1"})).json()
    failed = await hub.wait_status(alice, inst["id"], {"failed"}, timeout=30)
    assert "exited with code 3" in failed["message"]
    events = (await alice.http.get(f"/api/v1/instances/{inst['id']}/events")).json()
    assert events[-1]["status"] == "failed"
    assert "boom: no GPU driver" in events[-1]["message"]
