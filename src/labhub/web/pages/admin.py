"""Admin pages: users (search, pages, add, disable, admin role), every instance, the system (quotas and
groups: :mod:`labhub.web.pages.quotas`)."""

from __future__ import annotations

import urllib.parse
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.api.deps import HubDep, SessionDep
from labhub.models import Status, UserStatus
from labhub.reconcile import cleanup
from labhub.services import admin, views
from labhub.services.errors import ServiceError
from labhub.services.users import USERNAME_RE
from labhub.web.pages.common import AdminPage, check_csrf, render, safe_next

router = APIRouter(prefix="/admin", include_in_schema=False)

NOTICES = {
    "added": "Added {who}.",
    "disabled": "Disabled {who}: their sessions ended and their instances are stopping.",
    "enabled": "{who} can log in again.",
    "admin": "{who} is now an admin.",
    "unadmin": "{who} is no longer an admin.",
}


def _notice(done: str, who: str) -> str:
    if done not in NOTICES or not USERNAME_RE.match(who):
        return ""
    return NOTICES[done].format(who=who)


@router.get("")
async def index(_: AdminPage) -> Response:
    return RedirectResponse("/admin/users", status_code=303)


async def _users_page(request: Request, session: AsyncSession, *, q: str, status: str, after: str | None,
                      before: str | None, code: int = 200, **context: object) -> Response:
    page = await admin.search_users(session, q=q, status=status or None, after=after, before=before)

    def url(**cursor: str | None) -> str:
        query = {k: v for k, v in {"q": q, "status": status, **cursor}.items() if v}
        return "/admin/users" + (f"?{urllib.parse.urlencode(query)}" if query else "")

    return render(request, "admin_users.html", status=code, section="admin", tab="users", page=page, q=q,
                  status_filter=status, statuses=[s.value for s in UserStatus], here=url(after=after, before=before),
                  prev_url=url(before=page.prev_before) if page.prev_before else None,
                  next_url=url(after=page.next_after) if page.next_after else None, **context)


@router.get("/users")
async def users_page(
    request: Request, _: AdminPage, session: SessionDep,
    q: Annotated[str, Query(max_length=100)] = "", status: Annotated[str, Query(max_length=16)] = "",
    after: Annotated[str | None, Query(max_length=63)] = None,
    before: Annotated[str | None, Query(max_length=63)] = None,
    done: Annotated[str, Query(max_length=16)] = "", who: Annotated[str, Query(max_length=63)] = "",
) -> Response:
    return await _users_page(request, session, q=q.strip(), status=status, after=after, before=before,
                             notice=_notice(done, who))


@router.post("/users")
async def add_user(
    request: Request, actor: AdminPage, session: SessionDep,
    username: Annotated[str, Form(max_length=63)] = "", password: Annotated[str, Form(max_length=1024)] = "",
    email: Annotated[str, Form(max_length=320)] = "", make_admin: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    check_csrf(request, csrf_token)
    name = username.strip().lower()
    try:
        await admin.add_user(session, actor=actor, name=name, password=password, admin=bool(make_admin),
                             email=email.strip() or None)
    except ServiceError as exc:
        return await _users_page(request, session, q="", status="", after=None, before=None, code=exc.status,
                                 fields=exc.fields, form={"username": username, "email": email,
                                                          "make_admin": bool(make_admin)})
    return RedirectResponse(f"/admin/users?{urllib.parse.urlencode({'q': name, 'done': 'added', 'who': name})}",
                            status_code=303)


def _back(next_url: str, done: str, who: str) -> RedirectResponse:
    target = safe_next(next_url or "/admin/users")
    if not target.startswith("/admin/users"):
        return RedirectResponse(target, status_code=303)
    parts = urllib.parse.urlsplit(target)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in ("done", "who")]
    query += [("done", done), ("who", who)]
    return RedirectResponse(f"{parts.path}?{urllib.parse.urlencode(query)}", status_code=303)


@router.post("/users/{name}/disable")
async def disable(name: str, request: Request, actor: AdminPage, session: SessionDep, hub: HubDep,
                  csrf_token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "") -> Response:  # noqa: A002
    check_csrf(request, csrf_token)
    await admin.disable_user(session, actor=actor, name=name)
    await session.commit()
    hub.credentials_changed()  # cached sessions and tokens of this user must stop working now
    return _back(next, "disabled", name)


@router.post("/users/{name}/enable")
async def enable(name: str, request: Request, actor: AdminPage, session: SessionDep, hub: HubDep,
                 csrf_token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "") -> Response:  # noqa: A002
    check_csrf(request, csrf_token)
    await admin.enable_user(session, actor=actor, name=name)
    await session.commit()
    hub.credentials_changed()  # a disabled or pending user's cached "nobody" must go
    return _back(next, "enabled", name)


@router.post("/users/{name}/role")
async def role(name: str, request: Request, actor: AdminPage, session: SessionDep, hub: HubDep,
               make_admin: Annotated[str, Form()] = "", csrf_token: Annotated[str, Form()] = "",
               next: Annotated[str, Form()] = "") -> Response:  # noqa: A002
    check_csrf(request, csrf_token)
    await admin.set_admin(session, actor=actor, name=name, admin=make_admin == "1")
    await session.commit()
    hub.credentials_changed()  # cached principals carry the admin flag
    return _back(next, "admin" if make_admin == "1" else "unadmin", name)


@router.get("/instances")
async def instances_page(
    request: Request, actor: AdminPage, session: SessionDep, hub: HubDep,
    owner: Annotated[str, Query(max_length=63)] = "", template: Annotated[str, Query(max_length=63)] = "",
    status: Annotated[str, Query(max_length=16)] = "", page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    active = True if status == "active" else None
    after = await views.last_event_id(session)  # before the rows (see pages.instances.home)
    result = await admin.all_instances(session, actor=actor, owner=owner.strip() or None, template=template or None,
                                       status=status if status and status != "active" else None, active=active,
                                       offset=(page - 1) * admin.PAGE_SIZE)
    query = {k: v for k, v in {"owner": owner, "template": template, "status": status}.items() if v}
    return render(request, "admin_instances.html", section="admin", tab="instances", result=result, page=page,
                  owner=owner, template=template, status_filter=status, after=after,
                  templates_known=[t.name for t in hub.catalog], statuses=["active", *[s.value for s in Status]],
                  query=urllib.parse.urlencode(query), here=request.url.path + (f"?{request.url.query}"
                                                                                 if request.url.query else ""))


@router.get("/system")
async def system(request: Request, _: AdminPage, session: SessionDep, hub: HubDep) -> Response:
    return await _system(request, session, hub)


@router.post("/system/cleanup")
async def system_cleanup(request: Request, actor: AdminPage, session: SessionDep, hub: HubDep,
                         csrf_token: Annotated[str, Form()] = "", apply: Annotated[str, Form()] = "0") -> Response:
    """The clean-up's report (a dry run), or its removals (``apply=1``), on the System page."""
    check_csrf(request, csrf_token)
    parts = hub.reconciler.parts  # the request's session has run nothing yet: no transaction held meanwhile
    items = await cleanup.survey(parts, hub.reconciler.busy, hub.clock())
    if apply == "1":
        await cleanup.apply(parts, hub.tx, items, actor=actor.name)
    return await _system(request, session, hub, cleanup_report={"applied": apply == "1", "items": items})


async def _system(request: Request, session: AsyncSession, hub: HubDep, **extra: object) -> Response:
    database = await admin.database_summary(session)
    await session.commit()  # end the transaction before asking backends (no network call inside one)
    health = await admin.backend_health(hub.backends)
    settings = hub.settings
    return render(request, "admin_system.html", section="admin", tab="system", health=health,
                  versions=admin.versions(), database=database, settings=settings, catalog=hub.catalog,
                  sizes=settings.sizes, **extra)

