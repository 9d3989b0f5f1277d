"""An in-memory backend with fault injection, for tests and the contract suite.

It starts no processes.  Each instance moves ``PENDING -> STARTING -> RUNNING``
over a number of observations chosen by the fault mode, and ``url`` points
wherever the test says (e.g. a real trivial HTTP server), so the hub's
readiness probe and proxy work against it.

Fault modes (``FakeBackend(mode=...)`` or per instance through
``spec.options["fake_mode"]``):

* ``ok``: running after ``start_after`` observations.
* ``slow``: like ``ok`` but ``submit`` itself takes ``delay`` seconds.
* ``never``: stays ``STARTING`` forever (start timeouts).
* ``fail``: ``FAILED`` with exit code 1 after ``start_after`` observations.
* ``reject``: ``submit`` raises :class:`BackendError`.
The whole engine can be made unreachable with ``unreachable = True``:
observations become ``UNKNOWN`` and calls raise :class:`BackendUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from labhub.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Capability,
    Capacity,
    Handle,
    LaunchSpec,
    Observation,
    Phase,
)


@dataclass
class _Job:
    spec: LaunchSpec
    mode: str
    observed: int = 0
    alive: bool = True
    exit_code: int | None = None
    log: list[str] = field(default_factory=list)


class FakeBackend(Backend):
    name = "fake"
    capabilities = frozenset({Capability.LOGS})

    def __init__(self, *, mode: str = "ok", start_after: int = 1, delay: float = 0.0,
                 url: str | None = "http://127.0.0.1:9", gpus: bool = False,
                 capacity: Capacity | None = None) -> None:
        """``capacity``: what the admission queue may hand out at once (default: not limited)."""
        self.mode = mode
        self._capacity = capacity or Capacity()
        self.start_after = start_after
        self.delay = delay
        self.url = url
        self.unreachable = False
        self.jobs: dict[str, _Job] = {}
        self.submits = 0
        if gpus:
            self.capabilities = frozenset({Capability.LOGS, Capability.GPUS})

    def describe_isolation(self) -> str:
        return "none (fake backend: nothing runs)"

    def capacity(self) -> Capacity:
        return self._capacity

    def _check_reachable(self) -> None:
        if self.unreachable:
            raise BackendUnavailable("fake engine unreachable")

    async def submit(self, spec: LaunchSpec) -> Handle:
        self._check_reachable()
        mode = str(spec.options.get("fake_mode", self.mode))
        if mode == "reject":
            raise BackendError("the fake engine refused the job")
        if mode == "slow":
            await asyncio.sleep(self.delay)
        job = self.jobs.get(spec.instance_id)
        if job is None or not job.alive:
            self.submits += 1
            job = _Job(spec=spec, mode=mode, log=[f"fake: starting {spec.command[0]}"])
            self.jobs[spec.instance_id] = job
        return {"instance_id": spec.instance_id, "fake": True}

    async def observe_many(self, handles: Mapping[str, Handle]) -> dict[str, Observation]:
        if self.unreachable:
            return {iid: Observation(Phase.UNKNOWN, message="fake engine unreachable") for iid in handles}
        return {iid: self._observe(iid) for iid in handles}

    def _observe(self, iid: str) -> Observation:
        job = self.jobs.get(iid)
        if job is None:
            return Observation(Phase.GONE, message="no such job")
        if not job.alive:
            if job.exit_code == 0:
                return Observation(Phase.SUCCEEDED, exit_code=0, message="exited with code 0")
            return Observation(Phase.FAILED, exit_code=job.exit_code, message=f"exited with code {job.exit_code}")
        job.observed += 1
        if job.observed <= self.start_after and job.mode != "never":
            return Observation(Phase.PENDING if job.observed == 1 else Phase.STARTING, message="fake: waiting")
        if job.mode == "never":
            return Observation(Phase.STARTING, message="fake: still starting")
        if job.mode == "fail":
            job.alive, job.exit_code = False, 1
            job.log.append("fake: crashed")
            return Observation(Phase.FAILED, exit_code=1, message="exited with code 1")
        return Observation(Phase.RUNNING, url=self.url)

    def finish(self, instance_id: str, exit_code: int) -> None:
        """Make a job end by itself (tests)."""
        job = self.jobs[instance_id]
        job.alive, job.exit_code = False, exit_code
        job.log.append(f"fake: exited with {exit_code}")

    async def terminate(self, handle: Handle, *, grace: float = 5.0) -> bool:
        if self.unreachable:
            return False
        job = self.jobs.pop(handle.get("instance_id", ""), None)
        if job is not None:
            job.alive = False
        return True

    async def list_owned(self) -> list[Handle]:
        self._check_reachable()
        return [{"instance_id": iid, "fake": True} for iid, job in self.jobs.items() if job.alive]

    async def logs(self, handle: Handle, *, tail: int = 100) -> AsyncIterator[str]:
        job = self.jobs.get(handle.get("instance_id", ""))
        for line in (job.log if job else [])[-tail:]:
            yield line

    async def health(self) -> None:
        self._check_reachable()
