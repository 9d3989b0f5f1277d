"""The composition root: one object holding the hub's parts, built from Settings.

Layers below (services, backends, proxy) get what they need from here as
explicit arguments; nothing reaches for globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import event, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.exc import StaleDataError

from labhub import db, notify, storage
from labhub.auth.flow import OidcRegistry
from labhub.auth.mail import Mail, Mailer
from labhub.auth.providers import resolve_all
from labhub.auth.throttle import LoginThrottle
from labhub.backends import registry
from labhub.backends.base import Backend
from labhub.catalog import Catalog, load_catalog
from labhub.models import (
    ROUTED_OR_ASLEEP,
    TERMINAL,
    ApiToken,
    Group,
    Instance,
    LoginSession,
    Membership,
    OriginGrant,
    Status,
    User,
    UserStatus,
    utcnow,
)
from labhub.proxy.routes import Authenticator, Principal, Route, RouteTable
from labhub.reconcile.reconciler import Launch, Parts, Reconciler
from labhub.services import changes, credentials, origins, security, shares, users
from labhub.services.bus import EventBus
from labhub.services.folders import Folders
from labhub.services.jobs import JobFiles
from labhub.services.lifecycle import transition
from labhub.settings import Settings, load_secret_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CookieNames:
    """The hub's cookie names: ``__Host-`` prefixed over HTTPS, so no other origin can set them."""

    session: str
    csrf: str
    origin: str  # an instance origin's own cookie
    secure: bool

    @classmethod
    def for_settings(cls, settings: Settings) -> CookieNames:
        prefix = "__Host-" if settings.secure_cookies else ""
        return cls(f"{prefix}labhub_session", f"{prefix}labhub_csrf", f"{prefix}labhub_origin",
                   settings.secure_cookies)

    @property
    def all(self) -> tuple[str, ...]:
        return (self.session, self.csrf, self.origin)


class Hub:
    """Everything a running hub shares.  Create, ``await start()``, ``await close()``."""

    def __init__(self, settings: Settings, *, clock: Callable[[], dt.datetime] = utcnow,
                 backends: dict[str, Backend] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.cookies = CookieNames.for_settings(settings)
        self.public_url = settings.base_url  # the port is filled in once the proxy has bound
        url = settings.effective_database_url
        path = url.split(":///", 1)[1] if url.startswith("sqlite") and ":///" in url else ""
        sqlite = Path(path) if path and path != ":memory:" else None
        storage.prepare(settings.data_dir, sqlite=sqlite)
        self.secret_key = load_secret_key(settings.data_dir)
        self.engine = db.make_engine(settings.effective_database_url)
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
        self.replica = settings.replica_id or f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"
        self.shared = notify.shared(url)
        self._listener: notify.Listener | None = None
        self._stale_routes: set[str] = set()
        self._audiences_stale = False  # a group's members changed: every shared instance's audience is read again
        self._audience_lock = asyncio.Lock()  # audiences are applied in the order they were read
        self._routes_dirty = asyncio.Event()
        self.sessions = db.make_sessionmaker(self.engine, sync_session_class=self._session_class())
        self.folders = Folders(settings.storage)
        self.jobs = JobFiles(settings.storage)
        self.reconciler = Reconciler(Parts(
            sessions=self.sessions, backends=self.backends, catalog=lambda: self.catalog, routes=self.routes,
            route_for=self.route_for, launch=Launch(self.instance_token, self.home_for, self.base_path,
                                                    jobs=self.jobs, folders=self.folders, runtime=self.runtime),
            clock=clock, settings=settings, replica=self.replica,
        ))

    async def start(self, *, reconcile: bool = True) -> None:
        group = next((b.data_dir_group for b in self.backends.values() if b.data_dir_group is not None), None)
        storage.prepare_storage(self.settings.storage.dir, self.settings.data_dir, group=group)
        storage.secure(self.settings.data_dir, group=group)
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
        if self.shared:  # before the routes are read: a change made meanwhile is not missed
            self._listener = notify.Listener(self.settings.effective_database_url, self._notified, self._connected)
            await self._listener.start()
        await self.reload_routes()
        self.background(self._keep_routes(), name="labhub-routes")
        if reconcile:  # (the CLI's hubs do not reconcile, and are no replicas)
            await self.reconciler.join()
            self.reconciler.start()

    async def runtime(self, name: str, progress: Callable[[str], None]) -> Path:
        """The built runtime ``name`` (built now if it is not yet: minutes; lines go to ``progress``).
        Raises ``LookupError`` for a runtime LabHub does not know, ``RuntimeBuildError`` if the build fails."""
        from labhub import runtimes  # a job's first start, not the hub's

        known = runtimes.BUILTIN.get(name)
        if known is None:
            raise LookupError(f"no runtime named {name!r} (known: {', '.join(sorted(runtimes.BUILTIN))})")
        root = self.settings.runtimes_dir
        assert root is not None
        if runtimes.is_built(root, known):
            return runtimes.location(root, known)
        return await runtimes.build(root, known, progress=progress)

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
        if self._listener is not None:
            await self._listener.close()
        for backend in self.backends.values():
            await backend.close()
        await self.engine.dispose()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        """A short transaction (changes recorded in it are announced when it commits)."""
        async with self.sessions() as session, session.begin():
            yield session

    # -- changes: this replica's commits, and other replicas' notifications ---------------
    def _session_class(self) -> type[Session]:
        """Sessions whose commits announce what they changed (:mod:`labhub.services.changes`)."""
        hub = self

        class HubSession(Session):
            pass

        @event.listens_for(HubSession, "before_commit")
        def _send(session: Session) -> None:
            if hub.shared:
                session.flush()  # commit flushes after this hook: what the flush records must be sent too
            recorded = session.info.get(changes.KEY)
            if hub.shared and recorded:  # delivered with the commit, to every replica
                notify.send(session, changes.encode(recorded, hub.replica))

        @event.listens_for(HubSession, "before_flush")
        def _credentials(session: Session, _context: object, _instances: object) -> None:
            """A user disabled, demoted or deleted, a token or login ended: on every replica,
            whichever part of the hub (or the CLI) made the change, cached principals go."""
            for obj in session.deleted:
                if isinstance(obj, User):
                    changes.credentials(session, obj.id)  # type: ignore[arg-type]
                elif isinstance(obj, CREDENTIALS):
                    changes.credentials(session, obj.user_id)  # type: ignore[arg-type]
            for obj in session.dirty:
                if isinstance(obj, User) and any(
                        inspect(obj).attrs[name].history.has_changes() for name in ("status", "role", "password_hash")):
                    changes.credentials(session, obj.id)  # type: ignore[arg-type]
            # a group's members changed: instances shared with groups have new audiences, on every replica
            if any(isinstance(obj, Membership) for obj in session.new) or any(
                    isinstance(obj, Membership | Group) for obj in session.deleted):
                changes.memberships(session)  # type: ignore[arg-type]

        @event.listens_for(HubSession, "do_orm_execute")
        def _bulk_credentials(state: ORMExecuteState) -> None:
            mapper = state.bind_mapper
            if (state.is_delete or state.is_update) and mapper is not None and mapper.class_ in (User, ApiToken,
                                                                                               LoginSession):
                changes.credentials(state.session)  # type: ignore[arg-type]  # whose: not known here
            if (state.is_delete or state.is_update) and mapper is not None and mapper.class_ in (Membership, Group):
                changes.memberships(state.session)  # type: ignore[arg-type]

        @event.listens_for(HubSession, "after_commit")
        def _committed(session: Session) -> None:
            recorded = changes.take(session)  # type: ignore[arg-type]
            if recorded is not None:
                hub._apply(recorded, remote=False)

        @event.listens_for(HubSession, "after_rollback")
        def _rolled_back(session: Session) -> None:
            changes.take(session)  # type: ignore[arg-type]

        return HubSession

    def _notified(self, payload: str) -> None:
        decoded = changes.decode(payload)
        if decoded is not None and decoded[0] != self.replica:
            self._apply(decoded[1], remote=True)

    def _connected(self, first: bool) -> None:
        """The notification connection is (back) up: what was missed meanwhile is read again."""
        if first:
            return
        log.info("notifications resumed: reloading routes, credentials and event streams")
        self.background(self.reload_routes(), name="labhub-reload-routes")
        self.credentials_changed(announce=False)
        self.bus.publish_all()
        self.reconciler.wake_all()

    def _apply(self, recorded: changes.Changes, *, remote: bool) -> None:
        """Act on a committed change in this replica (no I/O here: it runs in commit hooks)."""
        for instance_id, owner_id in recorded.instances.items():
            self.bus.publish(instance_id, owner_id)
        if remote and recorded.instances:
            # another replica moved them: the proxy's routes follow (this replica's own moves
            # update the table as they happen)
            self._stale_routes.update(recorded.instances)
            self._routes_dirty.set()
        if recorded.wake:
            for instance_id in recorded.instances:
                self.reconciler.wake(instance_id)
        if recorded.users or recorded.everyone:
            self._forget_credentials(recorded.users, everyone=recorded.everyone)
        if recorded.deletions:
            self.reconciler.wake_deletions()
        if recorded.memberships:  # here and on other replicas: the proxy's audiences follow, just after
            self._audiences_stale = True
            self._routes_dirty.set()

    async def _keep_routes(self) -> None:
        """Refresh the routes of instances other replicas changed, one batch at a time, in order."""
        while True:
            await self._routes_dirty.wait()
            self._routes_dirty.clear()
            ids, self._stale_routes = self._stale_routes, set()
            audiences, self._audiences_stale = self._audiences_stale, False
            try:
                if audiences:
                    await self.refresh_audiences()
                if ids:
                    await self.refresh_routes(ids)
            except Exception:
                log.exception("refreshing routes failed; reloading them all")
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await self.reload_routes()

    async def refresh_routes(self, instance_ids: set[str]) -> None:
        """Make the routes of ``instance_ids`` what the database says (running: a route; else none),
        and who besides their owners may use them (shares, ``open_to``)."""
        found: dict[str, Route | None] = dict.fromkeys(instance_ids)
        async with self._audience_lock, self.sessions() as session:
            for chunk in _chunks(sorted(instance_ids), 500):
                rows = await session.execute(select(Instance).where(Instance.id.in_(chunk)))
                for inst in rows.scalars():
                    found[inst.id] = self.route_for(inst) if inst.status in ROUTED_OR_ASLEEP else None
            audiences = await shares.audience(session, instance_ids, open_allowed=self.subdomains)
            self.routes.set_audience(audiences, instance_ids=set(instance_ids))
        for instance_id, route in found.items():
            self._set_route(instance_id, route)

    async def reload_routes(self) -> None:
        """Every route from the database: added for running instances, dropped for the rest."""
        async with self._audience_lock, self.sessions() as session:
            wanted = {inst.id: self.route_for(inst) for inst in await self.running_instances(session)}
            self.routes.set_audience(await shares.audience(session, open_allowed=self.subdomains))
        for route in self.routes.all():
            if route.instance_id not in wanted:
                self.routes.remove_instance(route.instance_id)
        for instance_id, route in wanted.items():
            self._set_route(instance_id, route)

    async def refresh_audiences(self) -> None:
        """Who may use each instance besides its owner, read again for all (a group's members changed)."""
        async with self._audience_lock, self.sessions() as session:
            self.routes.set_audience(await shares.audience(session, open_allowed=self.subdomains))

    def _set_route(self, instance_id: str, route: Route | None) -> None:
        current = next((r for r in self.routes.all() if r.instance_id == instance_id), None) \
            if route is None else self.routes.get(route.owner, route.name)
        if route is None:
            if current is not None:
                self.routes.remove_instance(instance_id)
            return
        if current is not None and current.instance_id == instance_id and current.upstream_key == route.upstream_key \
                and current.asleep == route.asleep:
            current.public = route.public  # otherwise unchanged: keep its activity count
            return
        try:
            self.routes.add(route)
        except ValueError as exc:
            log.error("route for instance %s refused: %s", instance_id, exc)

    # -- secrets ---------------------------------------------------------------
    def instance_token(self, instance_id: str) -> str:
        """The instance's upstream secret: derived, never stored."""
        return security.derive(self.secret_key, "instance-token", instance_id)

    def home_for(self, username: str) -> Path:
        return self.settings.data_dir / "homes" / username

    # -- where instances are served ----------------------------------------------
    @property
    def subdomains(self) -> bool:
        return self.settings.origins == "subdomain"

    def base_path(self, owner: str, name: str) -> str:
        """The path an instance is served under on its origin: ``/`` on an origin of its own."""
        return "/" if self.subdomains else f"/user/{owner}/{name}/"

    def instance_url(self, instance: Instance) -> str:
        """Where browsers and API clients reach ``instance`` (absolute)."""
        owner = instance.owner.name
        if not self.subdomains:
            return f"{self.public_url}/user/{owner}/{instance.name}/"
        return self.origin_url(origins.label_for(owner=owner, name=instance.name, instance_id=instance.id))

    def origin_url(self, label: str) -> str:
        """``scheme://<label>.<apps domain>[:port]/``: the hub's scheme and port, the instance's host."""
        parts = urlsplit(self.public_url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{label}.{self.settings.apps_domain}{port}/"

    # -- routes ----------------------------------------------------------------
    def route_for(self, instance: Instance) -> Route | None:
        """The proxy's route to a running instance (``upstream`` is ``http://host:port`` or ``unix:/path``),
        or to a sleeping service (``asleep``: the proxy wakes it)."""
        asleep = instance.status == Status.SLEEPING
        if not instance.upstream and not asleep:
            return None
        socket = None
        host, port = "", 0
        if asleep:
            pass
        elif instance.upstream.startswith("unix:"):
            socket = instance.upstream.removeprefix("unix:")
        else:
            host, _, port_text = instance.upstream.removeprefix("http://").rpartition(":")
            port = int(port_text)
        owner = instance.owner.name
        return Route(
            instance_id=instance.id, owner_id=instance.owner_id, owner=owner,
            name=instance.name, host=host, port=port, token=self.instance_token(instance.id),
            last_activity=instance.last_activity_at.timestamp() if instance.last_activity_at else 0.0,
            label=origins.label_for(owner=owner, name=instance.name, instance_id=instance.id), socket=socket,
            kind=instance.kind, public=bool(instance.public), asleep=asleep,
        )

    async def wake(self, instance_id: str) -> Route | None:
        """Start a service scaled to zero (if it still sleeps) and wait, at most the configured wake
        timeout, for its live route; None if it did not start in time (or failed, or was stopped)."""
        live = self.routes.live_event(instance_id)
        try:
            async with self.tx() as session:
                inst = await session.get(Instance, instance_id)
                if inst is None or inst.status in TERMINAL or inst.status == Status.STOPPING:
                    return None
                if inst.status == Status.SLEEPING:
                    now = self.clock()
                    transition(session, inst, Status.REQUESTED, reason="woken",
                               message="woken by a request (it was scaled to zero)", now=now)
                    inst.last_activity_at = now  # the request that woke it is activity: no sleeping again at once
        except StaleDataError:
            pass  # another request (or replica) woke it first
        self.reconciler.wake(instance_id)
        try:
            await asyncio.wait_for(live.wait(), self.settings.services.wake_timeout_s)
        except TimeoutError:
            self.routes.forget_waiting(instance_id)
            return None
        route = next((r for r in self.routes.all() if r.instance_id == instance_id), None)
        return route if route is not None and not route.asleep else None

    # -- authentication (the proxy's slow path, and the API's) ----------------
    async def _lookup_principal(self, kind: str, secret: str) -> Principal | None:
        async with self.tx() as session:
            if kind == "session":
                user = await credentials.session_user(session, secret=secret)
                return None if user is None else Principal(user.id, user.name, user.is_admin, browser=True)
            if kind == "origin":
                access = await origins.principal(session, secret=secret, now=self.clock())
                if access is None:
                    return None
                user = access.user
                return Principal(user.id, user.name, user.is_admin, instance_id=access.instance_id)
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

    def credentials_changed(self, user_id: int | None = None, *, announce: bool = True) -> None:
        """A user's status, role or credentials changed (and committed): the next request must see it,
        on every replica.

        Drops the user's cached principals, and every negative entry (a pending
        user's session is cached as "nobody" until approved); other replicas
        are told to do the same.
        """
        self._forget_credentials({user_id} if user_id is not None else set(), everyone=True)
        if announce and self.shared:
            recorded = changes.Changes(users={user_id} if user_id is not None else set(), everyone=True)
            self.background(self._announce(recorded), name="labhub-announce")

    def _forget_credentials(self, user_ids: set[int], *, everyone: bool) -> None:
        for user_id in user_ids:
            self.auth.invalidate_user(user_id)
        if everyone:
            self.auth.clear()
        self._pending.clear()

    async def _announce(self, recorded: changes.Changes) -> None:
        """Tell the other replicas about a change already committed (outside its transaction)."""
        async with self.sessions() as session, session.begin():
            await session.run_sync(notify.send, changes.encode(recorded, self.replica))

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
        rows = await session.execute(select(Instance).where(Instance.status.in_([s.value for s in ROUTED_OR_ASLEEP])))
        return list(rows.scalars())



CREDENTIALS = (ApiToken, LoginSession, OriginGrant)  # rows whose deletion ends someone's access


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
