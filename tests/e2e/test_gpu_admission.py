"""GPUs on the local backend, with a made-up inventory of two (``LABHUB_CAPACITY__GPUS=2``): each real
process sees only its own GPU in ``CUDA_VISIBLE_DEVICES``; a third launch waits in the admission queue
and starts, on the freed GPU, when one ends."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

pytestmark = pytest.mark.asyncio

SHOWS_ITS_GPUS = textwrap.dedent("""\
    title: Shows its GPUs
    kind: job
    command: [python3, -c, "import os, time; print('gpus=' + os.environ.get('CUDA_VISIBLE_DEVICES', '-'), flush=True); time.sleep(600)"]
    hours: {default: 1, max: 2}
""")
SIZES = {"small": {"cpus": 1, "memory_mb": 512}, "gpu": {"cpus": 1, "memory_mb": 512, "gpus": 1},
         "three": {"cpus": 1, "memory_mb": 512, "gpus": 3}}


async def visible(caller, iid: str) -> str:
    for _ in range(400):
        text = (await caller.http.get(f"/api/v1/instances/{iid}/logs")).text
        if "gpus=" in text:
            return text.split("gpus=", 1)[1].split()[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"instance {iid} never said which GPUs it sees")


async def test_gpus_are_handed_out_exclusively_and_the_queue_waits_for_them(start_hub, sqlite_url, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "gpus.yaml").write_text(SHOWS_ITS_GPUS)
    hub = await start_hub(sqlite_url, templates_dir=templates, sizes=SIZES, capacity={"gpus": 2})
    alice = await hub.user("alice")

    async def launch(name, size="gpu"):
        return await alice.http.post("/api/v1/instances", json={"template": "gpus", "name": name, "size": size})

    refused = await launch("many", "three")
    assert refused.status_code == 422 and refused.json()["fields"]["size"] == "3 GPUs requested but this machine has 2"
    first, second, third = [(await launch(f"g{n}")).json() for n in range(3)]
    assert third["status"] == "queued" and third["queue_position"] == 1
    assert third["message"] == "waiting for 1 GPU: 0 free on the local backend"
    seen = {await visible(alice, first["id"]), await visible(alice, second["id"])}
    assert seen == {"0", "1"}  # one each, never shared

    freed = await visible(alice, first["id"])
    await alice.http.delete(f"/api/v1/instances/{first['id']}")
    running = await hub.wait_status(alice, third["id"], {"running"})
    assert running["queue_position"] is None
    assert await visible(alice, third["id"]) == freed
