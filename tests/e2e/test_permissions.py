"""As another user's instance account, nothing of the hub's or of other users' can be read.

Bob's code runs as bob's system account, with the one supplementary group the
instance accounts share (it may traverse the data directory, nothing more).
From there the database and its journal, the secret key, alice's home and
alice's log must be unreadable, and the data directory unlistable; bob's own
home and log stay his.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess

import pytest

from labhub.models import Instance

pytestmark = [pytest.mark.asyncio, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (other accounts)")]

WRITE_SECRET = "import pathlib; pathlib.Path('secret.txt').write_text('alice only'); print('written', flush=True); " \
               "import time; time.sleep(60)"
PROBE = """
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        out[path] = "read"
    except PermissionError:
        out[path] = "denied"
    except FileNotFoundError:
        out[path] = "missing"
print(json.dumps(out))
"""


async def test_another_users_instance_account_reads_nothing_it_should_not(start_hub, shared_tmp):
    data = shared_tmp / "data"
    site = shared_tmp / "templates"
    site.mkdir()
    (site / "writer.yaml").write_text("title: Writer\nready_path: null\n"
                                      f"command: {json.dumps(['/usr/bin/python3', '-c', WRITE_SECRET])}\n")
    hub = await start_hub(f"sqlite+aiosqlite:///{data / 'labhub.sqlite'}", data_dir=data, templates_dir=site)
    alice, bob = await hub.user("alice"), await hub.user("bob")
    ids = {}
    for who in (alice, bob):
        inst = (await who.http.post("/api/v1/instances", json={"template": "writer", "name": "w"})).json()
        await hub.wait_status(who, inst["id"], {"running"}, timeout=30)
        ids[who.name] = inst["id"]
    async with hub.hub.sessions() as session:
        bob_handle = (await session.get(Instance, ids["bob"])).handle
    alice_home = data / "homes" / "alice"
    for _ in range(100):
        if (alice_home / "secret.txt").exists():
            break
        await asyncio.sleep(0.05)
    private = [data, data / "labhub.sqlite", data / "labhub.sqlite-wal", data / "secret.key", data / "homes",
               alice_home, alice_home / "secret.txt", data / "instances", data / "instances" / ids["alice"],
               data / "instances" / ids["alice"] / "output.log", data / "instances" / ids["alice"] / "handle.json",
               data / "run"]
    own = [data / "homes" / "bob", data / "instances" / ids["bob"] / "output.log"]
    bob_pw = pwd.getpwnam(bob_handle["user"])
    group = hub.hub.backends["local"].data_dir_group
    result = subprocess.run(["/usr/bin/python3", "-c", PROBE, *map(str, private + own)], user=bob_pw.pw_uid,
                            group=bob_pw.pw_gid, extra_groups=[group], capture_output=True, text=True, cwd="/",
                            timeout=30)
    seen = json.loads(result.stdout)
    assert {p: seen[str(p)] for p in private} == {p: "denied" for p in private}
    assert {p: seen[str(p)] for p in own} == {p: "read" for p in own}
    assert (alice_home / "secret.txt").read_text() == "alice only"  # it was there to be read
