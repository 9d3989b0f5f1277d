"""What every page shares: rendering, CSRF, the logged-in user, error pages, formatting."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from labhub import __version__
from labhub.api.deps import HubDep, SessionDep, csrf_token, csrf_valid
from labhub.hub import Hub
from labhub.models import TERMINAL, User
from labhub.services.admission import ordinal
from labhub.services.errors import Forbidden
from labhub.services.views import relative

WEB = Path(__file__).parent.parent
templates = Jinja2Templates(directory=WEB / "templates")

# Pages load only our own files: no inline script or style, no third-party origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")

TITLES = {400: "Bad request", 401: "Log in first", 403: "Not allowed", 404: "Not found", 405: "Not allowed here",
          409: "Not possible right now", 413: "Too large", 422: "Check your input", 500: "Something went wrong",
          503: "Not available"}
HINTS = {
    403: "You are logged in, but this belongs to someone else or needs an admin. "
         "Ask its owner or an admin if you need access.",
    404: "The link may be old, or the thing it pointed to was deleted.",
    500: "The hub hit an unexpected problem and logged it. Try again; if it keeps happening, tell an admin.",
}


def cookie_secure(request: Request, hub: Hub) -> bool:
    """Whether cookies are Secure (and ``__Host-`` prefixed): settled by the settings at start."""
    return hub.cookies.secure


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from ``templates/`` with the session's CSRF token and the security headers."""
    hub: Hub = request.app.state.hub
    token, nonce = csrf_token(request, hub)
    base = {"csrf_token": token, "version": __version__, "user": getattr(request.state, "user", None),
            "now": hub.clock(), "section": ""}
    response = templates.TemplateResponse(request, name, {**base, **context}, status_code=status)
    if nonce is not None:  # before login the token is bound to this nonce
        response.set_cookie(hub.cookies.csrf, nonce, httponly=True, samesite="strict", secure=hub.cookies.secure,
                            path="/")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """The friendly page for an HTTP error (the app's exception handlers call this)."""
    return render(request, "error.html", status=status, title=TITLES.get(status, "Error"), message=message,
                  hint=HINTS.get(status, ""), code=status)


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={urllib.parse.quote(target, safe='')}", status_code=303)


def check_csrf(request: Request, token: str | None) -> None:
    """A form post must come from the hub's own origin with the session's ``csrf_token``."""
    if not csrf_valid(request, request.app.state.hub, token):
        raise HTTPException(403, "the form expired or came from another site; reload the page and try again")


def safe_next(target: str | None) -> str:
    """Only same-site paths: no scheme, no host, no protocol-relative '//'."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page, as the layout shows it; unlike the ORM row it outlives the session
    (an error page may render after the request's transaction was rolled back)."""

    id: int
    name: str
    is_admin: bool


async def page_user(request: Request, hub: HubDep, session: SessionDep) -> User:
    """The logged-in, active user (401, which pages turn into the login redirect, otherwise)."""
    cookie = request.cookies.get(hub.cookies.session)
    principal = await hub.auth.authenticate("session", cookie) if cookie else None
    user = await hub.active_user(session, principal.user_id) if principal else None
    if user is None:
        raise HTTPException(401, "log in first")
    request.state.user = Viewer(user.id, user.name, user.is_admin)
    return user


PageUser = Annotated[User, Depends(page_user)]


async def page_admin(user: PageUser) -> User:
    if not user.is_admin:
        raise Forbidden("this page is for admins")
    return user


AdminPage = Annotated[User, Depends(page_admin)]


# -- formatting (Jinja filters) ----------------------------------------------------------------------
def when(value: dt.datetime | None) -> Markup:
    """A ``<time>`` in UTC that the page's script rewrites in the reader's time zone."""
    if value is None:
        return Markup('<span class="muted">—</span>')
    iso = value.astimezone(dt.UTC).isoformat()
    text = value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Markup('<time datetime="{}" data-local>{}</time>').format(iso, text)


def countdown(value: dt.datetime | None, now: dt.datetime) -> Markup:
    """``in 3 h 5 min``, kept current by the page's script."""
    if value is None:
        return Markup('<span class="muted">—</span>')
    iso = value.astimezone(dt.UTC).isoformat()
    title = value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Markup('<time datetime="{}" title="{}" data-relative>{}</time>').format(iso, title, relative(value, now))


def gib(memory_mb: int) -> str:
    return f"{memory_mb / 1024:g} GiB"


def cpus(value: float) -> str:
    return f"{value:g} CPU{'' if value == 1 else 's'}"


def resources(cpu: float, memory_mb: int, gpus: int) -> str:
    text = f"{cpus(cpu)} · {gib(memory_mb)}"
    return text + (f" · {gpus} GPU{'' if gpus == 1 else 's'}" if gpus else "")


def field_error(fields: dict[str, str] | None, key: str, dom_id: str) -> Markup:
    """The error paragraph for one form field (empty when the field is fine)."""
    message = (fields or {}).get(key)
    if not message:
        return Markup('<p class="field-error" id="{}-error" hidden></p>').format(dom_id)
    return Markup('<p class="field-error" id="{}-error">{}</p>').format(dom_id, escape(message))


templates.env.filters.update(when=when, gib=gib, cpus=cpus)
templates.env.globals.update(countdown=countdown, resources=resources, field_error=field_error, ordinal=ordinal,
                             terminal=frozenset(str(s) for s in TERMINAL))
