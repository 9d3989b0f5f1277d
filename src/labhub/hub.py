"""The composition root: one object holding the hub's parts, built from Settings.

Layers below (services, backends, proxy) get what they need from here as
explicit arguments; nothing reaches for globals.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub import db
from labhub.auth.mail import Mail, Mailer
from labhub.auth.flow import OidcRegistry
from labhub.auth.providers import resolve_all
from labhub.auth.throttle import LoginThrottle
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
        self.throttle = LoginThrottle(settings.login_throttle)
        self.mailer = Mailer(settings.smtp)
        self.oidc = OidcRegistry(resolve_all(settings.oidc))
        self._pending: dict[str, tuple[float, str | None]] = {}  # session secret -> (until, pending user's name)
        self._tasks: set[asyncio.Task[None]] = set()
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
        self._warn_about_identity_settings()
        await self.reconciler.restore_routes()
        if reconcile:
            self.reconciler.start()

    def _warn_about_identity_settings(self) -> None:
        s = self.settings
        asks_for_mail = s.approval_required and (s.signup == "open" or bool(s.oidc))
        if asks_for_mail and not s.smtp.host:
            log.warning("new accounts wait for approval but no SMTP host is set (LABHUB_SMTP__HOST): "
                        "approval requests are only logged; approve with `labhub user ls --status pending`")
        if (s.signup == "open" or s.oidc) and not s.public_url:
            log.warning("LABHUB_PUBLIC_URL is not set: mailed links and OIDC redirect URIs use %s", s.base_url)
        for provider in self.oidc.providers.values():
            log.info("OIDC provider %s (%s): redirect URI %s/oauth/%s/callback", provider.name, provider.title,
                     s.base_url, provider.name)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.oidc.close()
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

    async def pending_user(self, secret: str) -> str | None:
        """The name of the *pending* user behind a session cookie, else None.

        Pending users are never principals (the proxy and the API do not admit
        them); this lets the pending gate show them the waiting page instead of
        the login page.  Answers are cached for two seconds; decisions clear it.
        """
        now = time.monotonic()
        entry = self._pending.get(secret)
        if entry is not None and entry[0] > now:
            return entry[1]
        async with self.sessions() as session:
            user = await credentials.session_owner(session, secret=secret)
        name = user.name if user is not None and user.status == UserStatus.PENDING else None
        if len(self._pending) > 10_000:
            self._pending.clear()
        self._pending[secret] = (now + 2.0, name)
        return name

    def credentials_changed(self, user_id: int | None = None) -> None:
        """A user's status, role or credentials changed: the next request must see it.

        Drops the user's cached principals, and every negative entry (a pending
        user's session is cached as "nobody" until approved).
        """
        if user_id is not None:
            self.auth.invalidate_user(user_id)
        self.auth.clear()
        self._pending.clear()

    # -- mail and background work --------------------------------------------------------
    async def send_mails(self, mails: list[Mail]) -> bool:
        """Send mails (after the transaction that decided them committed); True when all went out."""
        results = [await self.mailer.send(mail) for mail in mails]
        return bool(results) and all(results)

    def background(self, work: Coroutine[None, None, None], *, name: str) -> None:
        """Run ``work`` after the response; cancelled when the hub closes."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def running_instances(self, session: AsyncSession) -> list[Instance]:
        rows = await session.execute(select(Instance).where(Instance.status.in_([Status.RUNNING, Status.UNKNOWN])))
        return list(rows.scalars())
