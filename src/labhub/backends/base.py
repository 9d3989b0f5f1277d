"""The backend contract: where instances run.

A backend turns a :class:`LaunchSpec` into running compute and reports on it.
Backends import nothing from LabHub except this module.  Everything a backend
needs to find its work again after a hub restart lives in the JSON ``Handle``
it returns from :meth:`Backend.submit`; the hub stores it and never interprets it.

State rules every backend keeps (the contract suite in ``tests/backends`` checks them):

* ``submit`` is fast (it starts work, it does not wait for readiness) and
  idempotent by ``spec.instance_id``: submitting the same instance twice returns
  a handle to the same compute, never a second copy.
* ``observe_many`` reports every handle it is given, in one round trip to the
  engine where the engine allows it (one ``squeue``, one pod list).  A handle the
  engine no longer knows is ``GONE``; an engine that cannot be reached makes
  every handle ``UNKNOWN`` (the hub treats that as alive and waits).
* ``terminate`` is idempotent and returns ``True`` once the compute is gone
  (``False`` if it could not be confirmed, e.g. the engine is unreachable).
* ``list_owned`` returns handles for everything this backend created on this
  hub's behalf, and nothing else, so orphans can be cleaned up.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

Handle = dict[str, Any]
"""JSON-serialisable pointer to a backend's compute (pid, job id, pod name)."""


class Phase(enum.StrEnum):
    """What a backend can say about a handle."""

    PENDING = "pending"  # accepted, waiting for resources (Slurm queue)
    STARTING = "starting"  # process/job exists, not yet serving
    RUNNING = "running"  # alive; ``Observation.url`` set once it listens
    SUCCEEDED = "succeeded"  # exited 0 (jobs)
    FAILED = "failed"  # exited non-zero or killed by the engine
    GONE = "gone"  # the engine does not know this handle
    UNKNOWN = "unknown"  # the engine cannot be reached; treat as alive


class Capability(enum.StrEnum):
    """Features a backend may offer; :meth:`Backend.unsupported` must agree."""

    GPUS = "gpus"
    LOGS = "logs"
    CALL_HOME = "call_home"  # instances report their own host:port to the hub
    UNIX_SOCKET = "unix_socket"  # fills {socket}: a Unix socket in a directory only the instance can enter
    CONTAINER_IMAGE = "container_image"


class BackendError(Exception):
    """A backend operation failed; ``str(exc)`` is shown to the user as is."""


class BackendUnavailable(BackendError):
    """The engine cannot be reached right now; retry later."""


@dataclass(frozen=True, slots=True)
class Resources:
    """What one instance may use.  ``memory_mb`` and ``cpus`` are limits."""

    cpus: float
    memory_mb: int
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a backend can hand out at once (``None``: not limited by LabHub; the backend may queue)."""

    cpus: float | None = None
    memory_mb: int | None = None
    gpus: int | None = None


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything a backend needs to start one instance.

    ``command`` is an argument vector (never a shell string).  It may contain
    the placeholders ``{port}``, ``{ip}``, ``{base_url}`` and ``{home}``, which
    the backend fills in once it knows them (a local backend picks a free port;
    a Slurm job picks one on its node), and ``{socket}`` for backends with
    :attr:`Capability.UNIX_SOCKET`.  ``account`` is the system account the hub
    assigned to the owner (stable and unique per user), for backends that run
    instances as per-user accounts.  ``token`` is the instance's secret: the
    proxy sends it upstream, and the backend passes it to the process through
    ``env`` (never on the command line, where other users could read it).
    """

    instance_id: str
    owner: str
    name: str
    kind: str  # "workspace" | "job" | "service"
    command: list[str]
    env: Mapping[str, str]
    resources: Resources
    base_url: str  # "/user/alice/ws1/"
    token: str
    time_limit_s: int
    home: str | None = None  # persistent directory for the owner, if any
    account: str | None = None  # the owner's system account, when the hub assigned one
    options: Mapping[str, Any] = field(default_factory=dict)  # backend-specific
    #: a virtualenv the instance runs in (its ``bin/`` first on PATH); None: the hub's own
    #: environment for workspaces, the system's for jobs
    runtime: str | None = None
    #: directories the backend creates in ``home``, owned by the instance's account (a job's output)
    dirs: tuple[str, ...] = ()
    #: directories the hub owns that the instance's account must be able to read (a job's input
    #: folder); the backend grants read access to that account alone
    readable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at a handle.  ``url`` is the upstream base (``http://h:p``)."""

    phase: Phase
    url: str | None = None
    exit_code: int | None = None
    message: str = ""
    reason: str | None = None  # engine's reason code, e.g. "TIMEOUT", "OOM"


class Backend(abc.ABC):
    """Where instances run.  See the module docstring for the state rules."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: a group whose members (the accounts instances run as) must be able to traverse the
    #: hub's data directory to reach their homes; the hub sets it on the directory
    data_dir_group: int | None = None

    def describe_isolation(self) -> str:
        """One line saying how instances are isolated (shown to admins)."""
        return "none"

    def describe_capacity(self) -> str:
        """One line saying what the admission queue may hand out here (shown to admins)."""
        return "not limited by LabHub (the backend queues by itself)"

    def capacity(self) -> Capacity:
        """What LabHub's admission queue may hand out on this backend at once; the default limits
        nothing (a batch system such as Slurm queues by itself and says why)."""
        return Capacity()

    def unsupported(self, spec: LaunchSpec) -> dict[str, str]:
        """Reasons this backend cannot run ``spec``, keyed by field; pure.

        An empty dict means the spec is acceptable.  Called before submit, so
        a request the backend cannot honour is refused with a reason instead of
        failing later.
        """
        reasons: dict[str, str] = {}
        if spec.resources.gpus and Capability.GPUS not in self.capabilities:
            reasons["size"] = f"the {self.name} backend has no GPUs"
        return reasons

    @abc.abstractmethod
    async def submit(self, spec: LaunchSpec) -> Handle:
        """Start the compute for ``spec``; idempotent by ``spec.instance_id``."""

    @abc.abstractmethod
    async def observe_many(self, handles: Mapping[str, Handle]) -> dict[str, Observation]:
        """Observe handles keyed by instance id; return an entry for each key."""

    async def observe(self, instance_id: str, handle: Handle) -> Observation:
        """Observe one handle (convenience over :meth:`observe_many`)."""
        return (await self.observe_many({instance_id: handle}))[instance_id]

    @abc.abstractmethod
    async def terminate(self, handle: Handle, *, grace: float = 5.0) -> bool:
        """Stop the compute; idempotent; ``True`` once it is gone."""

    def called_home(self, instance_id: str, handle: Handle, report: Mapping[str, Any]) -> Handle:
        """An instance reported where it listens (``report``: ``host``, ``port``, engine ids); pure.

        Only backends with :attr:`Capability.CALL_HOME` accept this.  Return the
        handle to store in place of ``handle`` (it must let :meth:`observe_many`
        report the URL, also after a hub restart); raise :class:`BackendError`
        when the report does not belong to the compute ``handle`` points at.
        """
        raise BackendError(f"the {self.name} backend does not accept call-home reports")

    @abc.abstractmethod
    async def list_owned(self) -> list[Handle]:
        """Handles of everything this backend created for this hub."""

    async def find(self, instance_id: str) -> Handle | None:
        """The handle of a live job this hub already created for ``instance_id``, else None.

        Called before every submit: a replica that died between submitting and
        recording the handle leaves a job the next one must adopt, not double.
        The default searches :meth:`list_owned`; backends with a cheaper lookup
        override it.
        """
        return next((h for h in await self.list_owned() if h.get("instance_id") == instance_id), None)

    @abc.abstractmethod
    def logs(self, handle: Handle, *, tail: int = 100) -> AsyncIterator[str]:
        """The last ``tail`` lines of the instance's output, oldest first."""

    async def read_log(self, handle: Handle, offset: int, *, limit: int = 1 << 20) -> tuple[bytes, int]:
        """Up to ``limit`` bytes of the instance's output from byte ``offset`` (negative: that many
        bytes before its end), and the offset after them, for following a log as it grows.
        ``(b"", offset)`` when there is nothing new.  Backends with :attr:`Capability.LOGS` that
        can read at an offset override this; the default raises :class:`BackendError`."""
        raise BackendError(f"the {self.name} backend cannot follow logs")

    async def health(self) -> None:
        """Raise :class:`BackendUnavailable` if the engine cannot be used."""

    async def close(self) -> None:
        """Release resources held by the backend object (not the instances)."""


def instance_ids(handles: Iterable[Handle]) -> set[str]:
    """The ``instance_id`` keys of handles that carry one."""
    return {h["instance_id"] for h in handles if "instance_id" in h}
