"""A crashed instance leaves nothing behind: processes that escaped into their own session die with it.

The instance starts ``setsid sleep`` (a new session and process group: a
``killpg`` of the instance misses it) and then exits with an error.  When the
hub sees it ended, everything in its cgroups is killed and the cgroups removed.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from labhub.backends.local_isolation import Cgroups

pytestmark = [pytest.mark.asyncio, pytest.mark.skipif(
    os.geteuid() != 0 or not Cgroups(Path("/sys/fs/cgroup")).available, reason="needs root and cgroup v1")]

ESCAPE = ("import subprocess, sys, time\n"
          "p = subprocess.Popen(['setsid', 'sleep', '300'])\n"
          "print('escaped', p.pid, flush=True)\n"
          "time.sleep(0.5)\n"
          "sys.exit(3)\n")


async def test_processes_that_escaped_the_group_die_with_the_instance(start_hub, sqlite_url, shared_tmp):
    site = shared_tmp / "templates"
    site.mkdir()
    command = json.dumps(["/usr/bin/python3", "-c", ESCAPE])
    (site / "escape.yaml").write_text(f"title: Escape\nready_path: null\ncommand: {command}\n")
    hub = await start_hub(sqlite_url, data_dir=shared_tmp / "data", templates_dir=site)
    alice = await hub.user("alice")
    inst = (await alice.http.post("/api/v1/instances", json={"template": "escape", "name": "e1"})).json()
    failed = await hub.wait_status(alice, inst["id"], {"failed"}, timeout=30)
    assert "exited with code 3" in failed["message"]
    pid = int(failed["message"].split("escaped ", 1)[1].split()[0])
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        await asyncio.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the escaped process outlived its instance"
    for controller in ("memory", "cpu", "pids"):
        assert not (Path("/sys/fs/cgroup") / controller / "labhub" / inst["id"]).exists()
