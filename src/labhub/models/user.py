"""People, groups, login sessions and API tokens."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from labhub.models.base import Base, UTCDateTime, utcnow


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class UserStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    DISABLED = "disabled"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.USER)
    status: Mapped[str] = mapped_column(String(16), default=UserStatus.ACTIVE, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # why the status is what it is ("rejected by bob", "disabled by bob: left the group"), and since when
    status_reason: Mapped[str] = mapped_column(String(255), default="")
    status_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Set while the account is being deleted (its instances stop first): the admin who asked.
    # The reconciler finishes the deletion, on whichever replica, once nothing is active.
    deleting_by: Mapped[str | None] = mapped_column(String(63))
    # this user's own limits (labhub.services.quotas.LIMITS), over their groups' and the site's; None: none set
    quota: Mapped[dict | None] = mapped_column(JSON)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class Group(Base):
    """A set of users sharing template access, quotas and launch policy (docs/policies.md).

    ``quota``: limits for each member (labhub.services.quotas.LIMITS); a member's own quota wins, and of
    several groups the most generous value.  ``priority``: members' queued launches go before those of
    lower priority.  ``self_service``: members may launch for themselves (else an admin launches for
    them).  ``policy``: ``max_hours``, ``default_hours``, ``single_instance``, ``custom_size``.
    """

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    quota: Mapped[dict | None] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    self_service: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    policy: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("group_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # "" when an admin added it; "oidc:<provider>" when a provider's group claim did (and may remove it)
    source: Mapped[str] = mapped_column(String(64), default="")


class Identity(Base):
    """A login at an external identity provider (OIDC), linked to one user."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("provider", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(63))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class LoginSession(Base):
    """A browser session.  ``id`` is the SHA-256 of the cookie value."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    user_agent: Mapped[str] = mapped_column(String(255), default="")
    address: Mapped[str] = mapped_column(String(64), default="")

    user: Mapped[User] = relationship(lazy="joined")


class ApiToken(Base):
    """A bearer token.  Only the SHA-256 of the secret is stored."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_user", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(String(255), default="")
    scopes: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["*"])
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    issued_by: Mapped[str | None] = mapped_column(String(63))  # an admin who made it for this user, explicitly

    user: Mapped[User] = relationship(lazy="joined")


class SystemAccount(Base):
    """The system account a user's local instances run as.

    Assigned on first use and kept: the mapping from users to accounts is
    injective (the name is the key) and stable.  When the user is deleted the
    row stays with ``user_id`` NULL, so the account (and whatever files it still
    owns outside its home) is never handed to another user, not even one who
    later takes the same user name.
    """

    __tablename__ = "system_accounts"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
