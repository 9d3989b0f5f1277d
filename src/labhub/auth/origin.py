"""What the hub answers on an instance's own origin: the access grant, and "not running".

The proxy sends an instance origin's requests to the instance, except two
kinds it passes to the hub app with ``X-LabHub-Origin: <label>`` (a header it
strips from clients, so only the proxy can set it):

* ``/_labhub/auth?code=...&next=...``: the browser arrives from the hub with a
  single-use code (see :mod:`labhub.services.origins`); it is redeemed for the
  origin's own cookie, and the browser goes on to ``next`` on this origin;
* anything, while the instance has no route (starting, stopped, unknown):
  browsers are sent to the hub's page for the instance, others get a status.

Nothing else of the hub is ever served on an instance origin: this gate
answers every such request itself and never calls the app behind it.
"""

from __future__ import annotations

import html
import urllib.parse
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from labhub.models import ACTIVE, ROUTED, Status
from labhub.services import origins

if TYPE_CHECKING:
    from labhub.hub import Hub
    from labhub.proxy.routes import Principal

ORIGIN_HEADER = b"x-labhub-origin"
AUTH_PATH = "/_labhub/auth"
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}


def _label(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == ORIGIN_HEADER:
            return value.decode("latin-1")
    return None


def safe_path(target: str | None) -> str:
    """A path on this origin: no scheme, no host, no protocol-relative ``//``, no backslash."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 0x20 for c in target):
        return "/"
    return target


class InstanceOriginGate:
    """Answers the requests the proxy passes on from instance origins; everything else goes to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        label = _label(scope)
        if label is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self._answer(request, label)
        except Exception:  # never fall through to the app on an instance origin
            response = JSONResponse({"detail": "internal error"}, status_code=500, headers=NO_STORE)
            await response(scope, receive, send)
            raise
        await response(scope, receive, send)

    async def _answer(self, request: Request, label: str) -> Response:
        hub = request.app.state.hub
        if request.url.path == AUTH_PATH:
            return await self._grant(request, hub, label)
        if request.url.path.startswith("/_labhub/"):
            return JSONResponse({"detail": "not found"}, status_code=404, headers=NO_STORE)
        # No route: the instance is not (or no longer) running.  Browsers go to the hub's page for
        # it (which logs them in first if need be); API callers learn its status if they may see it.
        async with hub.tx() as session:
            inst = await origins.instance_for_label(session, label)
            found = None if inst is None else (inst.id, inst.owner_id, inst.owner.name, inst.name, inst.status)
            routable = inst is not None and ((inst.status in ROUTED and bool(inst.upstream))
                                             or inst.status == Status.SLEEPING)
        if routable and found is not None:
            # Running, says the database, but this replica has no route yet (the notification is
            # on its way, or was lost): take it from the database and send the client round again.
            await hub.refresh_routes({found[0]})
            if hub.routes.by_label(label.encode()) is not None:
                query = f"?{request.url.query}" if request.url.query else ""
                return Response(status_code=307, headers={**NO_STORE, "Location": request.url.path + query})
        if request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", ""):
            if found is None:
                return RedirectResponse(hub.public_url + "/", status_code=303, headers=NO_STORE)
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(_hub_page(hub, found[2], found[3]) + request.url.path + query,
                                    status_code=303, headers=NO_STORE)
        principal = await _caller(request, hub)
        if principal is None:
            return JSONResponse({"detail": "authentication required"}, status_code=401,
                                headers={**NO_STORE, "WWW-Authenticate": "Bearer"})
        if found is None:
            return JSONResponse({"detail": "no such instance"}, status_code=404, headers=NO_STORE)
        iid, owner_id, owner, name, status = found
        allowed = principal.instance_id == iid if principal.instance_id is not None else (
            principal.user_id == owner_id or principal.is_admin)
        if not allowed:
            return JSONResponse({"detail": "not your instance"}, status_code=403, headers=NO_STORE)
        headers = {**NO_STORE, "Retry-After": "2"} if status in ACTIVE else NO_STORE
        return JSONResponse({"detail": f"instance {owner}/{name} is {status}"}, status_code=503, headers=headers)

    async def _grant(self, request: Request, hub: Hub, label: str) -> Response:
        """Redeem the single-use code for this origin's cookie, then go on to ``next`` here."""
        async with hub.tx() as session:
            inst = await origins.instance_for_label(session, label)
            granted = None
            if inst is not None and request.method in ("GET", "HEAD"):
                granted = await origins.redeem(session, code=request.query_params.get("code", ""), instance=inst,
                                               now=hub.clock())
            back = _hub_page(hub, inst.owner.name, inst.name) + "/" if inst is not None else hub.public_url + "/"
        if granted is None:
            return _problem(request, 403, "This link has expired or was used already: open the instance "
                                          "from the hub again.", back)
        secret, expires = granted
        response = RedirectResponse(safe_path(request.query_params.get("next")), status_code=303, headers=NO_STORE)
        cookies = hub.cookies
        max_age = max(60, int((expires - hub.clock()).total_seconds()))
        response.set_cookie(cookies.origin, secret, max_age=max_age, path="/", httponly=True,
                            samesite="lax", secure=cookies.secure)
        return response


def _hub_page(hub: Hub, owner: str, name: str) -> str:
    return f"{hub.public_url}/user/{urllib.parse.quote(owner)}/{urllib.parse.quote(name)}"


async def _caller(request: Request, hub: Hub) -> Principal | None:
    """Who calls, by bearer token or this origin's own cookie."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "token") and token.strip():
        return await hub.auth.authenticate("token", token.strip())
    cookie = request.cookies.get(hub.cookies.origin)
    return await hub.auth.authenticate("origin", cookie) if cookie else None


def _problem(request: Request, status: int, message: str, link: str) -> Response:
    """A small self-contained page (no hub styles: this is the instance's origin)."""
    if "text/html" in request.headers.get("accept", ""):
        body = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>LabHub</title></head>'
                f'<body><p>{html.escape(message)}</p><p><a href="{html.escape(link)}">Go to LabHub</a></p>'
                f'</body></html>')
        return HTMLResponse(body, status_code=status, headers={
            **NO_STORE, "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"})
    return JSONResponse({"detail": message}, status_code=status, headers=NO_STORE)

