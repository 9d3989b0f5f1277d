"""The composition root: one object holding the hub's parts, built from Settings.

Layers below (services, backends, proxy) get what they need from here as
explicit arguments; nothing reaches for globals.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub import db
from labhub.backends import registry
from labhub.backends.base import Backend
from labhub.catalog import Catalog, load_catalog
from labhub.models import Instance, Status, User, UserStatus, utcnow
from labhub.proxy.routes import Authenticator, Principal, Route, RouteTable
from labhub.services import credentials, security, users
from labhub.services.bus import EventBus
from labhub.services.lifecycle import event_dict
from labhub.settings import Settings, load_secret_key

log = logging.getLogger(__name__)


class Hub:
    """Everything a running hub shares.  Create, ``await start()``, ``await close()``."""

    def __init__(self, settings: Settings, *, clock: Callable[[], dt.datetime] = utcnow,
                 backends: dict[str, Backend] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        (settings.data_dir / "homes").mkdir(mode=0o711, exist_ok=True)
        self.secret_key = load_secret_key(settings.data_dir)
        self.engine = db.make_engine(settings.effective_database_url)
        self.sessions = db.make_sessionmaker(self.engine)
        self.catalog: Catalog = Catalog()
        self.backends: dict[str, Backend] = backends if backends is not None else registry.create(
            settings.backends, data_dir=settings.data_dir, isolation=settings.isolation, settings=settings
        )
        self.routes = RouteTable()
        self.auth = Authenticator(self._lookup_principal)
        self.bus = EventBus()
        self.setup_token: str | None = None
        self.started_monotonic = time.monotonic()
        from labhub.reconcile.reconciler import Reconciler

        self.reconciler = Reconciler(self)

    async def start(self, *, reconcile: bool = True) -> None:
        await db.upgrade(self.engine)
        self.catalog = load_catalog(self.settings.templates_dir)
        for error in self.catalog.errors:
            log.error("template problem: %s", error)
        for name, backend in self.backends.items():
            log.info("backend %s: isolation: %s", name, backend.describe_isolation())
        async with self.sessions() as session:
            if await users.count_admins(session) == 0:
                self.setup_token = secrets.token_urlsafe(24)
        await self.reconciler.restore_routes()
        if reconcile:
            self.reconciler.start()

    async def close(self) -> None:
        await self.reconciler.stop()
        for backend in self.backends.values():
            await backend.close()
        await self.engine.dispose()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        """A short transaction; events recorded in it are published after commit."""
        async with self.sessions() as session:
            async with session.begin():
                yield session
            for event, owner_id in session.info.pop("labhub_events", []):
                self.bus.publish({**event_dict(event), "owner_id": owner_id})

    # -- secrets ---------------------------------------------------------------
    def instance_token(self, instance_id: str) -> str:
        """The instance's upstream secret: derived, never stored."""
        return security.derive(self.secret_key, "instance-token", instance_id)

    def home_for(self, username: str) -> Path:
        return self.settings.data_dir / "homes" / username

    # -- routes ----------------------------------------------------------------
    def route_for(self, instance: Instance) -> Route | None:
        if not instance.upstream:
            return None
        host, _, port = instance.upstream.removeprefix("http://").rpartition(":")
        return Route(
            instance_id=instance.id, owner_id=instance.owner_id, owner=instance.owner.name,
            name=instance.name, host=host, port=int(port), token=self.instance_token(instance.id),
            last_activity=instance.last_activity_at.timestamp() if instance.last_activity_at else 0.0,
        )

    # -- authentication (the proxy's slow path, and the API's) ----------------
    async def _lookup_principal(self, kind: str, secret: str) -> Principal | None:
        async with self.tx() as session:
            if kind == "session":
                user = await credentials.session_user(session, secret=secret)
                return None if user is None else Principal(user.id, user.name, user.is_admin)
            token = await credentials.token_lookup(session, secret=secret)
            if token is None:
                return None
            return Principal(token.user.id, token.user.name, token.user.is_admin, frozenset(token.scopes))

    async def active_user(self, session: AsyncSession, user_id: int) -> User | None:
        user = await session.get(User, user_id)
        return user if user is not None and user.status == UserStatus.ACTIVE else None

    async def running_instances(self, session: AsyncSession) -> list[Instance]:
        rows = await session.execute(select(Instance).where(Instance.status.in_([Status.RUNNING, Status.UNKNOWN])))
        return list(rows.scalars())
