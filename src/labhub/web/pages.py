"""HTML pages: log in, first-admin setup, home, launch, instance progress/details."""

from __future__ import annotations

import secrets
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession

from labhub import __version__
from labhub.api.deps import CSRF_COOKIE, SESSION_COOKIE, HubDep, SessionDep
from labhub.hub import Hub
from labhub.models import Instance, Role, Status, User
from labhub.services import credentials, security, users
from labhub.services import instances as svc
from labhub.services.errors import Forbidden, ServiceError

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


# -- helpers -----------------------------------------------------------------------
def _secure(request: Request, hub: Hub) -> bool:
    mode = hub.settings.cookie_secure
    if mode != "auto":
        return mode == "always"
    return request.url.scheme == "https" or (hub.settings.public_url or "").startswith("https://")


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    hub: Hub = request.app.state.hub
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request, name, {"csrf_token": csrf, "version": __version__, "user": None, **context}, status_code=status
    )
    if request.cookies.get(CSRF_COOKIE) != csrf:
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=_secure(request, hub), path="/")
    response.headers["Cache-Control"] = "no-store"
    return response


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    titles = {403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Check your input", 500: "Something went wrong"}
    return render(request, "error.html", status=status, title=titles.get(status, "Error"), message=message,
                  code=status)


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={urllib.parse.quote(target, safe='')}", status_code=303)


def _check_csrf(request: Request, token: str) -> None:
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not token or not expected or not security.same(token, expected):
        raise HTTPException(403, "the form expired or came from another site; reload the page and try again")


def _safe_next(target: str | None) -> str:
    """Only same-site paths: no scheme, no host, no protocol-relative '//'."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def page_user(request: Request, hub: HubDep, session: SessionDep) -> User:
    cookie = request.cookies.get(SESSION_COOKIE)
    principal = await hub.auth.authenticate("session", cookie) if cookie else None
    user = await hub.active_user(session, principal.user_id) if principal else None
    if user is None:
        raise HTTPException(401, "log in first")
    return user


PageUser = Annotated[User, Depends(page_user)]


# -- log in / out / first admin -------------------------------------------------------------
@router.get("/login")
async def login_form(request: Request, hub: HubDep, next: str = "/") -> Response:  # noqa: A002
    if hub.setup_token is not None:
        return render(request, "login.html", next=_safe_next(next), setup_needed=True)
    return render(request, "login.html", next=_safe_next(next))


@router.post("/login")
async def login(
    request: Request, hub: HubDep, session: SessionDep,
    username: Annotated[str, Form(max_length=63)] = "", password: Annotated[str, Form(max_length=1024)] = "",
    csrf_token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/",  # noqa: A002
) -> Response:
    _check_csrf(request, csrf_token)
    user = await users.authenticate(session, name=username.strip().lower(), password=password)
    if user is None:
        return render(request, "login.html", status=401, next=_safe_next(next), username=username,
                      error="Wrong user name or password.")
    return await _start_session(request, hub, session, user, _safe_next(next))


async def _start_session(request: Request, hub: Hub, session: AsyncSession, user: User, target: str) -> Response:
    old = request.cookies.get(SESSION_COOKIE)
    if old:  # rotate: a session id known before login never becomes a logged-in one
        await credentials.end_session(session, secret=old)
        hub.auth.invalidate("session", old)
    secret = await credentials.create_session(
        session, user=user, hours=hub.settings.session_hours, user_agent=request.headers.get("user-agent", ""),
        address=request.client.host if request.client else "",
    )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, secret, httponly=True, samesite="lax", secure=_secure(request, hub),
                        max_age=int(hub.settings.session_hours * 3600), path="/")
    return response


@router.post("/logout")
async def logout(request: Request, hub: HubDep, session: SessionDep, csrf_token: Annotated[str, Form()] = "") -> Response:
    _check_csrf(request, csrf_token)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await credentials.end_session(session, secret=cookie)
        hub.auth.invalidate("session", cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/setup")
async def setup_form(request: Request, hub: HubDep, token: str = "") -> Response:
    if hub.setup_token is None or not security.same(token, hub.setup_token):
        return error_page(request, 404, "This setup link is not valid (it works once, until the first admin exists).")
    return render(request, "setup.html", token=token)


@router.post("/setup")
async def setup(
    request: Request, hub: HubDep, session: SessionDep,
    token: Annotated[str, Form()] = "", username: Annotated[str, Form(max_length=63)] = "",
    password: Annotated[str, Form(max_length=1024)] = "", csrf_token: Annotated[str, Form()] = "",
) -> Response:
    _check_csrf(request, csrf_token)
    if hub.setup_token is None or not security.same(token, hub.setup_token):
        return error_page(request, 404, "This setup link is not valid any more.")
    try:
        user = await users.create_user(session, name=username.strip().lower(), password=password, admin=True)
    except ServiceError as exc:
        return render(request, "setup.html", status=422, token=token, username=username, fields=exc.fields)
    hub.setup_token = None
    return await _start_session(request, hub, session, user, "/")


# -- home, launch, instance pages -------------------------------------------------------------
@router.get("/")
async def home(request: Request, user: PageUser, session: SessionDep, hub: HubDep) -> Response:
    rows = await svc.list_instances(session, user=user, limit=200)
    return render(request, "home.html", user=user, instances=rows, templates=list(hub.catalog),
                  sizes=hub.settings.sizes, isolation={n: b.describe_isolation() for n, b in hub.backends.items()})


@router.post("/launch")
async def launch(
    request: Request, user: PageUser, session: SessionDep, hub: HubDep,
    template: Annotated[str, Form(max_length=63)], name: Annotated[str, Form(max_length=63)],
    size: Annotated[str, Form(max_length=63)] = "", hours: Annotated[str, Form(max_length=16)] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    _check_csrf(request, csrf_token)
    try:
        hours_value = float(hours) if hours else None
    except ValueError:
        hours_value = -1.0
    try:
        inst = await svc.launch(session, user=user, catalog=hub.catalog, sizes=hub.settings.sizes,
                                backends=hub.backends, template=template, name=name.strip(), size=size or None,
                                hours=hours_value, now=hub.clock())
    except ServiceError as exc:
        rows = await svc.list_instances(session, user=user, limit=200)
        return render(request, "home.html", status=exc.status, user=user, instances=rows, templates=list(hub.catalog),
                      sizes=hub.settings.sizes, fields=exc.fields, form={"template": template, "name": name,
                      "size": size, "hours": hours}, error=exc.message,
                      isolation={n: b.describe_isolation() for n, b in hub.backends.items()})
    await session.commit()
    hub.reconciler.kick(inst.id)
    return RedirectResponse(f"/instances/{inst.id}", status_code=303)


@router.get("/instances/{instance_id}")
async def instance_page(instance_id: str, request: Request, user: PageUser, session: SessionDep) -> Response:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    return render(request, "instance.html", user=user, inst=inst, active=not inst.is_terminal)


@router.post("/instances/{instance_id}/stop")
async def stop(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
               csrf_token: Annotated[str, Form()] = "") -> Response:
    _check_csrf(request, csrf_token)
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    svc.request_stop(session, inst, actor=user)
    await session.commit()
    hub.reconciler.kick(inst.id, stop=True)
    return RedirectResponse(request.headers.get("referer") and f"/instances/{inst.id}" or "/", status_code=303)


@router.get("/user/{owner}/{name}")
async def add_slash(owner: str, name: str, request: Request) -> Response:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/user/{owner}/{name}/{query}", status_code=301)


@router.api_route("/user/{owner}/{name}/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
async def not_running(owner: str, name: str, path: str, request: Request, hub: HubDep, session: SessionDep) -> Response:
    """Reached only when the proxy has no route: the instance is not (yet) running."""
    cookie = request.cookies.get(SESSION_COOKIE)
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    principal = None
    if token:
        principal = await hub.auth.authenticate("token", token)
    elif cookie:
        principal = await hub.auth.authenticate("session", cookie)
    user = await hub.active_user(session, principal.user_id) if principal else None
    if user is None:
        raise HTTPException(401, "authentication required")
    owner_user = await users.get_user(session, name=owner)
    inst = await svc.find_by_name(session, owner=owner_user, name=name) if owner_user else None
    if inst is None:
        raise HTTPException(404, f"there is no instance {owner}/{name}")
    if inst.owner_id != user.id and not user.is_admin:
        raise Forbidden("not your instance")
    if inst.status in (Status.REQUESTED, Status.QUEUED, Status.STARTING) and request.method == "GET" \
            and "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(f"/instances/{inst.id}", status_code=303)
    if "text/html" in request.headers.get("accept", ""):
        return render(request, "not_running.html", status=503, user=user, inst=inst)
    raise HTTPException(503, f"instance {owner}/{name} is {inst.status}")


def describe_role(user: User) -> str:
    return "admin" if user.role == Role.ADMIN else "user"


templates.env.globals["describe_role"] = describe_role
templates.env.filters["ago"] = lambda d: d.strftime("%Y-%m-%d %H:%M UTC") if d else "—"
_ = Instance
