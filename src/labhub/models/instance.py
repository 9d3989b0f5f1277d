"""Instances (workspaces, jobs, services) and their events."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from labhub.models.base import Base, UTCDateTime, utcnow
from labhub.models.user import User


class Kind(enum.StrEnum):
    WORKSPACE = "workspace"
    JOB = "job"
    SERVICE = "service"


class Status(enum.StrEnum):
    REQUESTED = "requested"
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    UNKNOWN = "unknown"  # backend unreachable; not killed, not forgotten
    SLEEPING = "sleeping"  # a service scaled to zero: no process; the next request starts it again
    STOPPING = "stopping"
    STOPPED = "stopped"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"


TERMINAL = frozenset({Status.STOPPED, Status.SUCCEEDED, Status.FAILED, Status.EXPIRED})
ACTIVE = frozenset(Status) - TERMINAL
ROUTED = frozenset({Status.RUNNING, Status.UNKNOWN})  # the proxy has a route to these (once they have an address)
ROUTED_OR_ASLEEP = ROUTED | {Status.SLEEPING}  # ... and a route that wakes these


class Instance(Base):
    """One launch of a template by a user.

    ``active_name`` equals ``name`` while the instance is not terminal and is
    NULL afterwards: the unique constraint on ``(owner_id, active_name)`` lets
    a user reuse a name once the old instance has ended, on every database.
    """

    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("owner_id", "active_name", name="uq_instances_owner_active_name"),
        Index("ix_instances_owner_created", "owner_id", "created_at"),
        Index("ix_instances_claimed_by", "claimed_by"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    active_name: Mapped[str | None] = mapped_column(String(63))
    template: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    size: Mapped[str] = mapped_column(String(63))
    cpus: Mapped[float]
    memory_mb: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    hours: Mapped[float]
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    backend: Mapped[str] = mapped_column(String(32))
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    upstream: Mapped[str | None] = mapped_column(String(255))  # http://host:port once known
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(String(32), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    start_deadline: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The lease: the hub replica (``Replica.id``) that works on this instance; it holds while that
    # replica's heartbeat is recent, and another replica takes the work over once it is not.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    # jobs: the folder they read (by name: deleting the folder later leaves the job's record), how
    # their process ended, and how much their artifacts (the output directory) hold
    input_folder: Mapped[str | None] = mapped_column(String(63))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    output_bytes: Mapped[int | None] = mapped_column(BigInteger)
    artifacts_expire_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    expiry_warned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # its owner was told it expires soon
    # services: whether anyone may call its inference routes without a token (rate-limited), and
    # whether it sleeps when idle (0: scaled to zero, woken by the next request) or keeps running (1)
    public: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    min_replicas: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    replicas: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # processes serving it, each of its size
    # workspaces: opened by an admin to every active user ("users") or to anyone, without login ("anyone");
    # "" for neither (its owner, admins and those it is shared with: labhub.models.Share)
    open_to: Mapped[str] = mapped_column(String(8), default="", server_default="")
    # the admission queue (labhub.services.admission): its owner's group priority when it was launched
    # (higher first), and when it was admitted (NULL while it waits: status queued and no handle)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    admitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    owner: Mapped[User] = relationship(lazy="joined")

    # Every ORM update of a row is a compare-and-set on its status (UPDATE ... WHERE status = <read>):
    # two hub tasks (or a request and a task) that move the same instance cannot both win.
    __mapper_args__ = {"version_id_col": status, "version_id_generator": False}

    @property
    def url(self) -> str:
        return f"/user/{self.owner.name}/{self.name}/"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


def awaits_admission(status: str, handle: Any) -> bool:
    """Whether an instance waits in LabHub's admission queue (not yet handed to a backend); a
    backend's own queue (a pending Slurm job) has a handle."""
    return status == Status.QUEUED and handle is None


class AdmissionLock(Base):
    """One row, updated first by every admission decision: the decisions are serialised on every
    database (SQLite's write lock, PostgreSQL's row lock), so counts and queue positions are exact
    with many concurrent launches and several replicas."""

    __tablename__ = "admission_lock"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


class Event(Base):
    """A timestamped, human-readable step in an instance's life."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_instance_id_id", "instance_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")


class AuditEvent(Base):
    """A security decision: who did what to whom."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_target_at", "target", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(63), default="")
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
