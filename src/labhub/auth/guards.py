"""Two ASGI guards in front of the app: the pending-account gate and the login throttle.

*PendingGate*: a pending user (signed up, not yet approved) has a session but
is nobody to the API and the proxy.  For such a session every page redirects
to ``/pending`` and every API call answers 403 "your account is waiting for
approval" -- except the few paths a pending user needs (log out, the waiting
page, static files).  Active users and anonymous callers pass untouched; the
cost for them is one cache lookup.

*LoginThrottle*: wraps ``POST /login`` (whatever page implements it) with
back-off per account name and per client address, and writes the audit
event for each failed or successful password login.  The login handler
answers 401 for wrong credentials and 303 for a login; a throttled attempt
gets 429 with ``Retry-After`` and never reaches the password check.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.parse
from http.cookies import SimpleCookie
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labhub.auth import audit

log = logging.getLogger(__name__)

PENDING_DETAIL = "your account is waiting for approval"
PENDING_PAGE = "/pending"
OPEN_PATHS = frozenset({"/pending", "/logout", "/login", "/favicon.ico", "/api/v1/health"})
OPEN_PREFIXES = ("/static/", "/oauth/")
LOGIN_PATH = "/login"
LOGIN_BODY_LIMIT = 16 * 1024


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return ""


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw or name not in raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header: no session
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


class PendingGate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _header(scope, b"authorization"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        hub = scope["app"].state.hub
        secret = _cookie(scope, hub.cookies.session)
        if not secret or (self._open(path) and path != PENDING_PAGE):
            await self.app(scope, receive, send)
            return
        principal = await hub.auth.authenticate("session", secret)
        name = await hub.pending_user(secret) if principal is None else None
        if name is not None and path == PENDING_PAGE:
            scope.setdefault("state", {})["pending_user"] = name  # the waiting page may greet them
        elif name is not None:
            if path.startswith("/api/"):
                body = json.dumps({"detail": PENDING_DETAIL}).encode()
                await _respond(send, 403, body, [(b"content-type", b"application/json")])
            else:
                await _respond(send, 303, b"", [(b"location", PENDING_PAGE.encode())])
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class LoginThrottle:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != LOGIN_PATH:
            await self.app(scope, receive, send)
            return
        hub = scope["app"].state.hub
        content_type = _header(scope, b"content-type").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            await _respond(send, 415, b"log in with the login form", [(b"content-type", b"text/plain")])
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > LOGIN_BODY_LIMIT:
                await _respond(send, 413, b"request body too large", [(b"content-type", b"text/plain")])
                return
        form = urllib.parse.parse_qs(body.decode("latin-1"), max_num_fields=20)
        account = (form.get("username") or [""])[0].strip().lower()[:63]
        address = scope["client"][0] if scope.get("client") else ""
        wait = hub.throttle.login_wait(account, address)
        if wait > 0:
            async with hub.tx() as session:
                audit.record(session, actor=None, action="login.throttled", target=account, address=address,
                             retry_after=math.ceil(wait))
            await self._throttled(scope, send, math.ceil(wait), (form.get("next") or ["/"])[0])
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                # Count before the client sees the answer, so its next attempt is already throttled.
                if message["status"] == 401:
                    hub.throttle.login_failed(account, address)
                elif message["status"] == 303:
                    hub.throttle.login_succeeded(account, address)
            await send(message)

        await self.app(scope, replay, watch)
        if not status or status[0] not in (303, 401):
            return  # a refused form (CSRF, validation): not a password decision
        action = "login.failed" if status[0] == 401 else "login.ok"
        async with hub.tx() as session:
            audit.record(session, actor=account if action == "login.ok" else None, action=action, target=account,
                         address=address, via="password")

    async def _throttled(self, scope: Scope, send: Send, wait: int, next_url: str) -> None:
        message = f"Too many failed log-ins. Try again in {_duration(wait)}."
        headers = [(b"retry-after", str(wait).encode())]
        if "text/html" not in _header(scope, b"accept") and "application/json" in _header(scope, b"accept"):
            await _respond(send, 429, json.dumps({"detail": message, "retry_after": wait}).encode(),
                           [*headers, (b"content-type", b"application/json")])
            return
        from labhub.web.pages.auth import login_hooks
        from labhub.web.pages.common import render, safe_next

        async def empty() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        request = Request(scope, empty)
        response = render(request, "login.html", status=429, next=safe_next(next_url), error=message,
                          **login_hooks(request))
        response.headers["Retry-After"] = str(wait)
        await response(scope, empty, send)


def _duration(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{math.ceil(seconds / 60)} minutes"


def install(app: Any) -> None:
    """Add the guards: the instance-origin gate outermost (nothing of the hub is served on an instance's
    origin), then the throttle (a throttled login never reaches the pending gate)."""
    from labhub.auth.origin import InstanceOriginGate

    app.add_middleware(PendingGate)
    app.add_middleware(LoginThrottle)
    app.add_middleware(InstanceOriginGate)
