"""The proxy's view of the world: a route table and an authenticator.

The data plane (``labhub.proxy.server``) knows nothing of the database.  The
hub fills a :class:`RouteTable` as instances become reachable and gives the
proxy an :class:`Authenticator` that turns a session cookie or bearer token
into a :class:`Principal`.  Both are kept to a dictionary lookup per request:
that is what makes the proxy fast.  A production deployment could put another
data plane in front by implementing the same two interfaces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

#: token scopes that may use instances
USE_SCOPES = frozenset({"*", "instances", "admin"})
#: the token scope that may only call services' inference routes (:func:`inference_request`)
INFER_SCOPE = "infer"

# How much of a route a caller may use (:meth:`Principal.access`).
NONE, INFER, FULL = 0, 1, 2
# Who besides its owner, admins and those it is shared with may use a workspace (``Route.open_to``):
OPEN_TO_USERS = "users"  # every active user (a token that may use instances, or the origin's cookie)
OPEN_TO_ANYONE = "anyone"  # anyone at all, without logging in
_INFER_METHODS = (b"GET", b"HEAD", b"POST")


def inference_request(method: bytes, path: bytes) -> bool:
    """Whether ``method path`` (the path on the service's origin, query included) is one of the
    inference protocols' routes: what an ``infer`` token or, on a public service, anyone may ask.

    Open Inference Protocol v2 and TF-Serving's v1 (reads and calls, not ``/v2/repository``'s model
    loading), TFaaS's ``GET /models`` and ``POST /json``.  Not uploads, deletions, the default
    version's switch or ``/metrics``: those are the owner's.
    """
    if method not in _INFER_METHODS:
        return False
    q = path.find(b"?")
    if q >= 0:
        path = path[:q]
    if b"%" in path or b"/." in path or b"//" in path:  # nothing a plain client sends; no way around the list
        return False
    if path.startswith(b"/v2/"):
        return not path.startswith(b"/v2/repository")
    if path.startswith(b"/v1/models/") or path == b"/v2":
        return True
    if path == b"/models":
        return method != b"POST"
    return path == b"/json" and method == b"POST"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``instance_id`` is set for an instance origin's own cookie: it opens that one
    instance and nothing else.  ``browser`` marks the hub's session cookie: in
    path mode (instances on the hub's origin) it opens only the caller's own
    instances, so that an admin's browser never runs another user's pages with
    the admin's session.
    """

    user_id: int
    username: str
    is_admin: bool
    scopes: frozenset[str] = frozenset({"*"})
    instance_id: str | None = None
    browser: bool = False

    def may_use(self, route: Route) -> bool:
        """Whether this caller may use ``route`` at all (:meth:`access` is not NONE)."""
        return self.access(route) != NONE

    def access(self, route: Route) -> int:
        """FULL for the owner or an admin (not through the browser on the hub's origin) with an
        instance-using scope; INFER for the owner's ``infer``-scoped token on a service (its
        inference routes only).  FULL too for a user the route is shared with or, when it is open
        to every user, anyone's: by a token with an instance-using scope or the origin's cookie,
        never by the hub's session on the hub's origin (path mode).  What anyone may (a route open
        to anyone) every caller may.  Else NONE.

        An origin's cookie opens its one instance, while its user is still the owner, an admin,
        shared with, or the instance is open: a revoked share ends at once, whatever is cached.
        """
        if self.instance_id is not None:
            if self.instance_id != route.instance_id:
                return FULL if route.open_to == OPEN_TO_ANYONE else NONE
            if self.user_id == route.owner_id or self.is_admin or route.open_to or self.user_id in route.shared_with:
                return FULL
            return NONE
        mine = self.user_id == route.owner_id
        if mine or (self.is_admin and not self.browser):
            if self.scopes & USE_SCOPES:
                return FULL
            if mine and route.kind == "service" and INFER_SCOPE in self.scopes:
                return INFER
        elif not self.browser and (route.open_to or self.user_id in route.shared_with) and self.scopes & USE_SCOPES:
            return FULL
        return FULL if route.open_to == OPEN_TO_ANYONE else NONE


@dataclass(slots=True)
class Route:
    """Where one running instance's requests go upstream.

    ``label`` is the first DNS label of the instance's own origin
    (``<label>.<apps domain>``); ``socket`` a Unix socket path when the instance
    listens on one (then ``host``/``port`` are unused).  A service may be
    ``public`` (its inference routes open to anyone, rate-limited) and
    ``asleep`` (scaled to zero: no upstream until the proxy wakes it).
    ``shared_with`` (user ids, groups resolved to their members) and ``open_to``
    (:data:`OPEN_TO_USERS`, :data:`OPEN_TO_ANYONE` or "") say who else may use
    it; the :class:`RouteTable` sets them from what the hub last told it.
    """

    instance_id: str
    owner_id: int
    owner: str
    name: str
    host: str
    port: int
    token: str  # the instance's own secret, injected upstream
    last_activity: float = field(default=0.0)  # time.time() of last request
    label: str = ""
    socket: str | None = None
    kind: str = "workspace"
    public: bool = False
    asleep: bool = False
    shared_with: frozenset[int] = frozenset()
    open_to: str = ""

    @property
    def prefix(self) -> str:
        return f"/user/{self.owner}/{self.name}/"

    @property
    def upstream_key(self) -> str | tuple[str, int]:
        """What the proxy connects to: a Unix socket path or ``(host, port)``."""
        return self.socket if self.socket is not None else (self.host, self.port)


@dataclass(frozen=True, slots=True)
class Audience:
    """Who may use an instance besides its owner and admins: user ids it is shared with, and ``open_to``."""

    users: frozenset[int] = frozenset()
    open_to: str = ""


class RouteTable:
    """Instance routes keyed by ``(owner, name)`` and by origin label; safe to use from one event loop.

    The table also holds each instance's :class:`Audience` (:meth:`set_audience`) and stamps it on
    every route it is given: a route built before a share was revoked and added after it cannot
    bring the old list back.
    """

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Route] = {}
        self._labels: dict[bytes, Route] = {}
        self._waiting: dict[str, asyncio.Event] = {}  # instance id -> set when it has a live route
        self._audiences: dict[str, Audience] = {}  # instance id -> who else may use it (absent: nobody)

    def add(self, route: Route) -> None:
        """Add or replace the route of ``(owner, name)``.

        Raises ValueError if its label is another instance's: labels are
        injective by construction, and a second owner must never take one over.
        """
        key = route.label.encode()
        holder = self._labels.get(key) if key else None
        if holder is not None and (holder.owner, holder.name) != (route.owner, route.name):
            raise ValueError(f"origin label {route.label!r} already belongs to {holder.owner}/{holder.name}")
        old = self._routes.get((route.owner, route.name))
        if old is not None and old.label:
            self._labels.pop(old.label.encode(), None)
        audience = self._audiences.get(route.instance_id)
        if audience is not None:  # (the hub's routes come without one: only the table's counts)
            route.shared_with, route.open_to = audience.users, audience.open_to
        self._routes[(route.owner, route.name)] = route
        if key:
            self._labels[key] = route
        if self._waiting and not route.asleep:
            waiting = self._waiting.pop(route.instance_id, None)
            if waiting is not None:
                waiting.set()

    def set_audience(self, audiences: dict[str, Audience], *, instance_ids: set[str] | None = None) -> None:
        """Who may use instances besides their owners and admins, for the routes there are and those added
        later: for ``instance_ids`` (one absent from ``audiences``: nobody else), or for every instance (None)."""
        if instance_ids is None:
            self._audiences = {k: v for k, v in audiences.items() if v.users or v.open_to}
        else:
            for instance_id in instance_ids:
                audience = audiences.get(instance_id)
                if audience is not None and (audience.users or audience.open_to):
                    self._audiences[instance_id] = audience
                else:
                    self._audiences.pop(instance_id, None)
        for route in self._routes.values():
            if instance_ids is None or route.instance_id in instance_ids:
                audience = self._audiences.get(route.instance_id, _NOBODY)
                route.shared_with, route.open_to = audience.users, audience.open_to

    def audience(self, instance_id: str) -> Audience:
        """What :meth:`set_audience` last said of ``instance_id``."""
        return self._audiences.get(instance_id, _NOBODY)

    def live_event(self, instance_id: str) -> asyncio.Event:
        """An event set when a live (not asleep) route of ``instance_id`` is added; shared by all who wait."""
        return self._waiting.setdefault(instance_id, asyncio.Event())

    def forget_waiting(self, instance_id: str) -> None:
        """Nobody waits for ``instance_id`` any more (it failed or timed out)."""
        self._waiting.pop(instance_id, None)

    def remove(self, owner: str, name: str) -> Route | None:
        route = self._routes.pop((owner, name), None)
        if route is not None and route.label:
            self._labels.pop(route.label.encode(), None)
        return route

    def remove_instance(self, instance_id: str) -> None:
        for key, route in list(self._routes.items()):
            if route.instance_id == instance_id:
                self.remove(*key)

    def get(self, owner: str, name: str) -> Route | None:
        return self._routes.get((owner, name))

    def by_label(self, label: bytes) -> Route | None:
        """The route of the instance whose origin starts with ``label`` (lower-case bytes)."""
        return self._labels.get(label)

    def all(self) -> list[Route]:
        return list(self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)


_NOBODY = Audience()

Lookup = Callable[[str, str], Awaitable[Principal | None]]
"""``lookup(kind, secret)`` with kind ``"session"``, ``"token"`` or ``"origin"``: the slow path."""


class Authenticator:
    """Caches ``secret -> Principal`` in front of a slow lookup (the database).

    Entries live ``ttl`` seconds; the hub calls :meth:`invalidate_user` on
    logout, revocation and role changes so those take effect at once.
    Negative results are cached briefly too, so a flood of bad tokens cannot
    turn into a flood of database queries.
    """

    def __init__(self, lookup: Lookup, *, ttl: float = 60.0, negative_ttl: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 100_000) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._max = max_entries
        self._cache: dict[tuple[str, str], tuple[float, Principal | None]] = {}

    def cached(self, kind: str, secret: str) -> tuple[bool, Principal | None]:
        """Fast path: ``(hit, principal)`` without awaiting."""
        entry = self._cache.get((kind, secret))
        if entry is None or entry[0] < self._clock():
            return False, None
        return True, entry[1]

    async def authenticate(self, kind: str, secret: str) -> Principal | None:
        hit, principal = self.cached(kind, secret)
        if hit:
            return principal
        principal = await self._lookup(kind, secret)
        if len(self._cache) >= self._max:
            self._cache.clear()
        ttl = self._ttl if principal is not None else self._negative_ttl
        self._cache[(kind, secret)] = (self._clock() + ttl, principal)
        return principal

    def invalidate_user(self, user_id: int) -> None:
        for key, (_, principal) in list(self._cache.items()):
            if principal is not None and principal.user_id == user_id:
                del self._cache[key]

    def invalidate(self, kind: str, secret: str) -> None:
        self._cache.pop((kind, secret), None)

    def clear(self) -> None:
        self._cache.clear()
