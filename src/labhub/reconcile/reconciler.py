"""The reconciler: drives every instance from what the database says.

Several hub replicas may share one database.  Work on an instance is claimed
with a lease: ``claimed_by`` names the replica, taken with one conditional
UPDATE.  A lease holds while its replica's heartbeat (its ``replicas`` row,
renewed every third of ``LABHUB_LEASE_SECONDS``: one row, however many
instances) is recent; once it is not, another replica's pass takes the work
over.  On SQLite there is one replica and every lease is its own.

Each pass (:meth:`Reconciler.tick`) claims and loads the active instances in
one short transaction, then acts outside any transaction
(backend calls, HTTP probes), then applies results in new short transactions
through ``transition()`` (a compare-and-set on the status).

Launches and stops take a fast path: the hub calls :meth:`Reconciler.wake`
after a commit that asked for one (on this replica or, by notification, on
another), and a per-instance task claims the instance, submits it and
watches it come up (backend observation plus an HTTP readiness probe, with a
back-off from 20 ms to 250 ms), so a launch is not held back by the tick
interval.  ``_tasks`` holds this replica's work in flight, so no instance is
handled twice at once here; the lease keeps other replicas off it.  Tests
drive it with an injected clock and ``await tick()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from labhub import __version__
from labhub.backends.base import Backend, BackendError, Handle, Observation, Phase
from labhub.backends.local_isolation import group_name
from labhub.catalog import Catalog
from labhub.models import ACTIVE, TERMINAL, Instance, Kind, Replica, Status, awaits_admission
from labhub.proxy.routes import Route, RouteTable
from labhub.reconcile import culling, housekeeping, jobs
from labhub.reconcile.expiry import warn_expiring
from labhub.reconcile.probe import http_status, listening
from labhub.services import accounts, admission, changes
from labhub.services.errors import Conflict, Invalid, NotFound
from labhub.services.folders import Folders
from labhub.services.instances import build_spec, request_stop
from labhub.services.jobs import JobFiles
from labhub.services.lifecycle import FINAL_FOR_STOP_REASON, can_transition, note, transition
from labhub.settings import Settings

log = logging.getLogger(__name__)

LOG_TAIL_IN_EVENTS = 20
CALL_HOME_STATUSES = frozenset({Status.REQUESTED, Status.QUEUED, Status.STARTING, Status.RUNNING, Status.UNKNOWN})
STARTABLE = frozenset({Status.REQUESTED, Status.QUEUED, Status.STARTING})
ACTIVE_VALUES = tuple(s.value for s in ACTIVE)
ORPHAN_SCAN_EVERY = 12  # ticks
DELETION_SCAN_EVERY = 12  # ticks; sooner when a deletion is asked for or an instance of one ends
LISTEN_POLL_S = 0.02  # how often a started instance is looked at until it listens
RECHECK_S = 0.5  # a start watcher re-reads its instance at least this often
REPLICA_FORGOTTEN = dt.timedelta(days=1)
ADMISSION = "~admission"  # the key of the admission decision's task among the per-instance ones

# What a pass needs of each active instance: columns, not ORM objects (thousands per pass).
PASS_COLUMNS = (Instance.id, Instance.status, Instance.backend, Instance.handle, Instance.expires_at, Instance.kind,
                Instance.upstream, Instance.template, Instance.last_activity_at, Instance.started_at,
                Instance.created_at, Instance.min_replicas)


@dataclass(frozen=True, slots=True)
class Launch:
    """What a launch spec takes from the hub: the instance's derived secret and its places."""

    instance_token: Callable[[str], str]
    home_for: Callable[[str], Path]
    base_path: Callable[[str, str], str]
    jobs: JobFiles
    folders: Folders
    #: the built runtime of this name (built first if needed: minutes, with progress lines)
    runtime: Callable[[str, Callable[[str], None]], Awaitable[Path]]


@dataclass(frozen=True, slots=True)
class Parts:
    """The reconciler's dependencies, and nothing else of the hub."""

    sessions: async_sessionmaker[AsyncSession]
    backends: Mapping[str, Backend]
    catalog: Callable[[], Catalog]  # the current one (the hub reloads it)
    routes: RouteTable  # this replica's proxy's table
    route_for: Callable[[Instance], Route | None]
    launch: Launch
    clock: Callable[[], dt.datetime]
    settings: Settings
    replica: str  # this replica's name in leases


class Reconciler:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.replica = parts.replica
        self.lease = dt.timedelta(seconds=parts.settings.lease_seconds)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._ticks = 0
        self._flushed_activity: dict[str, float] = {}  # what this replica last wrote (saves rewriting it)
        self._recheck: set[str] = set()  # instances with work in flight that changed meanwhile
        self._naps: dict[str, asyncio.Event] = {}  # start watchers waiting; a change wakes them
        self._deletions_due = True
        self._admit_again = False

    # -- running ---------------------------------------------------------------
    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="labhub-reconciler")
            self._renewer = asyncio.create_task(self._renew_leases(), name="labhub-leases")

    async def stop(self) -> None:
        """Stop reconciling and hand this replica's leases back (the instances keep running).

        Another replica takes them over at its next pass, without waiting for a heartbeat to lapse."""
        pending = {t for t in [self._loop, self._renewer, *self._tasks.values()] if t is not None}
        while pending:
            # Cancel again until they end: on Python 3.11 asyncio.wait_for() loses a
            # cancellation that arrives just as the awaitable it wraps finishes.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        was_running = self._loop is not None
        self._loop = self._renewer = None
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.flush_activity()
        if was_running:
            with contextlib.suppress(Exception):
                async with self._tx() as session:
                    await session.execute(update(Instance).where(Instance.claimed_by == self.replica)
                                          .values(claimed_by=None).execution_options(synchronize_session=False))
                    await session.execute(delete(Replica).where(Replica.id == self.replica))

    def wake(self, instance_id: str) -> None:
        """An instance changed (a launch or stop request, a call-home): look at it now."""
        if self._loop is None:
            self._wake.set()
            return
        if instance_id in self._tasks:
            self._recheck.add(instance_id)
            if (nap := self._naps.get(instance_id)) is not None:
                nap.set()
        else:
            self._spawn(instance_id, self._drive(instance_id))

    @property
    def busy(self) -> Container[str]:
        """The instances this replica has work in flight for (a clean-up leaves their jobs alone)."""
        return self._tasks

    def wake_all(self) -> None:
        """A pass now (e.g. after notifications may have been missed)."""
        self._deletions_due = True
        self._wake.set()

    def wake_deletions(self) -> None:
        self._deletions_due = True
        self._wake.set()

    async def _run(self) -> None:
        interval = min(self.parts.settings.reconcile_interval, self.lease.total_seconds() / 3)
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):  # not wait_for: it can swallow a cancel (3.11)
                    await self._wake.wait()
            self._wake.clear()

    async def settle(self) -> None:
        """Wait until no per-instance work is in flight (for tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def _spawn(self, instance_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"labhub-instance-{instance_id}")
        self._tasks[instance_id] = task
        self._recheck.discard(instance_id)

        def done(t: asyncio.Task[None]) -> None:
            if self._tasks.get(instance_id) is t:
                del self._tasks[instance_id]
            if not t.cancelled() and t.exception() is not None:
                log.error("instance %s: work failed", instance_id, exc_info=t.exception())
            if instance_id in self._recheck and self._loop is not None and not t.cancelled():
                self._spawn(instance_id, self._drive(instance_id))  # it changed while we worked on it
            # (no pass is woken: with thousands of instances a pass per finished task would run
            # back to back under load; what changed meanwhile was re-driven just above)

        task.add_done_callback(done)

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        """A short transaction whose instance changes are the reconciler's own (they wake nobody)."""
        async with self.parts.sessions() as session, session.begin():
            changes.quiet(session)
            yield session

    # -- leases ----------------------------------------------------------------
    async def join(self) -> None:
        """Record this replica (its heartbeat) before it claims anything."""
        async with self._tx() as session:
            await self._beat(session)

    async def _beat(self, session: AsyncSession) -> None:
        now = self.parts.clock()
        beat = await session.execute(update(Replica).where(Replica.id == self.replica).values(heartbeat_at=now)
                                     .execution_options(synchronize_session=False))
        if beat.rowcount == 0:  # new, or removed by another replica after it looked dead
            session.add(Replica(id=self.replica, host=socket.gethostname()[:255], pid=os.getpid(),
                                version=__version__, started_at=now, heartbeat_at=now))

    def _orphaned(self, now: dt.datetime) -> Any:
        """Claims nobody holds: no replica, or one whose heartbeat has lapsed."""
        alive = select(Replica.id).where(Replica.heartbeat_at >= now - self.lease)
        return or_(Instance.claimed_by.is_(None), Instance.claimed_by.not_in(alive))

    async def _claim(self, instance_id: str) -> str | None:
        """Claim one active instance for this replica (unless a live replica holds it); returns
        its status, or None when it is not this replica's to work on."""
        now = self.parts.clock()
        async with self._tx() as session:
            claimed = await session.execute(
                update(Instance).where(Instance.id == instance_id, Instance.status.in_(ACTIVE_VALUES),
                                       or_(Instance.claimed_by == self.replica, self._orphaned(now)))
                .values(claimed_by=self.replica).returning(Instance.status)
                .execution_options(synchronize_session=False))
            return claimed.scalar_one_or_none()

    async def _renew_leases(self) -> None:
        """Every third of the lease: the heartbeat; work whose claim was lost stops."""
        every = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: the leases may lapse, and others take over
                log.warning("renewing leases failed: %s", exc)

    async def renew(self) -> None:
        async with self._tx() as session:
            await self._beat(session)
            busy = list(self._tasks)
            held = set() if not busy else set((await session.execute(
                select(Instance.id).where(Instance.id.in_(busy), Instance.claimed_by.is_not(None),
                                          Instance.claimed_by != self.replica))).scalars())
        for instance_id in held:  # taken over while this replica was too slow to renew: theirs now
            log.warning("instance %s: another replica took it over; stopping work on it here", instance_id)
            if (task := self._tasks.get(instance_id)) is not None:
                task.cancel()

    async def _drive(self, instance_id: str) -> None:
        """Claim the instance and do what its status asks for (start it, stop it)."""
        status = await self._claim(instance_id)
        if status in STARTABLE:
            await self._start(instance_id)  # (one waiting for admission is left there)
        elif status == Status.STOPPING:
            await self._stop(instance_id)

    # -- one pass ----------------------------------------------------------------
    async def tick(self) -> None:
        """One reconcile pass: claim what nobody works on, then go over this replica's instances."""
        self._ticks += 1
        now = self.parts.clock()
        async with self._tx() as session:
            await self._beat(session)
            # what nobody holds (new, or its replica died) is this replica's now: one statement,
            # touching only those rows
            await session.execute(update(Instance).where(Instance.status.in_(ACTIVE_VALUES), self._orphaned(now))
                                  .values(claimed_by=self.replica).execution_options(synchronize_session=False))
            rows = (await session.execute(select(*PASS_COLUMNS).where(
                Instance.claimed_by == self.replica, Instance.status.in_(ACTIVE_VALUES)))).all()
        to_observe: dict[str, dict[str, Any]] = {}
        running = []
        for inst in rows:
            if inst.id in self._tasks or awaits_admission(inst.status, inst.handle):
                continue  # (a launch waiting for admission: its time starts when it is admitted)
            if inst.status != Status.STOPPING and inst.expires_at <= now:
                await self._request_stop(inst.id, "expired")
                continue
            if inst.status in STARTABLE:
                self._spawn(inst.id, self._start(inst.id))
            elif inst.status == Status.STOPPING:
                self._spawn(inst.id, self._stop(inst.id))
            elif inst.status in (Status.RUNNING, Status.UNKNOWN):
                to_observe.setdefault(inst.backend, {})[inst.id] = inst
                running.append(inst)
        for backend_name, group in to_observe.items():
            await self._observe_running(backend_name, group)
        await self._cull_idle(now, running)
        self.admit_soon()
        await self.flush_activity()
        await warn_expiring(self.parts, self._tx, now)
        if self._ticks % ORPHAN_SCAN_EVERY == 1:
            await housekeeping.clean_orphans(self.parts, self._tasks)
            async with self._tx() as session:  # replicas gone for a day are forgotten
                await session.execute(delete(Replica).where(Replica.heartbeat_at < now - REPLICA_FORGOTTEN))
        if self._deletions_due or self._ticks % DELETION_SCAN_EVERY == 1:
            self._deletions_due = False
            await housekeeping.finish_deletions(self.parts, self._tx)
        if self._ticks % ORPHAN_SCAN_EVERY == 1:
            await housekeeping.expire_artifacts(self.parts, self._tx, now)

    # -- starting ------------------------------------------------------------------
    async def _start(self, instance_id: str) -> None:
        parts, launch = self.parts, self.parts.launch
        async with self._tx() as session:
            inst = await session.get(Instance, instance_id)
            if inst is None or inst.status not in STARTABLE or awaits_admission(inst.status, inst.handle):
                return
            owner = inst.owner.name
            handle = inst.handle
            backend = parts.backends.get(inst.backend)
            template = parts.catalog().get(inst.template)
            spec = None
            kind = inst.kind
            if template is not None and backend is not None:
                prefix = parts.settings.account_prefix
                account = await accounts.assign(session, user=inst.owner, prefix=prefix,
                                                reserved=frozenset({group_name(prefix)}))
                job = jobs.places(inst, launch.jobs, launch.folders) if kind == Kind.JOB else None
                resolved: dict[str, Any] = {}
                readable = job.readable if job else ()
                if kind == Kind.SERVICE and "model" in (inst.params or {}):
                    model, why_not, readable = await jobs.service_model(session, inst, launch.jobs, launch.folders)
                    resolved["model"] = str(model) if model is not None else ""
                spec = build_spec(inst, template, owner=owner, token=launch.instance_token(inst.id),
                                  home=job.home if job else launch.home_for(owner),
                                  base_url=launch.base_path(owner, inst.name), backend=backend, account=account,
                                  extra_env=job.env if job else None, dirs=job.dirs if job else (),
                                  readable=readable, params=resolved)
            ready_path = template.ready_path if template else None
            timeout = (template.start_timeout if template and template.start_timeout else None) \
                or parts.settings.start_timeout
            deadline = inst.start_deadline
        if backend is None or spec is None:
            what = f"backend {inst.backend!r} is not enabled" if backend is None else f"template {inst.template!r} no longer exists"
            await self._apply(instance_id, Status.FAILED, "config", f"cannot start: {what}")
            return
        if kind == Kind.SERVICE and resolved.get("model") == "" and handle is None:
            await self._apply(instance_id, Status.FAILED, "model", f"cannot start: {why_not}")
            return
        if handle is None and template is not None and template.runtime:
            runtime = await self._runtime(instance_id, template.runtime)
            if runtime is None:
                return
            spec = dataclasses.replace(spec, runtime=str(runtime))
        if handle is None:
            if refused := backend.unsupported(spec):
                await self._apply(instance_id, Status.FAILED, "unsupported", "; ".join(f"{k}: {v}" for k, v in refused.items()))
                return
            try:
                # A replica that died between submitting and recording the handle left a live job:
                # adopt it rather than start a second one.
                handle = await backend.find(instance_id)
                adopted = handle is not None
                if handle is None:
                    handle = await backend.submit(spec)
            except BackendError as exc:
                await self._apply(instance_id, Status.FAILED, "submit_failed", f"{backend.name} backend: {exc}")
                return
            if adopted:
                log.info("instance %s: adopted its running job from a replica that stopped", instance_id)
            deadline = parts.clock() + dt.timedelta(seconds=timeout)
            async with self._tx() as session:
                # The handle is recorded whatever the status became meanwhile (a stop needs it);
                # a plain UPDATE, not the ORM's, whose status check would refuse it after a stop.
                found = await session.execute(update(Instance).where(Instance.id == instance_id)
                                              .values(handle=handle, start_deadline=deadline))
            if found.rowcount == 0:  # deleted meanwhile
                await backend.terminate(handle, grace=0)
                return
            status = await self._apply(instance_id, Status.STARTING, "submitted",
                                       f"started on the {backend.name} backend{_describe(handle)}",
                                       only_from=Status.REQUESTED)
            if status not in (Status.STARTING, Status.QUEUED, Status.UNKNOWN):
                return  # a stop (or something else) came first: the next pass deals with it
        assert deadline is not None
        await self._watch_start(instance_id, backend, handle, spec.base_url, spec.token, ready_path, deadline, timeout,
                                job=kind == Kind.JOB)

    async def _runtime(self, instance_id: str, name: str) -> Path | None:
        """The runtime's directory, built first if this is its first use (the events say so);
        None when it cannot be built (the instance has failed, saying why)."""
        started = time.monotonic()
        lines: list[str] = []
        announced = False

        def progress(line: str) -> None:
            lines.append(line)
            del lines[:-LOG_TAIL_IN_EVENTS]

        try:
            build = asyncio.ensure_future(self.parts.launch.runtime(name, progress))
            done, _ = await asyncio.wait({build}, timeout=0.5)
            if not done:  # not built yet: say so, it takes minutes
                announced = True
                await self._note(instance_id, "runtime_build", f"building the {name!r} runtime (its first use; "
                                 "this takes a few minutes)")
            path = await build
        except Exception as exc:  # noqa: BLE001 - any build failure fails this launch, saying why
            log.warning("instance %s: runtime %s: %s", instance_id, name, exc)
            detail = ("\n--- last build lines ---\n" + "\n".join(lines)) if lines else ""
            await self._apply(instance_id, Status.FAILED, "runtime", f"runtime {name!r} unavailable: {exc}{detail}")
            return None
        if announced:
            await self._note(instance_id, "runtime_built", f"runtime {name!r} built in {time.monotonic() - started:.0f} s")
        return path

    async def _note(self, instance_id: str, reason: str, message: str) -> None:
        async with self._tx() as session:
            inst = await session.get(Instance, instance_id)
            if inst is not None:
                note(session, inst, reason=reason, message=message)

    async def _watch_start(self, instance_id: str, backend: Backend, handle: Handle, base_url: str,
                           token: str, ready_path: str | None, deadline: dt.datetime, timeout: float,
                           *, job: bool = False) -> None:
        delay = 0.02
        started = time.monotonic()
        last_db_check = started
        pending_reported = ""
        while True:
            obs = await backend.observe(instance_id, handle)
            parts = self.parts
            if job and obs.phase in (Phase.FAILED, Phase.SUCCEEDED):  # it ran, and is done already
                await self._job_ended(instance_id, backend, handle, obs)
                return
            if obs.phase in (Phase.FAILED, Phase.SUCCEEDED, Phase.GONE):
                message = obs.message or f"exited ({obs.phase})"
                tail = await self._log_tail(backend, handle)
                await self._release(backend, instance_id, handle)
                await self._apply(instance_id, Status.FAILED, obs.reason or "start_failed",
                                  f"failed to start: {message}" + tail)
                return
            if obs.phase == Phase.PENDING and obs.message != pending_reported:
                pending_reported = obs.message
                await self._apply(instance_id, Status.QUEUED, "queued", obs.message or "waiting for resources")
            elif obs.phase in (Phase.STARTING, Phase.RUNNING) and pending_reported:
                pending_reported = ""
                await self._apply(instance_id, Status.STARTING, "allocated", "resources allocated; starting")
            waited = False
            if obs.phase in (Phase.RUNNING, Phase.STARTING) and obs.url:
                # waits up to ``delay`` for the port to open (cheap connects every 10 ms), so
                # readiness is seen within milliseconds without a probe storm or a slow back-off
                if await self._probe(obs.url, base_url, ready_path, token, wait=delay):
                    took = time.monotonic() - started
                    await self._became_ready(instance_id, obs.url, took)
                    return
                waited = True
            elif obs.phase == Phase.RUNNING and ready_path is None:
                # alive is ready (a job, or a template that listens nowhere); a URL may follow
                await self._became_ready(instance_id, None, time.monotonic() - started)
                return
            if parts.clock() >= deadline:
                message = f"did not become ready within {timeout:g} s"
                if obs.message:
                    message += f"; {backend.name} says: {obs.message}"
                message += await self._log_tail(backend, handle)
                await backend.terminate(handle, grace=parts.settings.stop_grace)
                await self._apply(instance_id, Status.FAILED, "start_timeout", message)
                return
            now = time.monotonic()
            if instance_id in self._recheck or now - last_db_check > RECHECK_S:
                # a change (a stop, a call-home on any replica) or just a while: the database says
                self._recheck.discard(instance_id)
                last_db_check = now
                status, stored = await self._status_and_handle(instance_id)
                if status not in (Status.STARTING, Status.QUEUED, Status.UNKNOWN):
                    if status == Status.STOPPING:
                        self._recheck.add(instance_id)  # stopped as soon as this task ends
                    return
                if stored is not None:
                    handle = stored
            if not waited:
                # Alive but not listening yet (no URL until the backend has seen its listener): look
                # again soon, as the connect polls do, rather than after a growing back-off.
                alive = obs.phase == Phase.RUNNING and not obs.url
                await self._nap(instance_id, min(delay, LISTEN_POLL_S) if alive else delay)
            delay = min(delay * 1.5, 0.25)

    async def _nap(self, instance_id: str, delay: float) -> None:
        """Sleep ``delay`` s, or less if the instance calls home meanwhile (see :meth:`call_home`)."""
        woken = self._naps.setdefault(instance_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await woken.wait()
        self._naps.pop(instance_id, None)

    async def _probe(self, url: str, base_url: str, ready_path: str | None, token: str, wait: float = 0.0) -> bool:
        if ready_path is None:
            return True
        if not await listening(url, wait):
            return False
        status = await http_status(url, f"{base_url}{ready_path}", token)
        return status is not None and status < 500 and status not in (404, 401, 403)

    async def _became_ready(self, instance_id: str, url: str | None, took: float) -> None:
        try:
            async with self._tx() as session:
                inst = await session.get(Instance, instance_id)
                if inst is None or inst.status not in (Status.STARTING, Status.QUEUED, Status.UNKNOWN):
                    return
                inst.upstream = url
                message = (f"running (started in {took:.1f} s)" if inst.kind == Kind.JOB
                           else f"ready after {took:.1f} s")
                transition(session, inst, Status.RUNNING, reason="ready", message=message, now=self.parts.clock())
                route = self.parts.route_for(inst)
        except StaleDataError:
            self._recheck.add(instance_id)
            return  # stopped while it became ready: the stop stands
        if route is not None:
            self.parts.routes.add(route)  # here at once; other replicas follow the notification

    # -- call-home ---------------------------------------------------------------------
    async def call_home(self, instance_id: str, report: dict[str, Any]) -> None:
        """An instance reported where it listens (the caller has checked its token).

        The backend turns the report into an updated handle (stored, so a restarted
        hub still knows the URL) and the instance's start watcher is woken to look.
        Raises NotFound (no such starting/running instance), Conflict (its job is
        not recorded yet: the launcher retries) or Invalid (the backend refused it).
        Any replica may take the call: the stored handle wakes the watcher on the
        replica that holds the instance's lease (the commit notifies it).
        """
        async with self.parts.sessions() as session:
            inst = await session.get(Instance, instance_id)
            if inst is None or inst.status not in CALL_HOME_STATUSES:
                raise NotFound("no such starting or running instance")
            handle, backend = inst.handle, self.parts.backends.get(inst.backend)
        if backend is None:
            raise NotFound(f"backend {inst.backend!r} is not enabled")
        if handle is None:
            raise Conflict("the instance's job is not recorded yet; try again")
        try:
            updated = backend.called_home(instance_id, handle, report)
        except BackendError as exc:
            raise Invalid(f"call-home refused: {exc}") from exc
        async with self.parts.sessions() as session, session.begin():  # not quiet: the lease holder wakes
            inst = await session.get(Instance, instance_id)
            if inst is not None and inst.handle == handle:
                await session.execute(update(Instance).where(Instance.id == instance_id).values(handle=updated))
                note(session, inst, reason="called_home", message=f"the instance reported its address "
                     f"{updated.get('url', '')}", now=self.parts.clock())

    # -- running ---------------------------------------------------------------------
    async def _observe_running(self, backend_name: str, group: dict[str, Any]) -> None:
        parts = self.parts
        backend = parts.backends.get(backend_name)
        if backend is None:
            return
        handles = {iid: inst.handle or {} for iid, inst in group.items()}
        try:
            observations = await backend.observe_many(handles)
        except BackendError as exc:
            observations = {iid: Observation(Phase.UNKNOWN, message=str(exc)) for iid in handles}
        for iid, obs in observations.items():
            inst = group[iid]
            if inst.kind == Kind.JOB and obs.phase in (Phase.FAILED, Phase.SUCCEEDED, Phase.GONE):
                await self._job_ended(iid, backend, handles[iid], obs)
            elif obs.phase in (Phase.FAILED, Phase.SUCCEEDED, Phase.GONE):
                parts.routes.remove_instance(iid)
                tail = await self._log_tail(backend, handles[iid])
                await self._release(backend, iid, handles[iid])
                if obs.phase == Phase.SUCCEEDED and inst.kind == "job":
                    await self._apply(iid, Status.SUCCEEDED, "exited", "finished successfully" + tail)
                elif obs.phase == Phase.SUCCEEDED:
                    await self._apply(iid, Status.STOPPED, "exited", "the process exited on its own (code 0)" + tail)
                else:
                    await self._apply(iid, Status.FAILED, obs.reason or "exited", (obs.message or "gone") + tail)
            elif obs.phase == Phase.UNKNOWN and inst.status != Status.UNKNOWN:
                await self._apply(iid, Status.UNKNOWN, obs.reason or "backend_unreachable", obs.message if obs.reason
                                  else f"{backend.name} backend unreachable: {obs.message}; will keep trying")
            elif obs.phase in (Phase.RUNNING, Phase.STARTING) and inst.status == Status.UNKNOWN:
                await self._apply(iid, Status.RUNNING, "recovered", f"{backend.name} backend reachable again")
            if obs.phase == Phase.RUNNING and obs.url and obs.url != inst.upstream:
                route = None
                async with self._tx() as session:
                    await session.execute(update(Instance).where(Instance.id == iid).values(upstream=obs.url))
                    row = await session.get(Instance, iid)
                    if row is not None and row.status in (Status.RUNNING, Status.UNKNOWN):
                        changes.instance(session, iid, row.owner_id)  # other replicas' routes follow
                        route = parts.route_for(row)
                if route is not None:
                    parts.routes.add(route)

    # -- stopping -----------------------------------------------------------------------
    async def _request_stop(self, instance_id: str, reason: str, why: str = "") -> None:
        try:
            async with self._tx() as session:
                inst = await session.get(Instance, instance_id)
                if inst is not None:
                    request_stop(session, inst, actor=None, reason=reason, why=why)
        except StaleDataError:
            pass  # it changed meanwhile (stopped already?): the pass that follows looks again
        self._spawn(instance_id, self._stop(instance_id))

    async def _stop(self, instance_id: str) -> None:
        parts = self.parts
        parts.routes.remove_instance(instance_id)
        async with parts.sessions() as session:
            inst = await session.get(Instance, instance_id)
            if inst is None or inst.status != Status.STOPPING:
                return
            handle, backend, why, asked = inst.handle, parts.backends.get(inst.backend), inst.reason, inst.message
        gone = True
        if handle and backend is not None:
            try:
                gone = await backend.terminate(handle, grace=parts.settings.stop_grace)
            except BackendError as exc:
                log.warning("instance %s: terminate failed: %s", instance_id, exc)
                gone = False
        if not gone:
            async with self._tx() as session:
                inst = await session.get(Instance, instance_id)
                if inst is not None:
                    note(session, inst, reason="stop_retry", message="could not confirm the stop yet; retrying")
            return
        final = FINAL_FOR_STOP_REASON.get(why, Status.STOPPED)
        message = {"expired": "expired: its duration ran out", "idle": "stopped: idle for too long",
                   "admin": "stopped by an admin", "user": "stopped by the owner",
                   "scale_to_zero": "scaled to zero: idle; the next request starts it again"}.get(
            why, f"stopped ({why})")
        if why == "idle" and asked.startswith("stopped: idle"):
            message = asked  # what decided it (no traffic, no busy kernel)
        elif why == "restart":
            message = f"stopped: {asked}"  # where it went
        values = {"handle": None, "upstream": None} if final == Status.SLEEPING else None
        if await self._apply(instance_id, final, why or "stopped", message, values=values) == Status.SLEEPING:
            await self._route_again(instance_id)
        if why == "user_deleted":
            self.wake_deletions()

    async def _route_again(self, instance_id: str) -> None:
        """Give the proxy the instance's route as the database now has it (a sleeping service's wakes it)."""
        async with self.parts.sessions() as session:
            inst = await session.get(Instance, instance_id)
            route = self.parts.route_for(inst) if inst is not None else None
        if route is not None:
            self.parts.routes.add(route)

    async def _cull_idle(self, now: dt.datetime, running: list[Any]) -> None:
        await culling.cull(self.parts, now, running, self._request_stop)

    async def flush_activity(self) -> None:
        """Write this replica's proxy's last-activity times to the database (never backwards:
        another replica may have seen later activity)."""
        changed = [(r.instance_id, r.last_activity) for r in self.parts.routes.all()
                   if r.last_activity and r.last_activity != self._flushed_activity.get(r.instance_id)]
        if not changed:
            return
        async with self._tx() as session:
            for iid, ts in changed:
                at = dt.datetime.fromtimestamp(ts, dt.UTC)
                await session.execute(update(Instance).where(
                    Instance.id == iid, or_(Instance.last_activity_at.is_(None), Instance.last_activity_at < at))
                    .values(last_activity_at=at).execution_options(synchronize_session=False))
        self._flushed_activity.update(changed)

    # -- helpers ------------------------------------------------------------------------------
    async def _job_ended(self, instance_id: str, backend: Backend, handle: Handle, obs: Observation) -> None:
        try:
            lines = [line async for line in backend.logs(handle, tail=LOG_TAIL_IN_EVENTS)]
        except (BackendError, OSError):
            lines = []
        await self._release(backend, instance_id, handle)
        end = jobs.outcome(obs, lines)
        await self._apply(instance_id, end.status, end.reason, end.message, values={"exit_code": obs.exit_code})

    async def _job_settlement(self, instance_id: str) -> dict[str, Any]:
        """What an ending job's row gets with its final status (one commit, so nobody sees it ended
        without them): its artifacts' size (they count against its owner's storage) and their expiry."""
        async with self.parts.sessions() as session:
            kind = await session.scalar(select(Instance.kind).where(Instance.id == instance_id))
        if kind != Kind.JOB:
            return {}
        size = await self.parts.launch.jobs.measure(instance_id)
        keep = dt.timedelta(days=self.parts.settings.storage.artifact_days)
        return {"output_bytes": size, "artifacts_expire_at": self.parts.clock() + keep}

    async def _apply(self, instance_id: str, to: Status, reason: str, message: str, *,
                     only_from: Status | None = None, values: Mapping[str, Any] | None = None) -> str | None:
        """Move the instance to ``to`` if it may go there (from ``only_from``, if given); returns
        the status it has afterwards (None: it no longer exists).

        The move is a compare-and-set (the ORM updates the row only if its status is still the one
        read): if another request moved it meanwhile (a stop), that move stands and this one is dropped.
        """
        if to in TERMINAL:
            values = {**await self._job_settlement(instance_id), **(values or {})}
        try:
            async with self._tx() as session:
                inst = await session.get(Instance, instance_id)
                if inst is None:
                    return None
                current = inst.status
                if current == to:
                    return current
                if (only_from is not None and current != only_from) or not can_transition(current, to):
                    log.info("instance %s: not moving %s -> %s (%s)", instance_id, current, to, reason)
                    return current
                transition(session, inst, to, reason=reason, message=message, now=self.parts.clock())
                for key, value in (values or {}).items():
                    setattr(inst, key, value)
        except StaleDataError:
            log.info("instance %s: changed while moving it to %s (%s); the other change stands", instance_id,
                     to, reason)
            self._recheck.add(instance_id)
            return await self._status(instance_id)
        if to not in (Status.RUNNING, Status.UNKNOWN):
            self.parts.routes.remove_instance(instance_id)
        if to in TERMINAL or to == Status.SLEEPING:
            self.admit_soon()  # a slot is free: the next in the queue starts now, not at the next pass
        return to

    def admit_soon(self) -> None:
        """An admission decision now, in a task of its own: one at a time on this replica, and one more
        after it when asked for meanwhile (a burst of ended instances costs two decisions, not one each)."""
        if ADMISSION in self._tasks:
            self._admit_again = True
            return

        async def decide() -> None:
            self._admit_again = True
            while self._admit_again:
                self._admit_again = False
                await self.admit()

        self._spawn(ADMISSION, decide())

    async def admit(self) -> None:
        """Let through what fits of the admission queue, and start it.

        The decision's transaction (it holds the admission lock: on SQLite, the write lock) is shielded
        from cancellation: a stop cancelling it halfway could leave its connection in the transaction,
        and every writer after it waiting."""

        async def decide() -> list[str]:
            async with self._tx() as session:
                return await admission.run(session, backends=self.parts.backends, site=self.parts.settings.quota,
                                           now=self.parts.clock())

        try:
            admitted = await asyncio.shield(decide())
        except StaleDataError:  # a queued instance was stopped meanwhile: the next pass decides again
            self._wake.set()
            return
        for instance_id in admitted:
            self.wake(instance_id)

    async def _release(self, backend: Backend, instance_id: str, handle: Handle) -> None:
        """The instance's main process ended: whatever it left behind (processes that escaped
        into their own session, its cgroups, a job step) is ended too."""
        try:
            await backend.terminate(handle, grace=0)
        except BackendError as exc:
            log.warning("instance %s: cleaning up after it ended failed: %s", instance_id, exc)

    async def _status(self, instance_id: str) -> str | None:
        async with self.parts.sessions() as session:
            return (await session.execute(select(Instance.status).where(Instance.id == instance_id))).scalar_one_or_none()

    async def _status_and_handle(self, instance_id: str) -> tuple[str | None, Handle | None]:
        async with self.parts.sessions() as session:
            row = (await session.execute(select(Instance.status, Instance.handle)
                                         .where(Instance.id == instance_id))).first()
        return (None, None) if row is None else (row.status, row.handle)

    async def _log_tail(self, backend: Backend, handle: Handle) -> str:
        try:
            lines = [line async for line in backend.logs(handle, tail=LOG_TAIL_IN_EVENTS)]
        except (BackendError, OSError):
            return ""
        return ("\n--- last log lines ---\n" + "\n".join(lines)) if lines else ""


def _describe(handle: Handle) -> str:
    for key in ("pid", "job_id", "pod"):
        if key in handle:
            return f" ({key.replace('_', ' ')} {handle[key]})"
    return ""
