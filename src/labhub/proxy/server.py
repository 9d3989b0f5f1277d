"""The proxy data plane: LabHub's front door.

:class:`ProxyServer` listens for HTTP/1.1 clients, sends ``/user/{owner}/{name}/...``
to the instance in the :class:`~labhub.proxy.routes.RouteTable` (after checking
the caller with the :class:`~labhub.proxy.routes.Authenticator`) and everything
else to the hub app.  It is a lean asyncio protocol-level proxy (httptools
callbacks, ``transport.write``, pooled keep-alive upstream connections) because
that is what keeps it within reach of nginx; see ``/work/shared/PROXY-FACTS.md``.

The per-connection work lives in :mod:`labhub.proxy.http` (client side) and
:mod:`labhub.proxy.upstream` (upstream side); this module holds the
configuration, the listening socket, the upstream connection pool and the
idle-connection sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .http import ClientProtocol
from .limits import RateLimiter
from .routes import Authenticator, Route, RouteTable
from .upstream import UpstreamProtocol

__all__ = ["ProxyServer"]

log = logging.getLogger("labhub.proxy")

_now = time.monotonic


class ProxyServer:
    """Authenticating reverse proxy for instances, falling back to the hub app.

    ``hub_upstream`` is a unix socket path or a ``(host, port)`` pair.  The
    server runs in the caller's event loop (uvloop in production; any asyncio
    loop works).

    With ``apps_domain`` set (subdomain mode) every instance is served on its
    own origin, ``<label>.<apps_domain>``, routed by the ``Host`` header and
    authenticated by that origin's own cookie (``origin_cookie``) or a bearer
    token; ``/user/...`` on the hub's origin is then the hub's.  Without it
    (path mode) instances are served at ``/user/<owner>/<name>/`` on the hub's
    origin, authenticated by the hub's session cookie or a token.
    ``hub_url`` (``scheme://host[:port]``) is where browsers are sent to be
    granted access; :meth:`start` fills it in from the bound port if empty.
    ``trusted_proxies`` (addresses or networks) are reverse proxies whose
    ``X-Forwarded-For``/``-Proto`` are believed; from anyone else they are replaced.
    A request for a service scaled to zero (its route ``asleep``) waits for
    ``wake`` (the hub starting it), else is answered 503 with ``Retry-After``.
    """

    def __init__(self, *, routes: RouteTable, auth: Authenticator,
                 hub_upstream: str | tuple[str, int],
                 session_cookie: str = "labhub_session",
                 strip_cookies: tuple[str, ...] = ("labhub_session", "labhub_csrf", "labhub_origin"),
                 apps_domain: str | None = None,
                 origin_cookie: str = "labhub_origin",
                 hub_url: str = "",
                 trusted_proxies: Sequence[str] = (),
                 scheme: str = "http",
                 login_path: str = "/login",
                 max_header_bytes: int = 64 * 1024,
                 upstream_connect_timeout: float = 10.0,
                 idle_timeout: float = 300.0,
                 upstream_idle_timeout: float = 4.0,
                 max_idle_per_upstream: int = 64,
                 wake: Callable[[str], Awaitable[Route | None]] | None = None,
                 public_rate: float = 10.0, public_burst: float = 20.0,
                 wake_retry_after: int = 10) -> None:
        self.routes = routes
        #: ``wake(instance_id)``: start a service scaled to zero; its live route, or None if it did not start
        self.wake = wake
        self.wake_retry_after = wake_retry_after
        #: public services' requests per second per client address (and burst), beyond which 429
        self.public_limit = RateLimiter(public_rate, public_burst)
        self.auth = auth
        if isinstance(hub_upstream, str):
            self.hub_key: Any = hub_upstream
        else:
            host, port = hub_upstream
            self.hub_key = (host, int(port))
        self.session_cookie = session_cookie
        self.cookie_name_eq = session_cookie.encode() + b"="
        self.apps_domain = apps_domain.lower().encode() if apps_domain else b""
        self.apps_suffix: bytes | None = b"." + self.apps_domain if apps_domain else None
        self.origin_cookie_eq = origin_cookie.encode() + b"="
        self.hub_url = hub_url.rstrip("/").encode()
        self.scheme = scheme.encode()
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]
        self._trust_cache: dict[str, bool] = {}
        self.strip_cookies_b = tuple(n.encode() for n in strip_cookies)
        self.login_path = login_path
        self.login_path_b = login_path.encode()
        self.max_header_bytes = max_header_bytes
        self.upstream_connect_timeout = upstream_connect_timeout
        self.idle_timeout = idle_timeout
        #: pooled upstream connections idle longer than this are not reused
        #: (uvicorn closes idle keep-alive connections after 5 s by default)
        self.upstream_idle_timeout = upstream_idle_timeout
        self.max_idle_per_upstream = max_idle_per_upstream
        self._pool: dict[Any, list[UpstreamProtocol]] = {}
        self._clients: set[ClientProtocol] = set()
        self._upstreams: set[UpstreamProtocol] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._port = 0
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (``port`` 0 picks a free one); returns once bound."""
        if self._server is not None:
            raise RuntimeError("ProxyServer already started")
        loop = asyncio.get_running_loop()
        self._closing = False
        self._server = await loop.create_server(
            lambda: ClientProtocol(self), host, port, backlog=2048, reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]
        if not self.hub_url:
            shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104
            shown = f"[{shown}]" if ":" in shown else shown
            self.hub_url = f"{self.scheme.decode()}://{shown}:{self._port}".encode()
        self._sweeper = loop.create_task(self._sweep())
        log.info("proxy listening on %s:%s, hub at %s", host, self._port, self.hub_key)

    @property
    def port(self) -> int:
        return self._port

    def trusts(self, address: str) -> bool:
        """Whether ``address`` is one of the trusted reverse proxies."""
        if not self._trusted:
            return False
        known = self._trust_cache.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                known = False
            else:
                known = any(ip in net for net in self._trusted)
            if len(self._trust_cache) > 4096:
                self._trust_cache.clear()
            self._trust_cache[address] = known
        return known

    async def close(self) -> None:
        """Stop listening; close client and upstream connections."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for c in list(self._clients):
            c.transport.abort()
        for up in list(self._upstreams):
            up.transport.abort()
        self._pool.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5.0)
        await asyncio.sleep(0)

    # -- upstream pool --------------------------------------------------------------

    def pool_get(self, key: Any) -> UpstreamProtocol | None:
        lst = self._pool.get(key)
        if lst:
            limit = _now() - self.upstream_idle_timeout
            while lst:
                up = lst.pop()
                up.in_pool = False
                if up.closed:
                    continue
                if up.idle_since < limit:
                    up.transport.close()
                    continue
                return up
        return None

    def pool_put(self, up: UpstreamProtocol) -> None:
        if self._closing or up.closed:
            up.transport.close()
            return
        lst = self._pool.get(up.key)
        if lst is None:
            lst = self._pool[up.key] = []
        elif len(lst) >= self.max_idle_per_upstream:
            up.transport.close()
            return
        up.in_pool = True
        up.idle_since = _now()
        lst.append(up)

    def pool_remove(self, up: UpstreamProtocol) -> None:
        lst = self._pool.get(up.key)
        if lst:
            with contextlib.suppress(ValueError):
                lst.remove(up)

    async def connect(self, key: Any) -> UpstreamProtocol:
        """A new connection to ``key`` (a unix socket path or ``(host, port)``)."""
        loop = asyncio.get_running_loop()

        def factory() -> UpstreamProtocol:
            return UpstreamProtocol(self, key)

        if isinstance(key, str):
            coro = loop.create_unix_connection(factory, key)
        else:
            coro = loop.create_connection(factory, key[0], key[1])
        _, proto = await asyncio.wait_for(coro, self.upstream_connect_timeout)
        return proto

    # -- housekeeping ---------------------------------------------------------------

    async def _sweep(self) -> None:
        """Close idle keep-alive clients and stale pooled upstream connections."""
        interval = max(0.05, min(self.idle_timeout, self.upstream_idle_timeout, 20.0) / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                now = _now()
                client_limit = now - self.idle_timeout
                for c in list(self._clients):
                    if (c.active is None and c.tunnel is None and c.tunnel_buf is None
                            and 0.0 < c.idle_since < client_limit and not c.closed):
                        log.debug("closing idle client connection")
                        c.close_after = True
                        c.transport.close()
                up_limit = now - self.upstream_idle_timeout
                for key, lst in list(self._pool.items()):
                    stale = [up for up in lst if up.idle_since < up_limit]
                    for up in stale:
                        lst.remove(up)
                        up.in_pool = False
                        up.transport.close()
                    if not lst:
                        del self._pool[key]
            except Exception:  # pragma: no cover - never let housekeeping die
                log.exception("proxy sweeper failed")
