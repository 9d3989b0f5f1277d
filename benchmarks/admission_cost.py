"""Time the admission step of a launch in process (run with LabHub's python; LABHUB_* from the env).

usage: admission_cost.py --rounds N    prints JSON: {"decision_us": [...], "launch_us": [...]}
Makes its own SQLite database next to LABHUB_DATA_DIR: 10 users with 5 queued launches each, 20
running instances, then times (rolled back each round) the admission step and the whole launch.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
import uuid
from pathlib import Path

from labhub import db
from labhub.backends.fake import FakeBackend
from labhub.catalog.loader import load_catalog
from labhub.models import Instance, Status
from labhub.services import admission, instances, users
from labhub.settings import QuotaSettings, load_settings


async def main(rounds: int) -> dict:
    settings = load_settings()
    path = Path(settings.data_dir).parent / "admission-cost.db"
    path.unlink(missing_ok=True)
    engine = db.make_engine(f"sqlite+aiosqlite:///{path}")
    await db.upgrade(engine)
    sessions = db.make_sessionmaker(engine)
    now = dt.datetime.now(dt.UTC)
    backends = {"fake": FakeBackend()}
    site = QuotaSettings(instances=2)
    async with sessions() as s, s.begin():
        people = [await users.create_user(s, name=f"u{i}") for i in range(10)]
        for n in range(70):
            owner = people[n % 10]
            queued = n >= 20
            s.add(Instance(id=uuid.uuid4().hex, owner_id=owner.id, name=f"i{n}", active_name=f"i{n}",
                           template="jupyterlab", kind="workspace", size="small", cpus=1, memory_mb=2048, gpus=0,
                           hours=4, params={}, backend="fake", handle=None if queued else {"id": n},
                           status=Status.QUEUED if queued else Status.RUNNING,
                           reason="admission" if queued else "ready", message="", created_at=now,
                           expires_at=now + dt.timedelta(hours=4)))
        bench = await users.create_user(s, name="bench")
    catalog = load_catalog(settings.templates_dir)
    decision, launch = [], []
    for n in range(rounds):
        async with sessions() as s:
            await s.begin()
            user = await s.get(type(bench), bench.id)
            t0 = time.perf_counter_ns()
            await admission.lock(s)
            seen = await admission.situation(s, backends=backends, site=site, now=now, owners=[user.id])
            probe = Instance(id=uuid.uuid4().hex, owner_id=user.id, name=f"p{n}", backend="fake", cpus=1,
                             memory_mb=2048, gpus=0, priority=0, created_at=now, hours=1, status=Status.REQUESTED)
            admission.refusal(admission.ask_of(probe), limits=seen.limits[user.id], usage=seen.usage[user.id],
                              capacity=backends["fake"].capacity(), hours=1, period=site.period)
            await admission.decide(s, seen, now=now, new=probe)
            decision.append((time.perf_counter_ns() - t0) / 1e3)
            await s.rollback()
        async with sessions() as s:
            await s.begin()
            user = await s.get(type(bench), bench.id)
            t0 = time.perf_counter_ns()
            await instances.launch(s, user=user, catalog=catalog, sizes=settings.sizes, backends=backends,
                                   template="jupyterlab", name=f"l{n}", quota=site, now=now)
            await s.flush()
            launch.append((time.perf_counter_ns() - t0) / 1e3)
            await s.rollback()
    await engine.dispose()
    path.unlink(missing_ok=True)
    return {"decision_us": decision, "launch_us": launch}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    print(json.dumps(asyncio.run(main(ap.parse_args().rounds))))
