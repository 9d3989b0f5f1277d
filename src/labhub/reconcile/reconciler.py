"""The reconciler: drives every instance from what the database says.

Each pass (:meth:`Reconciler.tick`) loads the active instances in one short
transaction, then acts outside any transaction (backend calls, HTTP probes),
then applies results in new short transactions through ``transition()``.

Launches take a fast path: the API calls :meth:`Reconciler.kick` after
recording a request, and a per-instance task submits it and watches it come
up (backend observation plus an HTTP readiness probe, with a back-off from
20 ms to 250 ms), so a launch is not held back by the tick interval.  Work in
flight for an instance is tracked in ``_tasks`` so no instance is handled
twice at once.  Tests drive it with an injected clock and ``await tick()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm.exc import StaleDataError

from labhub.backends.base import Backend, BackendError, Handle, Observation, Phase
from labhub.backends.local_isolation import group_name
from labhub.models import ACTIVE, Instance, Status
from labhub.services import accounts
from labhub.services.errors import Conflict, Invalid, NotFound
from labhub.services.instances import build_spec, request_stop
from labhub.services.lifecycle import FINAL_FOR_STOP_REASON, can_transition, note, transition

if TYPE_CHECKING:
    from labhub.hub import Hub

log = logging.getLogger(__name__)

LOG_TAIL_IN_EVENTS = 20
CALL_HOME_STATUSES = frozenset({Status.REQUESTED, Status.QUEUED, Status.STARTING, Status.RUNNING, Status.UNKNOWN})
ORPHAN_SCAN_EVERY = 12  # ticks
LISTEN_POLL_S = 0.02  # how often a started instance is looked at until it listens


class Reconciler:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._ticks = 0
        self._flushed_activity: dict[str, float] = {}
        self._stop_requested: set[str] = set()
        self._naps: dict[str, asyncio.Event] = {}  # start watchers waiting; call-home wakes them

    # -- running ---------------------------------------------------------------
    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="labhub-reconciler")

    async def stop(self) -> None:
        """Stop reconciling (the instances themselves keep running)."""
        pending = {t for t in [self._loop, *self._tasks.values()] if t is not None}
        while pending:
            # Cancel again until they end: on Python 3.11 asyncio.wait_for() loses a
            # cancellation that arrives just as the awaitable it wraps finishes.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._loop = None
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.flush_activity()

    def kick(self, instance_id: str | None = None, *, stop: bool = False) -> None:
        """Wake the loop now (after a launch or stop request)."""
        if stop and instance_id:
            self._stop_requested.add(instance_id)
        elif instance_id and self._loop is not None and instance_id not in self._tasks:
            self._spawn(instance_id, self._start(instance_id))  # launch now, not on the next pass
        self._wake.set()

    async def _run(self) -> None:
        interval = self.hub.settings.reconcile_interval
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

        def done(t: asyncio.Task[None]) -> None:
            if self._tasks.get(instance_id) is t:
                del self._tasks[instance_id]
            if not t.cancelled() and t.exception() is not None:
                log.error("instance %s: work failed", instance_id, exc_info=t.exception())
            self._wake.set()

        task.add_done_callback(done)

    # -- one pass ----------------------------------------------------------------
    async def tick(self) -> None:
        """One reconcile pass over every active instance."""
        self._ticks += 1
        now = self.hub.clock()
        async with self.hub.sessions() as session:
            rows = (await session.execute(select(Instance).where(Instance.status.in_([s.value for s in ACTIVE])))).scalars()
            instances = list(rows)
        to_observe: dict[str, dict[str, Instance]] = {}
        for inst in instances:
            if inst.id in self._tasks:
                continue
            if inst.status != Status.STOPPING and inst.expires_at <= now:
                await self._request_stop(inst.id, "expired")
                continue
            if inst.status in (Status.REQUESTED, Status.QUEUED, Status.STARTING):
                self._spawn(inst.id, self._start(inst.id))
            elif inst.status == Status.STOPPING:
                self._spawn(inst.id, self._stop(inst.id))
            elif inst.status in (Status.RUNNING, Status.UNKNOWN):
                to_observe.setdefault(inst.backend, {})[inst.id] = inst
        for backend_name, group in to_observe.items():
            await self._observe_running(backend_name, group)
        await self._cull_idle(now)
        await self.flush_activity()
        if self._ticks % ORPHAN_SCAN_EVERY == 1:
            await self._clean_orphans()

    # -- starting ------------------------------------------------------------------
    async def _start(self, instance_id: str) -> None:
        hub = self.hub
        async with hub.tx() as session:
            inst = await session.get(Instance, instance_id)
            if inst is None or inst.status not in (Status.REQUESTED, Status.QUEUED, Status.STARTING):
                return
            owner = inst.owner.name
            handle = inst.handle
            backend = hub.backends.get(inst.backend)
            template = hub.catalog.get(inst.template)
            spec = None
            if template is not None and backend is not None:
                prefix = hub.settings.account_prefix
                account = await accounts.assign(session, user=inst.owner, prefix=prefix,
                                                reserved=frozenset({group_name(prefix)}))
                spec = build_spec(inst, template, owner=owner, token=hub.instance_token(inst.id),
                                  home=hub.home_for(owner), base_url=hub.base_path(owner, inst.name),
                                  backend=backend, account=account)
            ready_path = template.ready_path if template else None
            timeout = (template.start_timeout if template and template.start_timeout else None) or hub.settings.start_timeout
            deadline = inst.start_deadline
        if backend is None or spec is None:
            what = f"backend {inst.backend!r} is not enabled" if backend is None else f"template {inst.template!r} no longer exists"
            await self._apply(instance_id, Status.FAILED, "config", f"cannot start: {what}")
            return
        if handle is None:
            if refused := backend.unsupported(spec):
                await self._apply(instance_id, Status.FAILED, "unsupported", "; ".join(f"{k}: {v}" for k, v in refused.items()))
                return
            try:
                handle = await backend.submit(spec)
            except BackendError as exc:
                await self._apply(instance_id, Status.FAILED, "submit_failed", f"{backend.name} backend: {exc}")
                return
            deadline = hub.clock() + dt.timedelta(seconds=timeout)
            async with hub.tx() as session:
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
        await self._watch_start(instance_id, backend, handle, spec.base_url, spec.token, ready_path, deadline, timeout)

    async def _watch_start(self, instance_id: str, backend: Backend, handle: Handle, base_url: str,
                           token: str, ready_path: str | None, deadline: dt.datetime, timeout: float) -> None:
        delay = 0.02
        started = time.monotonic()
        last_db_check = started
        pending_reported = ""
        while True:
            obs = await backend.observe(instance_id, handle)
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
            if self.hub.clock() >= deadline:
                message = f"did not become ready within {timeout:g} s"
                if obs.message:
                    message += f"; {backend.name} says: {obs.message}"
                message += await self._log_tail(backend, handle)
                await backend.terminate(handle, grace=self.hub.settings.stop_grace)
                await self._apply(instance_id, Status.FAILED, "start_timeout", message)
                return
            now = time.monotonic()
            if instance_id in self._stop_requested or now - last_db_check > 0.5:
                last_db_check = now
                if await self._status(instance_id) not in (Status.STARTING, Status.QUEUED, Status.UNKNOWN):
                    return  # a stop was requested; the next pass stops it
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
        if not await _listening(url, wait):
            return False
        status = await _http_status(url, f"{base_url}{ready_path}", token)
        return status is not None and status < 500 and status not in (404, 401, 403)

    async def _became_ready(self, instance_id: str, url: str | None, took: float) -> None:
        try:
            async with self.hub.tx() as session:
                inst = await session.get(Instance, instance_id)
                if inst is None or inst.status not in (Status.STARTING, Status.QUEUED, Status.UNKNOWN):
                    return
                inst.upstream = url
                transition(session, inst, Status.RUNNING, reason="ready", message=f"ready after {took:.1f} s",
                           now=self.hub.clock())
                route = self.hub.route_for(inst)
        except StaleDataError:
            return  # stopped while it became ready: the stop stands
        if route is not None:
            self.hub.routes.add(route)

    # -- call-home ---------------------------------------------------------------------
    async def call_home(self, instance_id: str, report: dict[str, Any]) -> None:
        """An instance reported where it listens (the caller has checked its token).

        The backend turns the report into an updated handle (stored, so a restarted
        hub still knows the URL) and the instance's start watcher is woken to look.
        Raises NotFound (no such starting/running instance), Conflict (its job is
        not recorded yet: the launcher retries) or Invalid (the backend refused it).
        """
        async with self.hub.sessions() as session:
            inst = await session.get(Instance, instance_id)
            if inst is None or inst.status not in CALL_HOME_STATUSES:
                raise NotFound("no such starting or running instance")
            handle, backend = inst.handle, self.hub.backends.get(inst.backend)
        if backend is None:
            raise NotFound(f"backend {inst.backend!r} is not enabled")
        if handle is None:
            raise Conflict("the instance's job is not recorded yet; try again")
        try:
            updated = backend.called_home(instance_id, handle, report)
        except BackendError as exc:
            raise Invalid(f"call-home refused: {exc}") from exc
        async with self.hub.tx() as session:
            inst = await session.get(Instance, instance_id)
            if inst is not None and inst.handle == handle:
                await session.execute(update(Instance).where(Instance.id == instance_id).values(handle=updated))
                note(session, inst, reason="called_home", message=f"the instance reported its address "
                     f"{updated.get('url', '')}", now=self.hub.clock())
        if (nap := self._naps.get(instance_id)) is not None:
            nap.set()  # its start watcher looks again now, not after its back-off

    # -- running ---------------------------------------------------------------------
    async def _observe_running(self, backend_name: str, group: dict[str, Instance]) -> None:
        backend = self.hub.backends.get(backend_name)
        if backend is None:
            return
        handles = {iid: inst.handle or {} for iid, inst in group.items()}
        try:
            observations = await backend.observe_many(handles)
        except BackendError as exc:
            observations = {iid: Observation(Phase.UNKNOWN, message=str(exc)) for iid in handles}
        for iid, obs in observations.items():
            inst = group[iid]
            if obs.phase in (Phase.FAILED, Phase.SUCCEEDED, Phase.GONE):
                self.hub.routes.remove_instance(iid)
                tail = await self._log_tail(backend, handles[iid])
                await self._release(backend, iid, handles[iid])
                if obs.phase == Phase.SUCCEEDED and inst.kind == "job":
                    await self._apply(iid, Status.SUCCEEDED, "exited", "finished successfully" + tail)
                elif obs.phase == Phase.SUCCEEDED:
                    await self._apply(iid, Status.STOPPED, "exited", "the process exited on its own (code 0)" + tail)
                else:
                    await self._apply(iid, Status.FAILED, obs.reason or "exited", (obs.message or "gone") + tail)
            elif obs.phase == Phase.UNKNOWN and inst.status != Status.UNKNOWN:
                await self._apply(iid, Status.UNKNOWN, "backend_unreachable",
                                  f"{backend.name} backend unreachable: {obs.message}; will keep trying")
            elif obs.phase in (Phase.RUNNING, Phase.STARTING) and inst.status == Status.UNKNOWN:
                await self._apply(iid, Status.RUNNING, "recovered", f"{backend.name} backend reachable again")
            if obs.phase == Phase.RUNNING and obs.url and obs.url != inst.upstream:
                route = None
                async with self.hub.tx() as session:
                    await session.execute(update(Instance).where(Instance.id == iid).values(upstream=obs.url))
                    row = await session.get(Instance, iid)
                    if row is not None and row.status in (Status.RUNNING, Status.UNKNOWN):
                        route = self.hub.route_for(row)
                if route is not None:
                    self.hub.routes.add(route)

    # -- stopping -----------------------------------------------------------------------
    async def _request_stop(self, instance_id: str, reason: str) -> None:
        try:
            async with self.hub.tx() as session:
                inst = await session.get(Instance, instance_id)
                if inst is not None:
                    request_stop(session, inst, actor=None, reason=reason)
        except StaleDataError:
            pass  # it changed meanwhile (stopped already?): the pass that follows looks again
        self._spawn(instance_id, self._stop(instance_id))

    async def _stop(self, instance_id: str) -> None:
        hub = self.hub
        self._stop_requested.discard(instance_id)
        hub.routes.remove_instance(instance_id)
        async with hub.sessions() as session:
            inst = await session.get(Instance, instance_id)
            if inst is None or inst.status != Status.STOPPING:
                return
            handle, backend, why = inst.handle, hub.backends.get(inst.backend), inst.reason
        gone = True
        if handle and backend is not None:
            try:
                gone = await backend.terminate(handle, grace=hub.settings.stop_grace)
            except BackendError as exc:
                log.warning("instance %s: terminate failed: %s", instance_id, exc)
                gone = False
        if not gone:
            async with hub.tx() as session:
                inst = await session.get(Instance, instance_id)
                if inst is not None:
                    note(session, inst, reason="stop_retry", message="could not confirm the stop yet; retrying")
            return
        final = FINAL_FOR_STOP_REASON.get(why, Status.STOPPED)
        message = {"expired": "expired: its duration ran out", "idle": "stopped: idle for too long",
                   "admin": "stopped by an admin", "user": "stopped by the owner"}.get(why, f"stopped ({why})")
        await self._apply(instance_id, final, why or "stopped", message)

    async def _cull_idle(self, now: dt.datetime) -> None:
        for route in self.hub.routes.all():
            async with self.hub.sessions() as session:
                inst = await session.get(Instance, route.instance_id)
                if inst is None or inst.status != Status.RUNNING:
                    continue
                template = self.hub.catalog.get(inst.template)
                if template is None or template.idle_timeout_hours is None:
                    continue
                last = max(route.last_activity, (inst.started_at or inst.created_at).timestamp())
            if now.timestamp() - last > template.idle_timeout_hours * 3600:
                await self._request_stop(route.instance_id, "idle")

    async def flush_activity(self) -> None:
        """Write the proxy's in-memory last-activity times to the database."""
        changed = [(r.instance_id, r.last_activity) for r in self.hub.routes.all()
                   if r.last_activity and r.last_activity != self._flushed_activity.get(r.instance_id)]
        if not changed:
            return
        async with self.hub.tx() as session:
            for iid, ts in changed:
                await session.execute(update(Instance).where(Instance.id == iid)
                                      .values(last_activity_at=dt.datetime.fromtimestamp(ts, dt.UTC)))
        self._flushed_activity.update(changed)

    async def _clean_orphans(self) -> None:
        async with self.hub.sessions() as session:
            known = set((await session.execute(select(Instance.id).where(Instance.status.in_([s.value for s in ACTIVE])))).scalars())
        for backend in self.hub.backends.values():
            try:
                owned = await backend.list_owned()
            except BackendError as exc:
                log.warning("%s backend: cannot list instances: %s", backend.name, exc)
                continue
            for handle in owned:
                iid = handle.get("instance_id")
                if iid and iid not in known and iid not in self._tasks:
                    log.warning("%s backend: terminating orphan %s", backend.name, iid)
                    await backend.terminate(handle, grace=self.hub.settings.stop_grace)

    async def restore_routes(self) -> None:
        """At start: routes for every running instance, from the database."""
        async with self.hub.sessions() as session:
            for inst in await self.hub.running_instances(session):
                route = self.hub.route_for(inst)
                if route is not None:
                    self.hub.routes.add(route)

    # -- helpers ------------------------------------------------------------------------------
    async def _apply(self, instance_id: str, to: Status, reason: str, message: str, *,
                     only_from: Status | None = None) -> str | None:
        """Move the instance to ``to`` if it may go there (from ``only_from``, if given); returns
        the status it has afterwards (None: it no longer exists).

        The move is a compare-and-set (the ORM updates the row only if its status is still the one
        read): if another request moved it meanwhile (a stop), that move stands and this one is dropped.
        """
        try:
            async with self.hub.tx() as session:
                inst = await session.get(Instance, instance_id)
                if inst is None:
                    return None
                current = inst.status
                if current == to:
                    return current
                if (only_from is not None and current != only_from) or not can_transition(current, to):
                    log.info("instance %s: not moving %s -> %s (%s)", instance_id, current, to, reason)
                    return current
                transition(session, inst, to, reason=reason, message=message, now=self.hub.clock())
        except StaleDataError:
            log.info("instance %s: changed while moving it to %s (%s); the other change stands", instance_id,
                     to, reason)
            return await self._status(instance_id)
        if to not in (Status.RUNNING, Status.UNKNOWN):
            self.hub.routes.remove_instance(instance_id)
        return to

    async def _release(self, backend: Backend, instance_id: str, handle: Handle) -> None:
        """The instance's main process ended: whatever it left behind (processes that escaped
        into their own session, its cgroups, a job step) is ended too."""
        try:
            await backend.terminate(handle, grace=0)
        except BackendError as exc:
            log.warning("instance %s: cleaning up after it ended failed: %s", instance_id, exc)

    async def _status(self, instance_id: str) -> str | None:
        async with self.hub.sessions() as session:
            return (await session.execute(select(Instance.status).where(Instance.id == instance_id))).scalar_one_or_none()

    async def _log_tail(self, backend: Backend, handle: Handle) -> str:
        try:
            lines = [line async for line in backend.logs(handle, tail=LOG_TAIL_IN_EVENTS)]
        except (BackendError, OSError):
            return ""
        return ("\n--- last log lines ---\n" + "\n".join(lines)) if lines else ""


def _open(url: str) -> Coroutine[Any, Any, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to an upstream URL: ``http://host:port`` or ``unix:/path``."""
    if url.startswith("unix:"):
        return asyncio.open_unix_connection(url.removeprefix("unix:"))
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    return asyncio.open_connection(host, port)


async def _listening(url: str, wait: float) -> bool:
    """Whether ``url`` accepts connections, trying every 10 ms for up to ``wait`` s.

    A refused connect costs tens of microseconds; an HTTP client's failed request, a
    millisecond: so the readiness probe only runs once something listens."""
    deadline = time.monotonic() + wait
    while True:
        try:
            async with asyncio.timeout(1.0):
                _, writer = await _open(url)
        except (OSError, TimeoutError):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
            continue
        writer.close()
        return True


async def _http_status(url: str, path: str, token: str, timeout: float = 5.0) -> int | None:
    """The status code of ``GET path`` on ``url`` with the instance token, or None.

    One small request on its own connection: the hub does not need a general HTTP
    client for this (httpx would cost the hub several MiB and a slower start)."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port or 80}" if parts.hostname else "localhost"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open(url)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: token {token}\r\n"
                             f"Connection: close\r\n\r\n".encode())
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    fields = line.split(b" ", 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        return None
    return int(fields[1])


def _describe(handle: Handle) -> str:
    for key in ("pid", "job_id", "pod"):
        if key in handle:
            return f" ({key.replace('_', ' ')} {handle[key]})"
    return ""
