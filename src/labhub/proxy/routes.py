"""The proxy's view of the world: a route table and an authenticator.

The data plane (``labhub.proxy.server``) knows nothing of the database.  The
hub fills a :class:`RouteTable` as instances become reachable and gives the
proxy an :class:`Authenticator` that turns a session cookie or bearer token
into a :class:`Principal`.  Both are kept to a dictionary lookup per request:
that is what makes the proxy fast.  A production deployment could put another
data plane in front by implementing the same two interfaces.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    user_id: int
    username: str
    is_admin: bool
    scopes: frozenset[str] = frozenset({"*"})

    def may_use(self, route: Route) -> bool:
        """Owner or admin; the token must carry an instance-using scope."""
        if not (self.scopes & {"*", "instances", "admin"}):
            return False
        return self.user_id == route.owner_id or self.is_admin


@dataclass(slots=True)
class Route:
    """Where ``/user/{owner}/{name}/`` goes upstream."""

    instance_id: str
    owner_id: int
    owner: str
    name: str
    host: str
    port: int
    token: str  # the instance's own secret, injected upstream
    last_activity: float = field(default=0.0)  # time.time() of last request

    @property
    def prefix(self) -> str:
        return f"/user/{self.owner}/{self.name}/"


class RouteTable:
    """Instance routes keyed by ``(owner, name)``; safe to use from one event loop."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Route] = {}

    def add(self, route: Route) -> None:
        self._routes[(route.owner, route.name)] = route

    def remove(self, owner: str, name: str) -> Route | None:
        return self._routes.pop((owner, name), None)

    def remove_instance(self, instance_id: str) -> None:
        for key, route in list(self._routes.items()):
            if route.instance_id == instance_id:
                del self._routes[key]

    def get(self, owner: str, name: str) -> Route | None:
        return self._routes.get((owner, name))

    def all(self) -> list[Route]:
        return list(self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)


Lookup = Callable[[str, str], Awaitable[Principal | None]]
"""``lookup(kind, secret)`` with kind ``"session"`` or ``"token"``: the slow path."""


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
