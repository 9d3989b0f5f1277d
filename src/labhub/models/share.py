"""Shares: an instance opened to a named user or to a group's members, besides its owner."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from labhub.models.base import Base, UTCDateTime, utcnow


class Share(Base):
    """``instance_id`` may be used by one user (``user_id``) or by every member of a group (``group_id``).

    Exactly one of the two is set.  A share belongs to one launch: it goes with its instance (and with
    its user or group), and a relaunch under the same name starts unshared.  Group shares are resolved
    to the group's members when the proxy's route is built (:func:`labhub.services.shares.audience`).
    """

    __tablename__ = "shares"
    __table_args__ = (
        UniqueConstraint("instance_id", "user_id", name="uq_shares_instance_user"),
        UniqueConstraint("instance_id", "group_id", name="uq_shares_instance_group"),
        CheckConstraint("(user_id IS NULL) <> (group_id IS NULL)", name="one_grantee"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[str] = mapped_column(String(63), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
