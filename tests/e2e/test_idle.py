"""Idle culling that knows what JupyterLab is doing: a busy kernel keeps a workspace that has no
traffic; once it is done and the idle time has passed, the workspace stops, saying which signal
decided. A real JupyterLab, the clock injected."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from tests.conftest import OffsetClock
from tests.e2e.conftest import run_code

pytestmark = [pytest.mark.asyncio, pytest.mark.jupyter]



async def kernel_states(lab) -> list[str]:
    return [k["execution_state"] for k in (await lab.get("/api/kernels")).json()]


async def test_a_busy_kernel_is_not_idle_and_the_reason_says_what_decided(start_hub, sqlite_url, shared_tmp):
    clock = OffsetClock()
    hub = await start_hub(sqlite_url, data_dir=shared_tmp / "data", clock=clock)
    alice = await hub.user("alice")
    inst = (await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws1",
                                                             "hours": 8})).json()
    inst = await hub.wait_status(alice, inst["id"], {"running"}, timeout=90)
    lab = hub.instance_client(alice, inst)
    kernel = (await lab.post("/api/kernels", json={"name": "python3"})).json()
    ws_url = inst["url"].replace("http://", "ws://") + f"api/kernels/{kernel['id']}/channels"
    computing = asyncio.create_task(run_code(ws_url, alice.token, "import time; time.sleep(4); 6*7",
                                             connect=hub.url))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while "busy" not in await kernel_states(lab):
        assert loop.time() < deadline and not computing.done(), "the kernel never got busy"
        await asyncio.sleep(0.05)

    clock.offset = dt.timedelta(hours=3)  # past the template's 2 h without traffic
    await hub.hub.reconciler.tick()
    await hub.hub.reconciler.tick()
    assert (await alice.http.get(f"/api/v1/instances/{inst['id']}")).json()["status"] == "running"
    assert await computing == "42"  # it went on computing to the end

    await hub.hub.reconciler.tick()  # now nothing is busy and JupyterLab's last activity is 3 h back
    stopped = await hub.wait_status(alice, inst["id"], {"stopped"}, timeout=60)
    assert stopped["reason"] == "idle"
    assert stopped["message"] == "stopped: idle for 3 h, no kernel busy"
