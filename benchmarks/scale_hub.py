"""One LabHub hub managing thousands of running instances, for the ``scale_5000`` figures.

usage (LabHub's Python; LABHUB_* settings from the environment, as ``labhub serve`` reads them):
  scale_hub.py seed --instances N --users U --token-users T --url http://127.0.0.1:PORT
      (hub stopped) N RUNNING instances of the ``scale`` template spread over U users, the first T
      of them (bench1..benchT) with API tokens; prints JSON {"tokens": {name: token},
      "instances": {name: [ids]}}
  scale_hub.py serve --stats DIR
      the hub as ``labhub serve`` runs it (proxy and app in one process, uvloop), with
      :class:`ScaleBackend` as its only backend; appends one JSON line per reconcile pass to
      DIR/ticks.jsonl (wall and process CPU time of Reconciler.tick(), the backend's simulated time in
      it) and one per second to DIR/lag.jsonl (the longest the event loop was blocked, the longest
      garbage collection)

Development aids (environment): BENCH_SCALE_PROFILE_TICK=N writes a cProfile of the Nth pass to
DIR/tickN.prof; BENCH_SCALE_SQL_LOG=PATH logs every SQL statement with the task that ran it.
BENCH_SCALE_{OBSERVE,PER_HANDLE,SUBMIT,TERMINATE}_S change the backend's latencies.

:class:`ScaleBackend` starts nothing: it answers like a batch scheduler with realistic latencies
(every call one round trip to the engine: ``observe_many`` ~30 ms plus a few µs per handle, as one
``squeue`` for all of them; ``submit`` ~100 ms; ``terminate`` ~20 ms) and reports every live
instance RUNNING at the URL in its handle (a real trivial HTTP server, so routes and readiness
probes are real).  Seeded instances are live from the start, as if the engine had been running
them before the hub started.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import gc
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TextIO

from labhub.backends.base import Backend, Handle, LaunchSpec, Observation, Phase

OBSERVE_S = float(os.environ.get("BENCH_SCALE_OBSERVE_S", "0.03"))
PER_HANDLE_S = float(os.environ.get("BENCH_SCALE_PER_HANDLE_S", "0.000005"))
SUBMIT_S = float(os.environ.get("BENCH_SCALE_SUBMIT_S", "0.1"))
TERMINATE_S = float(os.environ.get("BENCH_SCALE_TERMINATE_S", "0.02"))
TEMPLATE = "scale"


class ScaleBackend(Backend):
    """A scheduler-like engine with latencies and no compute (see the module docstring)."""

    name = "scale"

    def __init__(self, url: str) -> None:
        self.url = url
        self.known: dict[str, Handle] = {}  # live jobs as the engine lists them (seeded ones once observed)
        self.ended: set[str] = set()
        self.tick_task: asyncio.Task | None = None  # the reconcile pass in progress (its engine time is counted)
        self.tick_engine_s = 0.0
        self.tick_handles = 0

    def describe_isolation(self) -> str:
        return "none (benchmark scale backend: nothing runs)"

    async def submit(self, spec: LaunchSpec) -> Handle:
        await asyncio.sleep(SUBMIT_S)
        handle = {"instance_id": spec.instance_id, "scale": True, "url": self.url}
        self.ended.discard(spec.instance_id)
        self.known[spec.instance_id] = handle
        return handle

    async def observe_many(self, handles: Mapping[str, Handle]) -> dict[str, Observation]:
        took = OBSERVE_S + PER_HANDLE_S * len(handles)
        await asyncio.sleep(took)
        if asyncio.current_task() is self.tick_task:
            self.tick_engine_s += took
            self.tick_handles += len(handles)
        out = {}
        for iid, handle in handles.items():
            if iid in self.ended or not handle.get("scale"):
                out[iid] = Observation(Phase.GONE, message="no such job")
            else:
                self.known.setdefault(iid, handle)
                out[iid] = Observation(Phase.RUNNING, url=handle.get("url") or self.url)
        return out

    async def terminate(self, handle: Handle, *, grace: float = 5.0) -> bool:
        await asyncio.sleep(TERMINATE_S)
        iid = str(handle.get("instance_id", ""))
        self.ended.add(iid)
        self.known.pop(iid, None)
        return True

    async def list_owned(self) -> list[Handle]:
        await asyncio.sleep(OBSERVE_S + PER_HANDLE_S * len(self.known))
        return list(self.known.values())

    async def logs(self, handle: Handle, *, tail: int = 100) -> AsyncIterator[str]:
        for line in ():
            yield line


def template_yaml() -> str:
    """The site template the seeded and launched instances use (ready_path '': the probe is real)."""
    return json.dumps({
        "title": "Scale benchmark service", "kind": "service", "command": ["true"],
        "listen": {"port": ["--port", "{port}"]}, "ready_path": "", "start_timeout": 60,
        "hours": {"default": 24, "max": 48}, "idle_timeout_hours": 8,
    })


# -- seed ---------------------------------------------------------------------------------------------


async def seed(n_instances: int, n_users: int, token_users: int, url: str) -> dict:
    from labhub import db
    from labhub.models import Event, Instance, User
    from labhub.services import credentials
    from labhub.settings import load_settings
    from sqlalchemy import insert, select

    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(settings.effective_database_url)
    await db.upgrade(engine)
    sessions = db.make_sessionmaker(engine)
    now = dt.datetime.now(dt.UTC)
    names = [f"bench{i}" for i in range(1, token_users + 1)]
    names += [f"scale-u{i:04d}" for i in range(max(0, n_users - token_users))]
    out: dict = {"tokens": {}, "instances": {}}
    async with sessions() as s, s.begin():
        await s.execute(insert(User), [{"name": n, "created_at": now} for n in names])
        ids = dict((await s.execute(select(User.name, User.id).where(User.name.in_(names)))).all())
        for name in names[:token_users]:
            user = await s.get(User, ids[name])
            out["tokens"][name] = (await credentials.issue_token(s, user=user, note="bench"))[1]  # type: ignore[arg-type]
        rows, events = [], []
        for i in range(n_instances):
            owner = names[i % len(names)]
            iid = uuid.uuid4().hex
            start = now - dt.timedelta(minutes=60 - (i % 50))
            rows.append({
                "id": iid, "owner_id": ids[owner], "name": f"s{i}", "active_name": f"s{i}", "template": TEMPLATE,
                "kind": "service", "size": "small", "cpus": 1, "memory_mb": 2048, "gpus": 0, "hours": 24,
                "params": {}, "backend": ScaleBackend.name, "handle": {"instance_id": iid, "scale": True, "url": url},
                "upstream": url, "status": "running", "reason": "ready", "message": "ready after 1.0 s",
                "created_at": start, "started_at": start + dt.timedelta(seconds=1), "ended_at": None,
                "expires_at": start + dt.timedelta(hours=24), "start_deadline": None, "last_activity_at": None,
                "claimed_by": None,
            })
            for k, status in enumerate(("requested", "starting", "running")):
                events.append({"instance_id": iid, "at": start + dt.timedelta(seconds=k / 2), "status": status,
                               "reason": "seed", "message": status})
            if owner in out["tokens"] and len(out["instances"].setdefault(owner, [])) < 50:
                out["instances"][owner].append(iid)
        for chunk in range(0, len(rows), 1000):
            await s.execute(insert(Instance), rows[chunk:chunk + 1000])
        for chunk in range(0, len(events), 3000):
            await s.execute(insert(Event), events[chunk:chunk + 3000])
    await engine.dispose()
    return out


# -- serve --------------------------------------------------------------------------------------------


async def serve(stats: Path, ticks: TextIO, lag_out: TextIO) -> None:
    from labhub import server
    from labhub.reconcile.reconciler import Reconciler
    from labhub.settings import load_settings

    settings = load_settings()
    backend = ScaleBackend(os.environ["BENCH_SCALE_URL"])
    profile_at = int(os.environ.get("BENCH_SCALE_PROFILE_TICK") or 0)  # cProfile that pass (development aid)
    original = Reconciler.tick
    count = 0

    async def timed_tick(self: Reconciler) -> None:
        nonlocal count
        count += 1
        backend.tick_task = asyncio.current_task()
        backend.tick_engine_s, backend.tick_handles = 0.0, 0
        prof = cProfile.Profile() if count == profile_at else None
        t0, c0 = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        try:
            await original(self)
        finally:
            if prof is not None:
                prof.disable()
                prof.dump_stats(str(stats / f"tick{count}.prof"))
            took = time.perf_counter() - t0
            backend.tick_task = None
            ticks.write(json.dumps({"n": count, "at": time.time(), "s": round(took, 6),
                                    "cpu_s": round(time.process_time() - c0, 6),
                                    "engine_s": round(backend.tick_engine_s, 6), "handles": backend.tick_handles,
                                    "tasks": len(self._tasks)}) + "\n")

    Reconciler.tick = timed_tick  # type: ignore[method-assign]

    gc_pauses: list[float] = [0.0, 0.0]  # the longest collection this second, all collections' time

    def gc_timer(phase: str, info: dict, started: list[float] = [0.0]) -> None:  # noqa: B006 - a cell
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            took = time.perf_counter() - started[0]
            gc_pauses[0] = max(gc_pauses[0], took)
            gc_pauses[1] += took

    gc.callbacks.append(gc_timer)

    async def watch_lag() -> None:  # how long the event loop was blocked (what API requests wait on)
        period = float(os.environ.get("BENCH_SCALE_LAG_PERIOD_S") or 0.02)
        while True:
            worst, second = 0.0, time.monotonic() + 1.0
            while time.monotonic() < second:
                t = time.perf_counter()
                await asyncio.sleep(period)
                worst = max(worst, time.perf_counter() - t - period)
            lag_out.write(json.dumps({"at": time.time(), "max_lag_s": round(worst, 5),
                                      "gc_max_s": round(gc_pauses[0], 5), "gc_s": round(gc_pauses[1], 5)}) + "\n")
            gc_pauses[:] = [0.0, 0.0]

    if os.environ.get("BENCH_SCALE_SQL_LOG"):  # development aid: every statement, when, and who ran it
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        sql_log = open(os.environ["BENCH_SCALE_SQL_LOG"], "a", buffering=1)  # noqa: SIM115, ASYNC230

        @event.listens_for(Engine, "before_cursor_execute")
        def _logged(conn, cursor, statement, params, context, many) -> None:  # noqa: ANN001, ARG001
            task = asyncio.current_task()
            sql_log.write(f"{time.time():.4f} {task.get_name() if task else '-'} {' '.join(statement.split())[:150]}\n")
    running = await server.start(settings, backends={ScaleBackend.name: backend})
    lag = asyncio.create_task(watch_lag())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"scale hub serving on {running.url}", flush=True)
    await stop.wait()
    lag.cancel()
    await running.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--instances", type=int, required=True)
    s.add_argument("--users", type=int, required=True)
    s.add_argument("--token-users", type=int, required=True)
    s.add_argument("--url", required=True)
    v = sub.add_parser("serve")
    v.add_argument("--stats", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "seed":
        print(json.dumps(asyncio.run(seed(a.instances, a.users, a.token_users, a.url))))
        return 0
    import logging

    logging.basicConfig(level=os.environ.get("LABHUB_LOG_LEVEL", "warning").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a.stats.mkdir(parents=True, exist_ok=True)
    with open(a.stats / "ticks.jsonl", "a", buffering=1) as ticks, open(a.stats / "lag.jsonl", "a", buffering=1) as lag:
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            asyncio.run(serve(a.stats, ticks, lag))
        else:
            uvloop.run(serve(a.stats, ticks, lag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
