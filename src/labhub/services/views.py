"""What the web pages show: page-shaped reads, choices with reasons, and plain words.

Short read queries and pure helpers the HTML pages need and the REST API does
not; no FastAPI, no network calls.  Functions take keyword-only arguments.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.backends.base import Backend, LaunchSpec, Resources
from labhub.catalog import Catalog, Template
from labhub.models import ACTIVE, Event, Instance, Status, User
from labhub.services.errors import Conflict, Forbidden, NotFound
from labhub.services.instances import resolve_backend, template_allowed
from labhub.services.lifecycle import event_dict
from labhub.settings import Size

LOG_MARKER = "\n--- last log lines ---\n"


# -- the catalog and the launch form ------------------------------------------------------------
@dataclass(frozen=True)
class SizeChoice:
    """A size as the launch form offers it: allowed, or not and why."""

    name: str
    cpus: float
    memory_mb: int
    gpus: int
    description: str
    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class TemplateCard:
    """A catalog entry as a card: what it gives, and whether this user can launch it."""

    template: Template
    available: bool
    reason: str
    gives: list[str] = field(default_factory=list)


def _probe_spec(size: Size) -> LaunchSpec:
    """A minimal spec to ask a backend whether it could run a size at all (pure)."""
    return LaunchSpec(instance_id="0" * 32, owner="probe", name="probe", kind="workspace", command=["true"],
                      env={}, resources=Resources(cpus=size.cpus, memory_mb=size.memory_mb, gpus=size.gpus),
                      base_url="/", token="-", time_limit_s=60)  # noqa: S106 - not a secret


def size_choices(template: Template, *, sizes: Mapping[str, Size], backends: Mapping[str, Backend]) -> list[SizeChoice]:
    """Every configured size, marked allowed for ``template`` or with the reason it is not."""
    offered = template.sizes or list(sizes)
    usable = [backends[b] for b in (template.backends or list(backends)) if b in backends]
    out = []
    for name, size in sizes.items():
        reason = "" if name in offered else "not offered by this template"
        if not reason and not usable:
            reason = "no enabled backend can run this template"
        if not reason:
            refusals = [b.unsupported(_probe_spec(size)).get("size", "") for b in usable]
            if all(refusals):
                reason = refusals[0]
        out.append(SizeChoice(name=name, cpus=size.cpus, memory_mb=size.memory_mb, gpus=size.gpus,
                              description=size.description, allowed=not reason, reason=reason))
    return out


def default_size(template: Template, choices: Sequence[SizeChoice]) -> str:
    allowed = [c.name for c in choices if c.allowed]
    if template.default_size in allowed:
        return template.default_size  # type: ignore[return-value]
    return allowed[0] if allowed else ""


def _amount(value: float) -> str:
    return f"{value:g}"


def describe_gives(template: Template, choices: Sequence[SizeChoice]) -> list[str]:
    """Short lines saying what a template gives you (for its catalog card)."""
    allowed = [c for c in choices if c.allowed]
    lines = []
    if allowed:
        top = max(allowed, key=lambda c: (c.gpus, c.cpus, c.memory_mb))
        gpu = f", up to {top.gpus} GPU{'s' if top.gpus > 1 else ''}" if top.gpus else ""
        lines.append(f"Up to {_amount(top.cpus)} CPUs and {_amount(top.memory_mb / 1024)} GiB memory{gpu}")
    lines.append(f"Runs for {_amount(template.hours.default)} h by default, up to {_amount(template.hours.max)} h")
    if template.idle_timeout_hours:
        lines.append(f"Stops after {_amount(template.idle_timeout_hours)} h without use")
    if template.kind == "workspace":
        lines.append("Opens in your browser; your home directory is kept between launches")
    if template.params:
        lines.append(f"{len(template.params)} setting{'s' if len(template.params) > 1 else ''} you can choose")
    return lines


def catalog_cards(catalog: Catalog, *, user: User, groups: set[str], sizes: Mapping[str, Size],
                  backends: Mapping[str, Backend]) -> list[TemplateCard]:
    """Every template as a card; templates this user cannot launch say why."""
    cards = []
    for tpl in catalog:
        choices = size_choices(tpl, sizes=sizes, backends=backends)
        reason = ""
        if not template_allowed(tpl, user=user, groups=groups):
            reason = f"only for members of: {', '.join(tpl.groups or [])}"
        elif resolve_backend(tpl, None, backends)[1]:
            reason = "no enabled backend can run it on this hub"
        elif not any(c.allowed for c in choices):
            reason = "none of its sizes can run on this hub"
        cards.append(TemplateCard(template=tpl, available=not reason, reason=reason,
                                  gives=describe_gives(tpl, choices)))
    return cards


async def active_names(session: AsyncSession, *, user: User) -> set[str]:
    """Names the user's active instances hold (a new launch cannot reuse them)."""
    rows = await session.execute(select(Instance.active_name).where(
        Instance.owner_id == user.id, Instance.active_name.is_not(None)))
    return {name for name in rows.scalars() if name}


def suggest_name(template: str, taken: set[str]) -> str:
    """``<template>-<n>`` with the smallest n not taken (always a valid name)."""
    base = re.sub(r"-{2,}", "-", template[:56]).rstrip("-") or "instance"
    n = 1
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def form_params(template: Template, form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Typed parameter values from an HTML form's ``param.NAME`` fields, and conversion errors.

    Empty fields are omitted (the template's default applies); an unchecked
    boolean box is ``False``.  Range and pattern checks are the template's
    (:meth:`Template.check_params`), applied by the launch service.
    """
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for param in template.params:
        raw = form.get(f"param.{param.name}")
        if param.type == "boolean":
            values[param.name] = raw is not None
            continue
        if raw is None or raw.strip() == "":
            continue
        if param.type == "integer":
            try:
                values[param.name] = int(raw.strip())
            except ValueError:
                errors[f"params.{param.name}"] = "must be a whole number"
        elif param.type == "number":
            try:
                values[param.name] = float(raw.strip())
            except ValueError:
                errors[f"params.{param.name}"] = "must be a number"
        else:
            values[param.name] = raw
    return values, errors


# -- instances ------------------------------------------------------------------------------------
async def list_events(session: AsyncSession, *, instance_id: str, after: int = 0) -> list[Event]:
    rows = await session.execute(
        select(Event).where(Event.instance_id == instance_id, Event.id > after).order_by(Event.id))
    return list(rows.scalars())


async def last_event_id(session: AsyncSession) -> int:
    """The newest event id overall (a live view replays what came after it)."""
    return (await session.execute(select(func.max(Event.id)))).scalar_one() or 0


EVENTS_SINCE_LIMIT = 500


async def events_since(session: AsyncSession, *, user: User, after: int, all_owners: bool = False,
                       limit: int = EVENTS_SINCE_LIMIT) -> list[dict[str, Any]]:
    """Events after ``after`` on the user's instances (admins with ``all_owners``: everyone's)."""
    if all_owners and not user.is_admin:
        raise Forbidden("only admins may watch every user's instances")
    query = select(Event, Instance.owner_id).join(Instance, Instance.id == Event.instance_id) \
        .where(Event.id > after).order_by(Event.id).limit(limit)
    if not all_owners:
        query = query.where(Instance.owner_id == user.id)
    return [{**event_dict(e), "owner_id": owner_id} for e, owner_id in (await session.execute(query)).all()]


def split_failure(message: str) -> tuple[str, list[str]]:
    """A failure message as ``(what happened, last log lines)``."""
    head, _, tail = (message or "").partition(LOG_MARKER)
    return head.strip(), [line for line in tail.splitlines()] if tail else []


_STOPPED_BECAUSE = {
    "user": "Stopped by its owner.",
    "idle": "Stopped because nobody used it for longer than the template's idle timeout.",
    "exited": "The program exited on its own.",
    "user_disabled": "Stopped because the owner's account was disabled by an admin.",
}


def explain_end(inst: Instance, *, events: Sequence[Event] = ()) -> str | None:
    """Why an ended instance ended, in plain words; None while it is active.

    ``events`` (its timeline) lets an admin stop name the admin.
    """
    if not inst.is_terminal:
        return None
    lines = split_failure(inst.message)[0].splitlines()
    headline = lines[0].strip() if lines else ""
    if inst.status == Status.SUCCEEDED:
        return "Finished successfully."
    if inst.status == Status.EXPIRED or inst.reason == "expired":
        return f"Expired: the {inst.hours:g} h chosen at launch ran out."
    if inst.status == Status.FAILED:
        if headline.startswith("failed to start: "):
            return f"Failed to start: {headline.removeprefix('failed to start: ')}"
        if inst.reason == "start_timeout":
            return f"Failed to start: {'it ' if headline.startswith('did not') else ''}{headline}"
        if inst.reason == "submit_failed":
            return f"The backend refused to start it: {headline}"
        return f"Failed: {headline}" if headline else "Failed."
    if inst.reason == "admin":
        who = next((e.message.removeprefix("stop requested by admin ") for e in reversed(events)
                    if e.reason == "admin" and e.message.startswith("stop requested by admin ")), "")
        return f"Stopped by an admin ({who})." if who else "Stopped by an admin."
    if inst.reason in _STOPPED_BECAUSE:
        return _STOPPED_BECAUSE[inst.reason]
    return f"Stopped: {headline}" if headline else "Stopped."


async def delete_instance(session: AsyncSession, *, user: User, instance_id: str) -> Instance:
    """Remove an ended instance and its events from the history (owner or admin)."""
    inst = await session.get(Instance, instance_id)
    if inst is None:
        raise NotFound("no such instance")
    if inst.owner_id != user.id and not user.is_admin:
        raise Forbidden("not your instance")
    if inst.status in ACTIVE:
        raise Conflict("stop it first: only ended instances can be deleted")
    await session.delete(inst)
    return inst


def relative(when: dt.datetime | None, now: dt.datetime) -> str:
    """``in 3 h 5 min`` / ``12 min ago`` / ``—``."""
    if when is None:
        return "—"
    seconds = int((when - now).total_seconds())
    span = abs(seconds)
    if span < 60:
        text = f"{span} s"
    elif span < 3600:
        text = f"{span // 60} min"
    elif span < 86400:
        text = f"{span // 3600} h {span % 3600 // 60} min" if span % 3600 >= 60 else f"{span // 3600} h"
    else:
        text = f"{span // 86400} d" + (f" {span % 86400 // 3600} h" if span % 86400 >= 3600 else "")
    return f"in {text}" if seconds >= 0 else f"{text} ago"
