"""Launching: the catalog as cards, the launch form, and launching again after a failure."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.api.deps import HubDep, SessionDep
from labhub.catalog import Template
from labhub.client import MODEL_SUFFIXES
from labhub.hub import Hub
from labhub.models import ACTIVE, TERMINAL, Instance, Kind, User
from labhub.services import groups, policy, quotas, users, views
from labhub.services import instances as svc
from labhub.services.errors import Conflict, Forbidden, NotFound, ServiceError
from labhub.services.instances import template_allowed
from labhub.web.pages import quotas as quota_pages
from labhub.web.pages.common import PageUser, check_csrf, render, templates
from labhub.web.pages.folders import size
from labhub.web.pages.instances import duration, parse_replicas

router = APIRouter(include_in_schema=False)


def html_pattern(pattern: str) -> str:
    """A parameter's (Python) pattern as an HTML ``pattern`` attribute, which browsers compile with
    JavaScript's ``v`` flag: there a literal ``-``, ``/``, ``(``, ``)``, ``{``, ``}``, ``|`` or a first
    ``]`` in a character class must be escaped, or the browser drops the pattern (and logs an error)."""
    out, i, in_class, first = [], 0, False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                if i == first:
                    c = "\\]"
                else:
                    in_class = False
            elif c == "-" and (i == first or pattern[i + 1:i + 2] == "]"):
                c = "\\-"
            elif c in "/(){}|":
                c = "\\" + c
        elif c == "[":
            in_class = True
            first = i + 2 if pattern[i + 1:i + 2] == "^" else i + 1
        out.append(c)
        i += 1
    return "".join(out)


templates.env.filters["html_pattern"] = html_pattern


def _cards(hub: Hub, user: User, groups: set[str]) -> list[views.TemplateCard]:
    return views.catalog_cards(hub.catalog, user=user, groups=groups, sizes=hub.settings.sizes, backends=hub.backends)


def _template(hub: Hub, user: User, name: str, groups: set[str]) -> Template:
    tpl = hub.catalog.get(name)
    if tpl is None:
        raise NotFound(f"there is no template named {name!r}")
    if not template_allowed(tpl, user=user, groups=groups):
        raise Forbidden(f"the template {tpl.title!r} is only for members of: {', '.join(tpl.groups or [])}")
    return tpl


@router.get("/launch")
async def catalog(request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                  for_user: Annotated[str, Query(alias="for", max_length=63)] = "") -> Response:
    """The templates; ``?for=NAME`` (admins): the launch will be NAME's (the admin users page links here)."""
    return render(request, "catalog.html", section="launch", for_user=for_user if user.is_admin else "",
                  cards=_cards(hub, user, await groups.names_of(session, user)))


async def _custom_limit(session: AsyncSession, hub: Hub, user: User, tpl: Template) -> policy.CustomMax | None:
    """The largest custom size ``user`` may ask for of ``tpl`` (None: the presets only)."""
    member_of = (await quotas.groups_of(session, [user.id]))[user.id]
    return svc.custom_limit(tpl, policy.of_groups(member_of), hub.settings.sizes)


async def _first_of(session: AsyncSession, user: User, tpl: Template) -> Instance | None:
    """The user's active instance of ``tpl`` that single-instance mode names (to open it instead)."""
    return (await session.execute(
        select(Instance).where(Instance.owner_id == user.id, Instance.template == tpl.name,
                               Instance.status.in_([s.value for s in ACTIVE]))
        .order_by(Instance.created_at).limit(1))).scalar()


async def _form_page(request: Request, session: AsyncSession, hub: Hub, user: User, tpl: Template, *,
                     form: dict[str, Any], fields: dict[str, str] | None = None, error: str = "",
                     status: int = 200, first: Instance | None = None) -> Response:
    """The launch form (``first``: the instance that single-instance mode refused a second of)."""
    choices = views.size_choices(tpl, sizes=hub.settings.sizes, backends=hub.backends)
    card = next(c for c in _cards(hub, user, await groups.names_of(session, user)) if c.template.name == tpl.name)
    backends = [b for b in (tpl.backends or list(hub.backends)) if b in hub.backends]
    taken = sorted(await views.active_names(session, user=user))
    inputs = await _folder_choices(session, hub, user) if tpl.input != "none" else []
    models = await _model_choices(session, hub, user) if _serves_a_model(tpl) else []
    return render(request, "launch.html", status=status, section="launch", tpl=tpl, card=card, sizes=choices,
                  backends=backends, taken=taken, form=form, fields=fields or {}, error=error,
                  address=_address_pattern(hub, user.name), inputs=inputs, models=models,
                  idle=_idle_text(tpl), custom_max=await _custom_limit(session, hub, user, tpl), first=first)


async def _folder_choices(session: AsyncSession, hub: Hub, user: User) -> list[dict[str, str]]:
    """The user's folders as the input select offers them."""
    rows = await hub.folders.list(session, owner_id=user.id)
    return [{"name": r.name, "label": f"{r.name} ({r.files} file{'' if r.files == 1 else 's'}, {size(r.bytes)})"}
            for r in rows]


def _serves_a_model(tpl: Template) -> bool:
    """A service template with a ``model`` parameter (the model service's ``JOB/PATH``)."""
    return tpl.kind == "service" and any(p.name == "model" for p in tpl.params)


MODEL_JOBS = 30  # the model picker looks at this many of the newest jobs (by name) ...
MODEL_FOLDERS = 30  # ... and folders
MODEL_FILES = 2_000  # ... of this many files each


async def _model_choices(session: AsyncSession, hub: Hub, user: User) -> list[dict[str, str]]:
    """The model files of the user's ended jobs (``JOB/PATH``, the newest job of each name, as the
    service resolves it) and folders (``folder:FOLDER/PATH``), for the model field's suggestions."""
    rows = await session.execute(select(Instance.id, Instance.name, Instance.status).where(
        Instance.owner_id == user.id, Instance.kind == Kind.JOB).order_by(Instance.created_at.desc()).limit(500))
    newest: dict[str, tuple[str, str]] = {}
    for iid, name, status in rows:
        newest.setdefault(name, (iid, status))
    out: list[dict[str, str]] = []
    for name, (iid, status) in list(newest.items())[:MODEL_JOBS]:
        if status not in TERMINAL:
            continue
        entries, _ = await hub.jobs.artifacts(iid, limit=MODEL_FILES)
        out += [{"value": f"{name}/{e.path}", "label": f"job {name}: {e.path} ({size(e.size)})"}
                for e in entries if e.path.endswith(MODEL_SUFFIXES)]
    for folder in (await hub.folders.list(session, owner_id=user.id))[:MODEL_FOLDERS]:
        _, entries, _ = await hub.folders.files(session, owner_id=user.id, name=folder.name, limit=MODEL_FILES)
        out += [{"value": f"folder:{folder.name}/{e.path}", "label": f"folder {folder.name}: {e.path} ({size(e.size)})"}
                for e in entries if e.path.endswith(MODEL_SUFFIXES)]
    return out


def _idle_text(tpl: Template) -> str:
    return duration(tpl.service.idle_s) if tpl.service is not None else ""


def _address_pattern(hub: Hub, owner: str) -> tuple[str, str]:
    """What comes before and after an instance's name in its address (the form previews it)."""
    if not hub.subdomains:
        return f"/user/{owner}/", "/"
    before, _, after = hub.origin_url(f"\0--{owner}").partition("\0")
    return before, after


@router.get("/launch/{template}")
async def launch_form(template: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                      again: str = "", input: str = "",  # noqa: A002 - the API's field name
                      for_user: Annotated[str, Query(alias="for", max_length=63)] = "") -> Response:
    """The form; ``?again=<instance id>`` fills it from an earlier launch, ``?input=<folder>`` chooses
    a job's input folder, ``?for=NAME`` (admins) makes it NAME's."""
    tpl = _template(hub, user, template, await groups.names_of(session, user))
    choices = views.size_choices(tpl, sizes=hub.settings.sizes, backends=hub.backends)
    taken = await views.active_names(session, user=user)
    form: dict[str, Any] = {"name": views.suggest_name(tpl.name, taken), "size": views.default_size(tpl, choices),
                            "hours": f"{tpl.hours.default:g}", "backend": "", "params": {}, "input": input,
                            "public": False, "sleep": tpl.service is not None and tpl.service.min_replicas == 0,
                            "replicas": "1", "owner": for_user if user.is_admin else ""}
    form["custom"] = _custom_default(hub, form["size"])
    if again:
        old = await svc.get_instance(session, user=user, instance_id=again)
        if old.template == tpl.name:
            form.update(name=old.name if old.name not in taken else form["name"], size=old.size,
                        hours=f"{old.hours:g}", backend=old.backend, params=dict(old.params or {}),
                        input=input or old.input_folder or "", public=bool(old.public),
                        sleep=old.min_replicas == 0, replicas=str(old.replicas or 1))
            if old.size == svc.CUSTOM:
                form["custom"] = {k: f"{v:g}" for k, v in svc.size_of(old).items()}
    return await _form_page(request, session, hub, user, tpl, form=form)


CUSTOM_FIELDS = {"custom.cpus": "cpus", "custom.memory_mb": "memory_mb", "custom.gpus": "gpus"}


def _custom_default(hub: Hub, size: str) -> dict[str, str]:
    """The custom size fields as the form first fills them: the default preset's."""
    preset = hub.settings.sizes.get(size)
    if preset is None:
        return {"cpus": "", "memory_mb": "", "gpus": "0"}
    return {"cpus": f"{preset.cpus:g}", "memory_mb": str(preset.memory_mb), "gpus": str(preset.gpus)}


def _parse_custom(raw: dict[str, str], fields: dict[str, str]) -> dict[str, Any]:
    """The custom size fields as numbers (a blank one left out: the service says it is required);
    one that is not a number is a field error (``custom.cpus``, ...)."""
    values, errors = quota_pages.parse_numbers(raw, CUSTOM_FIELDS)
    fields.update({f"custom.{k}": v for k, v in errors.items()})
    return values


def _parse_hours(raw: str) -> tuple[float | None, str | None]:
    if not raw.strip():
        return None, None
    try:
        return float(raw), None
    except ValueError:
        return None, "must be a number of hours, e.g. 2 or 1.5"


@router.post("/launch/{template}")
async def launch(template: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep) -> Response:
    data = await request.form()
    check_csrf(request, str(data.get("csrf_token", "")))
    member_of = await groups.names_of(session, user)
    tpl = _template(hub, user, template, member_of)
    raw = {k: v for k, v in data.items() if isinstance(v, str)}
    name = raw.get("name", "").strip()
    params, fields = views.form_params(tpl, raw)
    hours, hours_error = _parse_hours(raw.get("hours", ""))
    if hours_error:
        fields["hours"] = hours_error
    form = {"name": name, "size": raw.get("size", ""), "hours": raw.get("hours", ""),
            "backend": raw.get("backend", ""), "params": {p.name: raw.get(f"param.{p.name}") for p in tpl.params},
            "input": raw.get("input", ""), "public": "public" in raw, "sleep": "sleep_when_idle" in raw,
            "replicas": raw.get("replicas", ""), "custom": {k: raw.get(n, "") for n, k in CUSTOM_FIELDS.items()},
            "owner": raw.get("owner", "").strip() if user.is_admin else ""}
    owner = user
    if form["owner"] and form["owner"] != user.name:  # an admin launching for someone (theirs, on their quota)
        found = await users.get_user(session, name=form["owner"])
        if found is None:
            fields["owner"] = f"no user named {form['owner']!r}"
        else:
            owner, member_of = found, await groups.names_of(session, found)
    custom = _parse_custom(raw, fields) if form["size"] == svc.CUSTOM else None
    service = tpl.kind == "service"  # whether it is public, may sleep, and its replicas are a service's choices
    replicas, replicas_error = parse_replicas(form["replicas"]) if service else (None, None)
    if replicas_error:
        fields["replicas"] = replicas_error
    if fields:
        return await _form_page(request, session, hub, user, tpl, form=form, fields=fields, status=422,
                                error="Some fields need a change.")
    try:
        inst = await svc.launch(session, user=owner, actor=user, catalog=hub.catalog, sizes=hub.settings.sizes,
                                quota=hub.settings.quota, backends=hub.backends, template=tpl.name, name=name,
                                size=raw.get("size") or None,
                                hours=hours, params=params, backend=raw.get("backend") or None, now=hub.clock(),
                                groups=member_of, input=(raw.get("input") or None) if tpl.input != "none" else None,
                                public=form["public"] if service else None,
                                min_replicas=(0 if form["sleep"] else 1) if service else None, replicas=replicas,
                                custom=custom)
    except ServiceError as exc:
        if isinstance(exc, Conflict) and "template" in exc.fields:  # single-instance mode: open the first instead
            return await _form_page(request, session, hub, user, tpl, form=form, status=exc.status,
                                    error=_sentence(exc.message), first=await _first_of(session, user, tpl))
        return await _form_page(request, session, hub, user, tpl, form=form, fields=exc.fields, status=exc.status,
                                error=_sentence(exc.message) if not exc.fields else "Some fields need a change.")
    await session.commit()
    return RedirectResponse(_landing(inst), status_code=303)


def _landing(inst: Instance) -> str:
    """Where a launch goes next: a job's or a service's details (a job's log, metrics and artifacts; how
    to call a service, and its traffic), else its progress (which opens a workspace once ready)."""
    return f"/instances/{inst.id}/progress" if inst.kind == Kind.WORKSPACE else f"/instances/{inst.id}"


def _sentence(text: str) -> str:
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


@router.post("/instances/{instance_id}/retry")
async def retry(instance_id: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep) -> Response:
    """Launch an ended instance again with the same choices (its owner only)."""
    data = await request.form()
    check_csrf(request, str(data.get("csrf_token", "")))
    old: Instance = await svc.get_instance(session, user=user, instance_id=instance_id)
    if old.owner_id != user.id:
        raise Forbidden("only its owner can launch it again")
    if not old.is_terminal or hub.catalog.get(old.template) is None:
        return RedirectResponse(f"/launch/{old.template}?again={old.id}" if hub.catalog.get(old.template)
                                else "/launch", status_code=303)
    try:
        inst = await svc.launch(session, user=user, catalog=hub.catalog, sizes=hub.settings.sizes,
                                quota=hub.settings.quota, backends=hub.backends, template=old.template, name=old.name,
                                size=old.size,
                                hours=old.hours, params=dict(old.params or {}), backend=old.backend, now=hub.clock(),
                                groups=await groups.names_of(session, user), input=old.input_folder,
                                custom=svc.size_of(old) if old.size == svc.CUSTOM else None,
                                **({"public": bool(old.public), "min_replicas": old.min_replicas,
                                    "replicas": old.replicas} if old.kind == Kind.SERVICE else {}))
    except ServiceError:  # the name is taken again, or the template changed: let the user choose
        return RedirectResponse(f"/launch/{old.template}?again={old.id}", status_code=303)
    await session.commit()
    return RedirectResponse(_landing(inst), status_code=303)
