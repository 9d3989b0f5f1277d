"""Where a request goes and who may send it: the routing and access half of :class:`~labhub.proxy.http.ClientProtocol`.

Per request, on the hot path: pick the target from ``Host`` (an instance's own
origin, subdomain mode) or the ``/user/<owner>/<name>/`` path (path mode),
else the hub; authenticate the caller from the authenticator's cache (a bearer
token, the origin's own cookie, or in path mode the hub's session cookie);
refuse what another origin's page may not do with a cookie; and believe
``X-Forwarded-*`` only from trusted proxies.  Nothing here does I/O itself:
the connection half (:mod:`labhub.proxy.http`) forwards or answers.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_to_bytes

from . import responses
from .exchange import Exchange, cookie_values
from .routes import FULL, INFER, NONE, OPEN_TO_ANYONE, inference_request

if TYPE_CHECKING:  # pragma: no cover
    from .routes import Principal, Route
    from .server import ProxyServer

log = logging.getLogger("labhub.proxy")

_NAVIGATION = (b"GET", b"HEAD")
_SAFE = (b"GET", b"HEAD", b"OPTIONS")
_wall = time.time


class Access:
    """Mixed into the client protocol, which provides the connection state and
    ``_respond``/``_head``/``_forward``."""

    s: ProxyServer
    task: asyncio.Task[None] | None
    closed: bool
    active: Exchange | None
    trusted: bool
    peer: bytes

    def _start(self, ex: Exchange) -> None:
        s = self.s
        if ex.method == b"CONNECT":
            self._respond(ex, 405, "method not allowed")
            return
        if self.trusted:
            self._forwarded(ex)
        suffix = s.apps_suffix
        if suffix is not None:  # subdomain mode: instances on origins of their own, routed by Host
            host = ex.host
            if host is not None:
                h = host.lower()
                i = h.rfind(b":")
                if i >= 0 and h[i + 1:].isdigit():
                    h = h[:i]
                if h[-1:] == b".":
                    h = h[:-1]
                if h.endswith(suffix):
                    label = h[:-len(suffix)]
                    if label and b"." not in label:
                        self._start_origin(ex, label)
                    else:
                        self._respond(ex, 404, "no such instance")
                    return
                if h == s.apps_domain:
                    # the instances' parent domain is never the hub's
                    self._respond(ex, 302, location=s.hub_url + b"/")
                    return
            ex.key = s.hub_key
            ex.head = self._head(ex, None)
            self._forward(ex)
            return
        route = None
        url = ex.url
        if url.startswith(b"/user/"):
            parts = url.split(b"/", 4)
            if len(parts) == 5:
                owner = parts[2]
                name = parts[3]
                if owner and name and b"?" not in owner and b"?" not in name:
                    if b"%" in owner:
                        owner = unquote_to_bytes(owner)
                    if b"%" in name:
                        name = unquote_to_bytes(name)
                    route = s.routes.get(owner.decode("utf-8", "replace"),
                                         name.decode("utf-8", "replace"))
        if route is None:
            ex.key = s.hub_key
            ex.head = self._head(ex, None)
            self._forward(ex)
            return
        self._check(ex, route, s.cookie_name_eq, "session")

    def _start_origin(self, ex: Exchange, label: bytes) -> None:
        """A request on an instance's own origin (``label`` is its host's first label)."""
        s = self.s
        route = s.routes.by_label(label)
        if route is None or ex.url.startswith(b"/_labhub/"):
            # Granting access (the single-use code) and "not running" are the hub's: it
            # answers for this origin only what the X-LabHub-Origin header names.
            ex.origin_label = label
            ex.key = s.hub_key
            ex.head = self._head(ex, None)
            self._forward(ex)
            return
        ex.on_origin = True
        self._check(ex, route, s.origin_cookie_eq, "origin")

    def _check(self, ex: Exchange, route: Route, cookie_eq: bytes, cookie_kind: str) -> None:
        """Authenticate the caller of ``route`` from a bearer token or the cookie named by ``cookie_eq``."""
        s = self.s
        ex.route = route
        kind = secret = None
        a = ex.authz
        if a is not None:
            sp = a.find(b" ")
            if sp > 0:
                scheme = a[:sp].lower()
                if scheme == b"bearer" or scheme == b"token":
                    tok = a[sp + 1:].strip()
                    if tok:
                        kind, secret = "token", tok.decode("latin-1")
                        # JupyterLab's pages send back the instance's own token: it is the
                        # upstream's credential, not ours, so the caller is known by the cookie.
                        if hmac.compare_digest(tok, route.token.encode()):
                            kind = secret = None
        if secret is None and ex.cookie is not None:
            values = cookie_values(ex.cookie, cookie_eq)
            if values:
                kind = cookie_kind
                if len(values) > 1:
                    # Several cookies of that name (one tossed in from a sibling origin):
                    # whichever the authenticator knows for this route decides.
                    self.task = asyncio.get_running_loop().create_task(
                        self._authenticate(ex, route, kind, [v.decode("latin-1") for v in values]))
                    return
                secret = values[0].decode("latin-1")
        if secret is None:
            self._authorized(ex, route, None)
            return
        hit, principal = s.auth.cached(kind, secret)  # type: ignore[arg-type]
        if hit:
            self._authorized(ex, route, principal)
        else:
            self.task = asyncio.get_running_loop().create_task(
                self._authenticate(ex, route, kind, [secret]))  # type: ignore[arg-type]

    def _forwarded(self, ex: Exchange) -> None:
        """From a trusted reverse proxy: the client is the last address it did not add itself."""
        s = self.s
        client = self.peer
        if ex.xff is not None:
            for item in reversed(ex.xff.split(b",")):
                item = item.strip()
                if item:
                    client = item
                    if not s.trusts(item.decode("latin-1")):
                        break
        proto = ex.xfp.strip().lower() if ex.xfp is not None else s.scheme
        if proto not in (b"http", b"https"):
            proto = s.scheme
        ex.client = client
        ex.proto = proto
        ex.fwd = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (client, proto)

    async def _authenticate(self, ex: Exchange, route: Route, kind: str, secrets: list[str]) -> None:
        """The slow path: ask the authenticator; of several cookies of one name, the first that may use ``route``."""
        found = None
        try:
            for secret in secrets[:8]:
                principal = await self.s.auth.authenticate(kind, secret)
                if principal is not None and (len(secrets) == 1 or principal.may_use(route)):
                    found = principal
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("authentication lookup failed")
            self.task = None
            if not self.closed and ex is self.active:
                self._respond(ex, 503, "authentication is unavailable, try again")
            return
        self.task = None
        if not self.closed and ex is self.active:
            self._authorized(ex, route, found)

    def _authorized(self, ex: Exchange, route: Route, principal: Principal | None) -> None:
        s = self.s
        if principal is None:  # anonymous: what anyone may (a workspace an admin opened to anyone)
            level = FULL if route.open_to == OPEN_TO_ANYONE else NONE
        else:
            level = principal.access(route)
        if level == FULL and principal is not None and (principal.instance_id is not None or principal.browser) \
                and not self._same_origin(ex):
            # another origin's page: it may use what anyone may, and no more
            level = FULL if route.open_to == OPEN_TO_ANYONE else NONE
            if level == NONE and not route.public:
                self._respond(ex, 403, "cross-origin request refused")
                return
        if level != FULL and route.kind == "service" and (level == INFER or route.public):
            if inference_request(ex.method, self._service_path(ex, route)):
                if level == NONE:  # public: anyone, within the rate limit
                    wait = s.public_limit.take((route.instance_id, ex.client or self.peer))
                    if wait:
                        self._respond(ex, 429, "too many requests to this public service", json_only=True,
                                      extra=b"Retry-After: %d\r\n" % max(1, int(wait + 0.999)))
                        return
                level = INFER
            elif level == INFER:
                self._respond(ex, 403, "an infer token calls the service's inference routes only", json_only=True)
                return
        if level == NONE:
            self._refuse(ex, route, principal)
            return
        route.last_activity = _wall()
        if route.asleep:
            self.task = asyncio.get_running_loop().create_task(self._wake(ex, route))
            return
        ex.key = route.upstream_key
        ex.head = self._head(ex, route)
        self._forward(ex)

    def _refuse(self, ex: Exchange, route: Route, principal: Principal | None) -> None:
        s = self.s
        if principal is None:
            if ex.method in _NAVIGATION and responses.wants_html(ex.accept):
                if ex.on_origin:  # the hub grants access to this origin, then sends the browser back
                    loc = b"%s/user/%s/%s%s" % (s.hub_url, quote(route.owner).encode(),
                                                quote(route.name).encode(), ex.url)
                else:
                    loc = b"%s?next=%s" % (s.login_path_b, quote(ex.url, safe="").encode())
                self._respond(ex, 302, location=loc)
            else:
                self._respond(ex, 401, "authentication required", json_only=True,
                              extra=b"WWW-Authenticate: Bearer\r\n")
        elif principal.browser and principal.is_admin and principal.user_id != route.owner_id:
            self._respond(ex, 403, "instances share the hub's origin here (path mode), so admins open other "
                                   "users' instances with an API token, not in the browser")
        elif principal.browser and principal.user_id in route.shared_with:
            self._respond(ex, 403, "instances share the hub's origin here (path mode), so an instance shared with "
                                   "you opens with an API token, not in the browser")
        elif principal.scopes == frozenset({"infer"}) and principal.user_id == route.owner_id:
            self._respond(ex, 403, "an infer token calls services only", json_only=True)
        else:
            self._respond(ex, 403, "not your instance")

    @staticmethod
    def _service_path(ex: Exchange, route: Route) -> bytes:
        """The request's path as the service sees it (on its own origin, or under its prefix)."""
        if ex.on_origin:
            return ex.url
        return ex.url[len(route.prefix) - 1:]

    async def _wake(self, ex: Exchange, route: Route) -> None:
        """``route`` is a service scaled to zero: have the hub start it, hold the request until it
        answers (bounded by the hub's wake timeout), then forward it; 503 with Retry-After if not."""
        live = None
        try:
            if self.s.wake is not None:
                live = await self.s.wake(route.instance_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("waking instance %s failed", route.instance_id)
        self.task = None
        if self.closed or ex is not self.active:
            return
        if live is None or live.asleep:
            self._respond(ex, 503, "the service is starting (it was scaled to zero); try again shortly",
                          json_only=True, extra=b"Retry-After: %d\r\n" % self.s.wake_retry_after)
            return
        live.last_activity = _wall()
        ex.route = live
        ex.key = live.upstream_key
        ex.head = self._head(ex, live)
        self._forward(ex)

    def _same_origin(self, ex: Exchange) -> bool:
        """Whether a cookie-authenticated request may come from where the browser says it does.

        Writes and WebSocket handshakes must carry no ``Origin`` or this origin's
        own; other origins' pages (sibling instances share a site) may link here
        (top-level navigations) but not fetch, embed or post.
        """
        if ex.upgrade or ex.method not in _SAFE:
            o = ex.origin
            if o is not None and (ex.host is None or o != b"%s://%s" % (ex.proto or self.s.scheme, ex.host)):
                return False
        sfs = ex.sfs
        if sfs is not None and sfs != b"same-origin" and sfs != b"none" and ex.sfm != b"navigate":
            return False
        return True
