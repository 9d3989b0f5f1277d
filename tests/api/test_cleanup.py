"""Clean-up: an orphan process (its record gone), a deleted user's home, an instance past its expiry
and a job directory nothing accounts for are reported by a dry run, then removed and audited.

The reconciler's own pass runs once a minute here, so what it would clean by itself stays for the
survey to find; the clock is injected for the expiry."""

from __future__ import annotations

import datetime as dt
import os
import textwrap

import pytest
from sqlalchemy import delete

from labhub.models import Event, Instance
from tests.conftest import OffsetClock

pytestmark = pytest.mark.asyncio

SLEEPER = textwrap.dedent("""\
    title: Sleeper
    kind: job
    command: [python3, -c, "import time; print('up', flush=True); time.sleep(600)"]
    hours: {default: 1, max: 2}
""")



async def test_leftovers_are_reported_then_removed_and_audited(start_hub, sqlite_url, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "sleeper.yaml").write_text(SLEEPER)
    clock = OffsetClock()
    hub = await start_hub(sqlite_url, templates_dir=templates, clock=clock, reconcile_interval=60)
    admin, alice = await hub.user("root", admin=True), await hub.user("alice")
    lost = (await alice.http.post("/api/v1/instances", json={"template": "sleeper", "name": "lost"})).json()
    late = (await alice.http.post("/api/v1/instances", json={"template": "sleeper", "name": "late", "hours": 1})).json()
    await hub.wait_status(alice, lost["id"], {"running"})
    await hub.wait_status(alice, late["id"], {"running"})
    async with hub.hub.sessions() as session:
        pid = (await session.get(Instance, lost["id"])).handle["pid"]
    async with hub.hub.tx() as session:  # the record is lost; the process runs on
        await session.execute(delete(Event).where(Event.instance_id == lost["id"]))
        await session.execute(delete(Instance).where(Instance.id == lost["id"]))
    ghost_home = hub.hub.home_for("ghost")
    ghost_home.mkdir(parents=True)
    (ghost_home / "notes.txt").write_text("left behind")
    stray_job = hub.hub.jobs.root / ("f" * 32)
    (stray_job / "output").mkdir(parents=True)
    clock.offset = dt.timedelta(hours=2)  # "late" is past its hour

    report = await admin.http.post("/api/v1/admin/cleanup", json={"dry_run": True})
    assert report.status_code == 200, report.text
    found = {(i["kind"], i["target"]) for i in report.json()["items"]}
    assert {("orphan", lost["id"]), ("expired", late["id"]), ("home", str(ghost_home)),
            ("job_files", str(stray_job))} <= found
    assert not any(i["done"] for i in report.json()["items"])
    assert ghost_home.exists() and stray_job.exists() and os.path.exists(f"/proc/{pid}")  # a dry run removes nothing
    assert ("home", str(hub.hub.home_for("alice"))) not in found and ("orphan", late["id"]) not in found

    assert (await alice.http.post("/api/v1/admin/cleanup", json={"dry_run": True})).status_code == 403
    done = await admin.http.post("/api/v1/admin/cleanup", json={"dry_run": False})
    assert done.status_code == 200
    removed = {(i["kind"], i["target"]) for i in done.json()["items"] if i["done"]}
    assert {("orphan", lost["id"]), ("expired", late["id"]), ("home", str(ghost_home)),
            ("job_files", str(stray_job))} <= removed
    assert not ghost_home.exists() and not stray_job.exists()
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
    ended = await hub.wait_status(alice, late["id"], {"expired"})
    assert ended["reason"] == "expired"
    audit = (await admin.http.get("/api/v1/audit", params={"limit": 100})).json()["events"]
    assert {("cleanup.home", str(ghost_home)), ("cleanup.orphan", lost["id"])} <= {
        (e["action"], e["target"]) for e in audit if e["actor"] == "root"}

    again = (await admin.http.post("/api/v1/admin/cleanup", json={"dry_run": True})).json()["items"]
    assert not {(i["kind"], i["target"]) for i in again} & removed  # nothing found twice
