"""Launching: the catalog as cards, the launch form, and launching again after a failure."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.api.deps import HubDep, SessionDep
from labhub.catalog import Template
from labhub.hub import Hub
from labhub.models import Instance, User
from labhub.services import groups, views
from labhub.services import instances as svc
from labhub.services.errors import Forbidden, NotFound, ServiceError
from labhub.services.instances import template_allowed
from labhub.web.pages.common import PageUser, check_csrf, render
from labhub.web.pages.folders import size

router = APIRouter(include_in_schema=False)


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
async def catalog(request: Request, user: PageUser, session: SessionDep, hub: HubDep) -> Response:
    return render(request, "catalog.html", section="launch",
                  cards=_cards(hub, user, await groups.names_of(session, user)))


async def _form_page(request: Request, session: AsyncSession, hub: Hub, user: User, tpl: Template, *,
                     form: dict[str, Any], fields: dict[str, str] | None = None, error: str = "",
                     status: int = 200) -> Response:
    choices = views.size_choices(tpl, sizes=hub.settings.sizes, backends=hub.backends)
    card = next(c for c in _cards(hub, user, await groups.names_of(session, user)) if c.template.name == tpl.name)
    backends = [b for b in (tpl.backends or list(hub.backends)) if b in hub.backends]
    taken = sorted(await views.active_names(session, user=user))
    inputs = await _folder_choices(session, hub, user) if tpl.input != "none" else []
    return render(request, "launch.html", status=status, section="launch", tpl=tpl, card=card, sizes=choices,
                  backends=backends, taken=taken, form=form, fields=fields or {}, error=error,
                  address=_address_pattern(hub, user.name), inputs=inputs)


async def _folder_choices(session: AsyncSession, hub: Hub, user: User) -> list[dict[str, str]]:
    """The user's folders as the input select offers them."""
    rows = await hub.folders.list(session, owner_id=user.id)
    return [{"name": r.name, "label": f"{r.name} ({r.files} file{'' if r.files == 1 else 's'}, {size(r.bytes)})"}
            for r in rows]


def _address_pattern(hub: Hub, owner: str) -> tuple[str, str]:
    """What comes before and after an instance's name in its address (the form previews it)."""
    if not hub.subdomains:
        return f"/user/{owner}/", "/"
    before, _, after = hub.origin_url(f"\0--{owner}").partition("\0")
    return before, after


@router.get("/launch/{template}")
async def launch_form(template: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                      again: str = "", input: str = "") -> Response:  # noqa: A002 - the API's field name
    """The form; ``?again=<instance id>`` fills it from an earlier launch, ``?input=<folder>`` chooses
    a job's input folder."""
    tpl = _template(hub, user, template, await groups.names_of(session, user))
    choices = views.size_choices(tpl, sizes=hub.settings.sizes, backends=hub.backends)
    taken = await views.active_names(session, user=user)
    form: dict[str, Any] = {"name": views.suggest_name(tpl.name, taken), "size": views.default_size(tpl, choices),
                            "hours": f"{tpl.hours.default:g}", "backend": "", "params": {}, "input": input}
    if again:
        old = await svc.get_instance(session, user=user, instance_id=again)
        if old.template == tpl.name:
            form.update(name=old.name if old.name not in taken else form["name"], size=old.size,
                        hours=f"{old.hours:g}", backend=old.backend, params=dict(old.params or {}),
                        input=input or old.input_folder or "")
    return await _form_page(request, session, hub, user, tpl, form=form)


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
            "input": raw.get("input", "")}
    if fields:
        return await _form_page(request, session, hub, user, tpl, form=form, fields=fields, status=422,
                                error="Some fields need a change.")
    try:
        inst = await svc.launch(session, user=user, catalog=hub.catalog, sizes=hub.settings.sizes,
                                backends=hub.backends, template=tpl.name, name=name, size=raw.get("size") or None,
                                hours=hours, params=params, backend=raw.get("backend") or None, now=hub.clock(),
                                groups=member_of, input=(raw.get("input") or None) if tpl.input != "none" else None)
    except ServiceError as exc:
        return await _form_page(request, session, hub, user, tpl, form=form, fields=exc.fields, status=exc.status,
                                error=_sentence(exc.message) if not exc.fields else "Some fields need a change.")
    await session.commit()
    return RedirectResponse(_landing(inst), status_code=303)


def _landing(inst: Instance) -> str:
    """Where a launch goes next: a job's details (its log, metrics and artifacts), else its progress."""
    return f"/instances/{inst.id}" if inst.kind == "job" else f"/instances/{inst.id}/progress"


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
                                backends=hub.backends, template=old.template, name=old.name, size=old.size,
                                hours=old.hours, params=dict(old.params or {}), backend=old.backend, now=hub.clock(),
                                groups=await groups.names_of(session, user), input=old.input_folder)
    except ServiceError:  # the name is taken again, or the template changed: let the user choose
        return RedirectResponse(f"/launch/{old.template}?again={old.id}", status_code=303)
    await session.commit()
    return RedirectResponse(_landing(inst), status_code=303)
