"""Hub replicas: who is alive, for leases on instances."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from labhub.models.base import Base, UTCDateTime, utcnow


class Replica(Base):
    """One running ``labhub serve`` process sharing the database.

    A replica's leases are the instances whose ``claimed_by`` names it; they hold
    while its ``heartbeat_at`` is recent (within ``LABHUB_LEASE_SECONDS``), which
    it renews every third of that: one row per replica, however many instances
    it holds.  A clean shutdown deletes the row (and releases the claims).
    """

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[str] = mapped_column(String(32), default="")
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
