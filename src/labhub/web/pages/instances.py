"""Home, progress and details pages; stop and delete; the live status stream; not-running pages."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.api.deps import HubDep, SessionDep
from labhub.hub import Hub
from labhub.models import Event, Instance, Kind, Status, User
from labhub.services import instances as svc
from labhub.services import origins, users, views
from labhub.services.errors import Forbidden
from labhub.web.pages.common import PageUser, Viewer, check_csrf, render, safe_next

router = APIRouter(include_in_schema=False)

KEEPALIVE_S = 15.0


@router.get("/")
async def home(request: Request, user: PageUser, session: SessionDep) -> Response:
    # The newest event id before the rows: these reads are not one snapshot (SQLite), and an event
    # landing in between is then replayed to the page (harmless) instead of lost.
    after = await views.last_event_id(session)
    rows = await svc.list_instances(session, user=user, limit=200)
    return render(request, "home.html", section="home", instances=rows, after=after)


async def _with_events(session: AsyncSession, user: User, instance_id: str) -> tuple[Instance, list[Event]]:
    """The instance and its events, the instance read last: the page's live stream continues after the
    last event listed, so the instance shown must be at least as new as that list."""
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    events = await views.list_events(session, instance_id=inst.id)
    await session.refresh(inst)
    return inst, events


@router.get("/instances/{instance_id}/progress")
async def progress(instance_id: str, request: Request, user: PageUser, session: SessionDep) -> Response:
    """The launch's live progress; opens the workspace once it is ready."""
    inst, events = await _with_events(session, user, instance_id)
    failure = views.split_failure(inst.message) if inst.status == Status.FAILED else None
    return render(request, "progress.html", section="home", inst=inst, events=events,
                  after=events[-1].id if events else 0, failure=failure,
                  explanation=views.explain_end(inst, events=events))


@router.get("/instances/{instance_id}")
async def details(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep) -> Response:
    inst, events = await _with_events(session, user, instance_id)
    job = await _job_facts(session, hub, user, inst) if inst.kind == Kind.JOB else None
    return render(request, "instance.html", section="admin" if inst.owner_id != user.id else "home", inst=inst,
                  events=events, after=events[-1].id if events else 0, tpl=hub.catalog.get(inst.template),
                  explanation=views.explain_end(inst, events=events), address=hub.instance_url(inst), job=job,
                  keep_days=hub.jobs.settings.artifact_days)


ARTIFACTS_SHOWN = 500  # a job's page lists this many artifacts at most (the tar.gz has all)


async def _job_facts(session: AsyncSession, hub: Hub, user: User, inst: Instance) -> dict[str, Any]:
    """What a job's page shows besides its status: its artifacts, and whether its input folder is still there."""
    entries, truncated = await hub.jobs.artifacts(inst.id, limit=ARTIFACTS_SHOWN)
    folder_exists = False
    if inst.input_folder and inst.owner_id == user.id:  # folders are their owner's alone, admins included
        folder_exists = any(f.name == inst.input_folder for f in await hub.folders.list(session, owner_id=user.id))
    shown = sum(e.size for e in entries)
    return {"artifacts": [{"path": e.path, "size": e.size, "written": dt.datetime.fromtimestamp(e.mtime, dt.UTC)}
                          for e in entries],
            "truncated": truncated, "bytes": inst.output_bytes if truncated and inst.output_bytes else shown,
            "folder_exists": folder_exists}


@router.post("/instances/{instance_id}/stop")
async def stop(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
               csrf_token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "") -> Response:  # noqa: A002
    check_csrf(request, csrf_token)
    await session.commit()  # the stop is its own transaction (retried if the hub moves the instance meanwhile)
    inst = await svc.stop(hub.tx, user_id=user.id, instance_id=instance_id)
    return RedirectResponse(safe_next(next or f"/instances/{inst.id}"), status_code=303)


@router.post("/instances/{instance_id}/delete")
async def delete(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                 csrf_token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "") -> Response:  # noqa: A002
    check_csrf(request, csrf_token)
    await views.delete_instance(session, user=user, instance_id=instance_id)
    await session.commit()
    await hub.jobs.remove(instance_id)  # a job's artifacts go with it
    target = safe_next(next)
    if target.startswith(f"/instances/{instance_id}"):
        target = "/"
    return RedirectResponse(target, status_code=303)


# -- live status for lists (home, admin) ---------------------------------------------------------------
@router.get("/live/instances")
async def live(request: Request, user: PageUser, session: SessionDep, hub: HubDep,
               after: Annotated[int, Query(ge=0)] = 0, all: bool = False) -> Response:  # noqa: A002
    """Server-Sent Events: status events of the caller's instances (admins, ``all=1``: everyone's).

    Replays events after ``after`` (or the ``Last-Event-ID`` a reconnecting
    browser sends), then streams new ones as they happen.
    """
    if all and not user.is_admin:
        raise Forbidden("only admins may watch every user's instances")
    last = request.headers.get("last-event-id", "")
    start = int(last) if last.isdigit() else after
    return StreamingResponse(_live(hub, user, start, all, request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _live(hub: Hub, user: User, after: int, all_owners: bool, request: Request) -> AsyncIterator[bytes]:
    """Events from the database after ``after``, then again whenever a commit (on any replica) signals."""
    async with hub.bus.subscribe(owner_id=None if all_owners else user.id) as signal:  # first: no gap
        last = after
        greeted = False
        while True:
            async with hub.sessions() as session:
                batch = await views.events_since(session, user=user, after=last, all_owners=all_owners)
            for event in batch:
                last = event["id"]
                yield _sse(event)
            if not greeted:
                greeted = True
                yield b": live\n\n"
            if len(batch) >= views.EVENTS_SINCE_LIMIT:
                continue
            if not await signal.wait(timeout=KEEPALIVE_S):
                if await request.is_disconnected():
                    return
                yield b": keep-alive\n\n"


def _sse(event: dict) -> bytes:
    payload = {k: v for k, v in event.items() if k != "owner_id"}
    return f"id: {event['id']}\nevent: status\ndata: {json.dumps(payload)}\n\n".encode()


# -- /user/... on the hub's origin --------------------------------------------------------------------
@router.get("/user/{owner}/{name}")
async def add_slash(owner: str, name: str, request: Request) -> Response:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/user/{owner}/{name}/{query}", status_code=301)


@router.api_route("/user/{owner}/{name}/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
async def user_path(owner: str, name: str, path: str, request: Request, hub: HubDep, session: SessionDep) -> Response:
    """An instance's address on the hub's origin.

    With instances on origins of their own, a browser that is logged in here
    is handed over to the instance's origin with a single-use code, and API
    clients are redirected there (308, method and body kept).  In path mode
    the proxy serves running instances itself, so this is reached only when
    the instance is not running.
    """
    cookie = request.cookies.get(hub.cookies.session)
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    principal = None
    if token:
        principal = await hub.auth.authenticate("token", token)
    elif cookie:
        principal = await hub.auth.authenticate("session", cookie)
    user = await hub.active_user(session, principal.user_id) if principal else None
    if user is None:
        raise HTTPException(401, "authentication required")
    request.state.user = Viewer(user.id, user.name, user.is_admin)
    owner_user = await users.get_user(session, name=owner)
    inst = await svc.find_by_name(session, owner=owner_user, name=name) if owner_user else None
    if inst is None:
        raise HTTPException(404, f"there is no instance {owner}/{name}")
    if not origins.may_open(user, inst):
        raise Forbidden("not your instance")
    html = "text/html" in request.headers.get("accept", "")
    # a sleeping service counts: its origin's next request wakes it
    running = inst.status in (Status.RUNNING, Status.UNKNOWN, Status.SLEEPING) and hub.routes.get(owner, name) is not None
    if hub.subdomains and running:
        rest = "/" + path + (f"?{request.url.query}" if request.url.query else "")
        if token:
            return RedirectResponse(hub.instance_url(inst).rstrip("/") + rest, status_code=308)
        if request.method not in ("GET", "HEAD"):
            raise HTTPException(404, f"this instance is served at {hub.instance_url(inst)}")
        code = await origins.mint(session, user=user, instance=inst, login_secret=cookie, now=hub.clock())
        await session.commit()
        target = hub.instance_url(inst) + "_labhub/auth?" + urllib.parse.urlencode({"code": code, "next": rest})
        return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store",
                                                                   "Referrer-Policy": "no-referrer"})
    if inst.status in (Status.REQUESTED, Status.QUEUED, Status.STARTING) and request.method == "GET" and html:
        return RedirectResponse(f"/instances/{inst.id}/progress", status_code=303)
    if html:
        return render(request, "not_running.html", status=503, inst=inst,
                      explanation=views.explain_end(inst))
    raise HTTPException(503, f"instance {owner}/{name} is {inst.status}")
