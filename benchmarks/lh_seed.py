"""Seed a LabHub database (run with LabHub's Python, hub stopped): users, tokens, instances.

usage: lh_seed.py --users N --instances N --token-users N   (LABHUB_DATA_DIR etc. from the env)
prints JSON: {"admin_token": ..., "tokens": {name: token}}
Seeded users have no password (like JupyterHub's); seeded instances are past ones
(status stopped, with their five lifecycle events), so they sit in the database
like JupyterHub's recorded-but-stopped servers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import uuid

from labhub import db
from labhub.models import Event, Instance, User
from labhub.services import credentials, users
from labhub.settings import load_settings
from sqlalchemy import select


async def main(n_users: int, n_instances: int, token_users: int) -> dict:
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(settings.effective_database_url)
    await db.upgrade(engine)
    sessions = db.make_sessionmaker(engine)
    out: dict = {"tokens": {}}
    now = dt.datetime.now(dt.UTC)
    async with sessions() as s, s.begin():
        admin = await users.get_user(s, name="bench-admin")
        if admin is None:
            admin = await users.create_user(s, name="bench-admin", admin=True)
        out["admin_token"] = (await credentials.issue_token(s, user=admin, note="bench"))[1]
        have = set((await s.execute(select(User.name))).scalars())
        for i in range(1, token_users + 1):
            name = f"bench{i}"
            user = await users.get_user(s, name=name) or await users.create_user(s, name=name)
            out["tokens"][name] = (await credentials.issue_token(s, user=user, note="bench"))[1]
        new = [User(name=f"bench-u{i:04d}") for i in range(n_users) if f"bench-u{i:04d}" not in have]
        s.add_all(new)
        await s.flush()
        owners = new or [admin]
        events = []
        for i in range(n_instances):
            owner = owners[i % len(owners)]
            iid = uuid.uuid4().hex
            start = now - dt.timedelta(hours=2)
            s.add(Instance(id=iid, owner_id=owner.id, name=f"past{i}", active_name=None, template="jupyterlab",
                           kind="workspace", size="small", cpus=1, memory_mb=2048, gpus=0, hours=4, params={},
                           backend="local", handle=None, upstream=None, status="stopped", reason="user",
                           message="stopped by the owner", created_at=start, started_at=start,
                           ended_at=now - dt.timedelta(hours=1), expires_at=start + dt.timedelta(hours=4)))
            for k, status in enumerate(("requested", "starting", "running", "stopping", "stopped")):
                events.append(Event(instance_id=iid, at=start + dt.timedelta(seconds=k), status=status, reason="seed",
                            message=status))
        await s.flush()  # instances before their events (no ORM relationship orders them)
        s.add_all(events)
    await engine.dispose()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=0)
    ap.add_argument("--instances", type=int, default=0)
    ap.add_argument("--token-users", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(a.users, a.instances, a.token_users))))
