"""Home, progress and details pages; stop and delete; the live status stream; not-running pages."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.api.deps import HubDep, SessionDep
from labhub.catalog import Template
from labhub.client import MODEL_SERVICE, MODEL_SUFFIXES, call_examples
from labhub.hub import Hub
from labhub.models import TERMINAL, Event, Instance, Kind, Status, User, awaits_admission
from labhub.services import admission, groups, origins, shares, users, views
from labhub.services import extend as extend_svc
from labhub.services import instances as svc
from labhub.services.errors import Conflict, Forbidden, Invalid, NotFound, ServiceError
from labhub.services.instances import template_allowed
from labhub.web.pages import quotas as quota_pages
from labhub.web.pages.common import PageUser, Viewer, check_csrf, render, safe_next

router = APIRouter(include_in_schema=False)

KEEPALIVE_S = 15.0


@router.get("/")
async def home(request: Request, user: PageUser, session: SessionDep, hub: HubDep) -> Response:
    """The user's instances (a launch waiting for admission with its place in the queue), what is shared
    with them, and their quota: each limit in force as usage against it."""
    # The newest event id before the rows: these reads are not one snapshot (SQLite), and an event
    # landing in between is then replayed to the page (harmless) instead of lost.
    after = await views.last_event_id(session)
    rows = await svc.list_instances(session, user=user, limit=200)
    report = await quota_pages.report_of(session, hub, user)
    return render(request, "home.html", section="home", instances=rows, after=after,
                  places=await _places(session, rows), quota=quota_pages.panel(report),
                  shared=await shares.shared_ids(session, [i.id for i in rows]),
                  shared_with_me=await shares.shared_with(session, user=user))


async def _places(session: AsyncSession, rows: list[Instance]) -> dict[str, int]:
    """The queue positions of those of ``rows`` waiting for admission (1 = next)."""
    waiting = [i.id for i in rows if awaits_admission(i.status, i.handle)]
    return await admission.positions(session, waiting) if waiting else {}


def _waiting(inst: Instance, places: dict[str, int]) -> str:
    """What a launch waiting for admission waits for, with its place ("...; you are 2nd in the queue");
    empty for any other instance."""
    if not awaits_admission(inst.status, inst.handle):
        return ""
    return admission.describe(inst.message or "waiting for admission", places.get(inst.id))


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
    places = await _places(session, [inst])
    return render(request, "progress.html", section="home", inst=inst, events=events,
                  after=events[-1].id if events else 0, failure=failure,
                  explanation=views.explain_end(inst, events=events), waiting=_waiting(inst, places),
                  place=places.get(inst.id))


@router.get("/instances/{instance_id}")
async def details(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep) -> Response:
    return await _details(request, session, hub, user, instance_id)


async def _details(request: Request, session: AsyncSession, hub: Hub, user: User, instance_id: str, *,
                   deploy_form: dict[str, Any] | None = None, deploy_fields: dict[str, str] | None = None,
                   deploy_error: str = "", extend_error: str = "", share_error: dict[str, str] | None = None,
                   resize_error: str = "", status: int = 200) -> Response:
    """An instance's page; a job's offers to deploy its models, a service's shows how to call it."""
    inst, events = await _with_events(session, user, instance_id)
    job = await _job_facts(session, hub, user, inst) if inst.kind == Kind.JOB else None
    deploy = await _deploy_choices(session, hub, user, inst, job, deploy_form) if job else None
    address = hub.instance_url(inst)
    service = _service_facts(hub, inst, address) if inst.kind == Kind.SERVICE else None
    waiting = _waiting(inst, await _places(session, [inst]))
    return render(request, "instance.html", status=status, section="admin" if inst.owner_id != user.id else "home",
                  inst=inst, events=events, after=events[-1].id if events else 0, tpl=hub.catalog.get(inst.template),
                  waiting=waiting,
                  explanation=views.explain_end(inst, events=events), address=address, job=job,
                  keep_days=hub.jobs.settings.artifact_days, deploy=deploy, deploy_fields=deploy_fields or {},
                  deploy_error=deploy_error, service=service, extend=_extend_facts(hub, inst),
                  extend_error=extend_error, sharing=await _sharing_facts(session, hub, user, inst, share_error),
                  resize=_resize_choices(hub, inst), resize_error=resize_error)


def _resize_choices(hub: Hub, inst: Instance) -> list[str]:
    """The preset sizes "Restart with a new size" offers (none for jobs, or once it stops or has ended)."""
    tpl = hub.catalog.get(inst.template)
    if tpl is None or inst.kind == Kind.JOB or inst.status == Status.STOPPING or inst.status in TERMINAL:
        return []
    return [s for s in (tpl.sizes or list(hub.settings.sizes)) if s in hub.settings.sizes and s != inst.size]


@router.post("/instances/{instance_id}/restart")
async def restart(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                  csrf_token: Annotated[str, Form()] = "", size: Annotated[str, Form()] = "") -> Response:
    """The Resources row's "Restart with a new size": the instance stops and is launched again under its
    name (its owner's or an admin's); the new one's page follows, a refusal is shown next to the form."""
    check_csrf(request, csrf_token)
    try:
        new = await svc.restart_resized(session, user=user, instance_id=instance_id, size=size, custom=None,
                                        catalog=hub.catalog, sizes=hub.settings.sizes, backends=hub.backends,
                                        quota=hub.settings.quota, now=hub.clock())
    except (Invalid, Conflict) as exc:  # (the instance is as it was)
        return await _details(request, session, hub, user, instance_id, status=exc.status,
                              resize_error=next(iter(exc.fields.values()), exc.message))
    await session.commit()
    return RedirectResponse(f"/instances/{new.id}", status_code=303)


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


# -- services: deploying a job's model, and a service's options ---------------------------------------
def _models_of(job: dict[str, Any]) -> list[str]:
    """The job's artifacts the model service loads."""
    return [a["path"] for a in job["artifacts"] if a["path"].endswith(MODEL_SUFFIXES)]


def _service_template(hub: Hub, user: User, member_of: set[str]) -> Template | None:
    tpl = hub.catalog.get(MODEL_SERVICE)
    return tpl if tpl is not None and tpl.kind == "service" and template_allowed(tpl, user=user, groups=member_of) \
        else None


async def _deploy_choices(session: AsyncSession, hub: Hub, user: User, inst: Instance, job: dict[str, Any],
                          form: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the job page's "Deploy this model" form offers: its owner's, once it succeeded with models."""
    models = _models_of(job)
    if inst.owner_id != user.id or inst.status != Status.SUCCEEDED or not models:
        return None
    tpl = _service_template(hub, user, await groups.names_of(session, user))
    if tpl is None:
        return None
    sizes = [c for c in views.size_choices(tpl, sizes=hub.settings.sizes, backends=hub.backends) if c.allowed]
    if not sizes:
        return None
    taken = await views.active_names(session, user=user)
    base = f"{inst.name[:59].rstrip('-')}-svc"
    assert tpl.service is not None
    defaults = {"model": models[0], "name": base if base not in taken else views.suggest_name(base, taken),
                "size": views.default_size(tpl, sizes), "public": False, "sleep": tpl.service.min_replicas == 0,
                "replicas": "1"}
    return {"models": models, "sizes": sizes, "hours": tpl.hours.default, "idle": duration(tpl.service.idle_s),
            "max_replicas": tpl.service.max_replicas,
            "form": {**defaults, **(form or {})}}


DEPLOY_FIELDS = {"params.model": "model", "template": "name", "min_replicas": "sleep"}  # API field -> form's


@router.post("/instances/{instance_id}/deploy")
async def deploy(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep) -> Response:
    """Serve one of a finished job's models (the model service, ``model=JOB/PATH``); its page next."""
    data = await request.form()
    check_csrf(request, str(data.get("csrf_token", "")))
    job: Instance = await svc.get_instance(session, user=user, instance_id=instance_id)
    if job.kind != Kind.JOB:
        raise NotFound("only jobs have models to deploy")
    if job.owner_id != user.id:  # JOB/PATH names one of the caller's own jobs: an admin's would be theirs
        raise Forbidden("only its owner can deploy a job's model")
    raw = {k: v for k, v in data.items() if isinstance(v, str)}
    form = {"model": raw.get("model", ""), "name": raw.get("name", "").strip(), "size": raw.get("size", ""),
            "public": "public" in raw, "sleep": "sleep_when_idle" in raw, "replicas": raw.get("replicas", "")}
    replicas, replicas_error = parse_replicas(form["replicas"])
    member_of = await groups.names_of(session, user)
    entries, _ = await hub.jobs.artifacts(job.id, limit=ARTIFACTS_SHOWN)
    if job.status != Status.SUCCEEDED or _service_template(hub, user, member_of) is None:
        return await _details(request, session, hub, user, instance_id, status=409,
                              deploy_error="Only a job that succeeded can be deployed, with the model service.")
    if form["model"] not in _models_of({"artifacts": [{"path": e.path} for e in entries]}):
        return await _details(request, session, hub, user, instance_id, deploy_form=form, status=422,
                              deploy_fields={"model": "choose one of the job's models"})
    if replicas_error:
        return await _details(request, session, hub, user, instance_id, deploy_form=form, status=422,
                              deploy_fields={"replicas": replicas_error})
    try:
        inst = await svc.launch(session, user=user, catalog=hub.catalog, sizes=hub.settings.sizes,
                                quota=hub.settings.quota, backends=hub.backends, template=MODEL_SERVICE,
                                name=form["name"],
                                size=form["size"] or None, params={"model": f"{job.name}/{form['model']}"},
                                public=form["public"], min_replicas=0 if form["sleep"] else 1, replicas=replicas,
                                groups=member_of, now=hub.clock())
    except ServiceError as exc:
        fields = {DEPLOY_FIELDS.get(k, k): v for k, v in exc.fields.items()}
        return await _details(request, session, hub, user, instance_id, deploy_form=form, deploy_fields=fields,
                              status=exc.status, deploy_error="" if fields else exc.message)
    await session.commit()
    return RedirectResponse(f"/instances/{inst.id}", status_code=303)


def parse_replicas(raw: str) -> tuple[int | None, str | None]:
    """A service form's replicas field (empty: the default, one)."""
    if not raw.strip():
        return None, None
    try:
        return int(raw), None
    except ValueError:
        return None, "must be a whole number, e.g. 2"


def _service_facts(hub: Hub, inst: Instance, address: str) -> dict[str, Any]:
    """What a service's page shows before its script asks the service: how to call it (the model's
    name as the service names it: its file's stem), whether it is public, how long it idles."""
    ref = str((inst.params or {}).get("model") or "")
    model = PurePosixPath(ref.removeprefix("folder:")).stem or inst.name
    tpl = hub.catalog.get(inst.template)
    idle_s = tpl.service.idle_s if tpl is not None and tpl.service is not None else None
    return {"model": model, "source": ref, "idle": duration(idle_s) if idle_s else "",
            "calls": call_examples(address, model, public=bool(inst.public))}


def duration(seconds: float) -> str:
    """``90 s``, ``15 min``, ``2 h``."""
    minutes = seconds / 60
    return f"{seconds:g} s" if seconds < 120 else f"{minutes:g} min" if minutes < 120 else f"{minutes / 60:g} h"


@router.post("/instances/{instance_id}/service")
async def change_service(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                         csrf_token: Annotated[str, Form()] = "", public: Annotated[str, Form()] = "",
                         sleep_when_idle: Annotated[str, Form()] = "") -> Response:
    """The service section's buttons: ``public`` 1/0 makes it public or private, ``sleep_when_idle``
    1/0 lets it sleep when idle or keeps it running (its owner's or an admin's)."""
    check_csrf(request, csrf_token)
    sleep = _flag(sleep_when_idle, "sleep_when_idle")
    inst = await svc.change_service(session, user=user, instance_id=instance_id, public=_flag(public, "public"),
                                    min_replicas=None if sleep is None else 0 if sleep else 1, now=hub.clock())
    await session.commit()
    await hub.refresh_routes({inst.id})  # this replica's proxy at once (the others follow the change's notice)
    return RedirectResponse(f"/instances/{inst.id}#service", status_code=303)


def _flag(value: str, field: str) -> bool | None:
    if not value:
        return None
    if value not in ("0", "1"):
        raise Invalid("invalid change", fields={field: "must be 1 or 0"})
    return value == "1"


def _extend_facts(hub: Hub, inst: Instance) -> dict[str, Any]:
    """The Expires row's "Extend" form (when it can get more) and the warning banner (when it expires soon)."""
    room = extend_svc.room(inst, hub.catalog.get(inst.template))
    return {"left": room.left if room.left > extend_svc.EPSILON else 0, "max": room.max_hours,
            "soon": extend_svc.expires_soon(inst, now=hub.clock(),
                                            warning_minutes=hub.settings.expiry_warning_minutes)}


@router.post("/instances/{instance_id}/extend")
async def extend(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                 csrf_token: Annotated[str, Form()] = "", hours: Annotated[str, Form()] = "") -> Response:
    """The Expires row's "Extend" form: ``hours`` more, within the template's maximum (its owner's or an
    admin's); a refusal is shown on the instance's page, next to the form."""
    check_csrf(request, csrf_token)
    try:
        inst = await extend_svc.extend(session, user=user, catalog=hub.catalog, instance_id=instance_id,
                                       hours=_hours(hours), now=hub.clock())
    except (Invalid, Conflict) as exc:  # (nothing was written)
        return await _details(request, session, hub, user, instance_id, status=exc.status,
                              extend_error=exc.fields.get("hours", exc.message))
    await session.commit()
    return RedirectResponse(f"/instances/{inst.id}#expires", status_code=303)


def _hours(raw: str) -> float:
    try:
        return float(raw.strip() or "nan")
    except ValueError:
        raise Invalid("invalid extension", fields={"hours": "must be a number of hours, e.g. 2 or 0.5"}) from None


# -- sharing: the owner's shares, an admin's opening to everyone ------------------------------------------
async def _sharing_facts(session: AsyncSession, hub: Hub, user: User, inst: Instance,
                         error: dict[str, str] | None) -> dict[str, Any] | None:
    """The Share section: whom it is shared with, whether it is open, what the viewer may change
    (``error``: the share form's refusal, with what was typed)."""
    if inst.kind == Kind.JOB:
        return None
    return {"shares": await shares.shares_of(session, inst.id), "open_to": inst.open_to or "",
            "can_open": user.is_admin and inst.kind == Kind.WORKSPACE and hub.subdomains,
            "path_mode": not hub.subdomains, "choices": shares.OPEN_TO, "error": error or {}}


@router.post("/instances/{instance_id}/shares")
async def add_share(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                    csrf_token: Annotated[str, Form()] = "", kind: Annotated[str, Form()] = "user",
                    name: Annotated[str, Form()] = "") -> Response:
    """The Share section's form: share with the user or group ``name`` (``kind`` user/group); a refusal
    is shown beside the form."""
    check_csrf(request, csrf_token)
    if kind not in ("user", "group"):
        raise Invalid("invalid share", fields={"kind": "must be user or group"})
    try:
        info, _ = await shares.share(session, actor=user, instance_id=instance_id, address=_address(request),
                                     now=hub.clock(), **{kind: name})
    except Invalid as exc:  # (nothing was written)
        message = exc.fields.get(kind) or exc.fields.get("body") or exc.message
        return await _details(request, session, hub, user, instance_id, status=exc.status,
                              share_error={"kind": kind, "name": name, "message": message})
    await session.commit()
    await hub.refresh_routes({info.instance_id})  # this replica's proxy at once
    return RedirectResponse(f"/instances/{info.instance_id}#sharing", status_code=303)


@router.post("/instances/{instance_id}/shares/{share_id}/revoke")
async def revoke_share(instance_id: str, share_id: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request,
                       user: PageUser, session: SessionDep, hub: HubDep,
                       csrf_token: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf_token)
    info = await shares.revoke(session, actor=user, instance_id=instance_id, share_id=share_id,
                               address=_address(request), now=hub.clock())
    await session.commit()
    await hub.refresh_routes({info.instance_id})
    return RedirectResponse(f"/instances/{info.instance_id}#sharing", status_code=303)


@router.post("/instances/{instance_id}/access")
async def set_access(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                     csrf_token: Annotated[str, Form()] = "", open_to: Annotated[str, Form()] = "") -> Response:
    """An admin's switch: open the workspace to every user, to anyone, or to neither."""
    check_csrf(request, csrf_token)
    inst = await shares.set_open_to(session, actor=user, instance_id=instance_id, open_to=open_to,
                                    subdomains=hub.subdomains, address=_address(request), now=hub.clock())
    await session.commit()
    await hub.refresh_routes({inst.id})
    return RedirectResponse(f"/instances/{inst.id}#sharing", status_code=303)


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


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
    if not await origins.may_open(session, user=user, instance=inst):
        raise Forbidden("not your instance")
    html = "text/html" in request.headers.get("accept", "")
    # a sleeping service counts: its origin's next request wakes it
    running = (inst.status in (Status.RUNNING, Status.UNKNOWN, Status.SLEEPING)
               and hub.routes.get(owner, name) is not None)
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
