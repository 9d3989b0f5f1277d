"""Access to instance origins: a single-use code, then a cookie for that one origin."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from labhub.models.base import Base, UTCDateTime, utcnow


class OriginGrant(Base):
    """One user's access to one instance's origin, from one hub login.

    The hub mints a grant when a logged-in user opens an instance: ``code_hash``
    is the digest of a short-lived code handed to the instance's origin in a
    redirect.  Redeeming it (once: one conditional UPDATE) clears ``code_hash``
    and sets ``secret_hash``, the digest of the cookie that origin sends from
    then on.  A grant dies with its instance, its user and the hub login session
    it came from (logging out of the hub logs out of every instance origin).
    """

    __tablename__ = "origin_grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    login_session_id: Mapped[str | None] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    code_expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    secret_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
