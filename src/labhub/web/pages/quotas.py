"""Quotas on pages: Home's "Your quota" panel, and the admin forms for a user's quota (Admin › Users)
and a group's quota and launch policy (Admin › Groups).

The forms post the fields as typed; a blank limit inherits (from the groups, then the site).  A saved
change applies to the next launch: what runs keeps running, and the page lists what is now over its
limits.  Every save wakes the reconciler, whose admission pass starts what a raised limit lets through
(after the commit: the page, rendered from the same transaction, shows the limits saved).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, get_args

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.api.deps import HubDep, SessionDep
from labhub.hub import Hub
from labhub.models import Group, User
from labhub.services import groups, quotas, users
from labhub.services import policy as launch_policy
from labhub.services.errors import Invalid
from labhub.web.pages.common import AdminPage, check_csrf, gib, render

router = APIRouter(prefix="/admin", include_in_schema=False)

LABELS = {"instances": "Instances", "cpus": "CPUs", "memory_mb": "Memory", "gpus": "GPUs",
          "gpu_hours": "GPU-hours", "cpu_hours": "CPU-hours", "storage_mb": "Storage"}
FIELD_LABELS = {**LABELS, "memory_mb": "Memory (MB)", "storage_mb": "Storage (MB)"}  # the forms take MB
HOURS = ("gpu_hours", "cpu_hours")
PERIOD_WORDS = {"day": "today", "week": "this week", "month": "this month"}
NOTICE_OVER = "They keep running; the new limits apply to the next launch."


def label(key: str, *, field: bool = False) -> str:
    return (FIELD_LABELS if field else LABELS).get(key) or quotas.UNITS.get(key, key)


def integer(key: str) -> bool:
    """Whether the limit ``key`` is a whole number (the form's ``step``)."""
    return int in get_args(quotas.QuotaValues.model_fields[key].annotation)


def _num(value: float) -> str:
    return f"{round(value, 1):g}" if isinstance(value, float) else str(value)


def amount(key: str, value: float) -> str:
    """One limit's or usage's value as pages show it (memory in GiB, storage in MB or GiB)."""
    if key == "memory_mb":
        return gib(int(value))
    if key == "storage_mb":
        return f"{round(value / 1024, 1):g} GiB" if value >= 1024 else f"{round(value, 1):g} MB"
    return _num(value)


def site_storage_mb(hub: Hub) -> int:
    """The site's storage limit per user where no quota sets one (as the API's quota report says)."""
    return hub.settings.storage.max_user_bytes // 2**20


async def report_of(session: AsyncSession, hub: Hub, user: User) -> dict[str, Any]:
    """:func:`labhub.services.quotas.quota_report` of ``user`` on this hub (now, the site's defaults)."""
    return await quotas.quota_report(session, user=user, site=hub.settings.quota, now=hub.clock(),
                                     storage_mb=site_storage_mb(hub))


def source_words(source: str) -> str:
    """Where a limit in force comes from, in words."""
    if source == "user":
        return "set for this user"
    if source.startswith("group:"):
        return f"from the group {source.removeprefix('group:')}"
    return "the site's default"


def panel(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Home's "Your quota" rows (of :func:`labhub.services.quotas.quota_report`): each limit in force as
    usage against it ("GPU-hours 2.5 of 40 this month"); empty when no limit is set."""
    rows = []
    for key in quotas.LIMITS:
        limit = report["limits"].get(key)
        if limit is None:
            continue
        used = report["usage"].get(key, 0)
        text = f"{label(key)} {amount(key, used)} of {amount(key, limit)}"
        if key in HOURS:
            text += " " + PERIOD_WORDS.get(report["period"], "this period")
        rows.append({"key": key, "text": text, "used": used, "limit": limit, "over": used > limit,
                     "source": source_words(report["source"].get(key, "site"))})
    return rows


def parse_numbers(raw: Mapping[str, str], keys: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The non-blank form fields ``keys`` (form name -> result key) as numbers, or field errors (keyed by
    result key); the ranges are the services' to check."""
    values: dict[str, Any] = {}
    fields: dict[str, str] = {}
    for name, key in keys.items():
        text = raw.get(name, "").strip()
        if not text:
            continue
        try:
            values[key] = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                values[key] = number
            else:
                fields[key] = "must be a number, e.g. 4 or 2.5"
    return values, fields


def _checked(given: Mapping[str, Any], fields: dict[str, str], parse: Callable[[Mapping[str, Any]], Any]
             ) -> dict[str, str]:
    """``fields`` with the service's ``parse``'s errors of what ``given`` holds: every problem at once."""
    try:
        parse(given)
    except Invalid as exc:
        return {**exc.fields, **fields}
    return fields


def _form(data: Any) -> dict[str, str]:
    return {k: v for k, v in data.items() if isinstance(v, str)}


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


# -- a user's quota ----------------------------------------------------------------------------------
async def _user_page(request: Request, session: AsyncSession, hub: Hub, user: User, *, status: int = 200,
                     form: Mapping[str, str] | None = None, fields: Mapping[str, str] | None = None,
                     saved: bool = False, over: list[str] | None = None) -> Response:
    report = await report_of(session, hub, user)
    own = report["quota"]
    values = dict(form) if form is not None else {k: "" if own.get(k) is None else f"{own[k]:g}" for k in quotas.LIMITS}
    return render(request, "admin_quota.html", status=status, section="admin", tab="users", who=user,
                  report=report, rows=_limit_rows(report), values=values, fields=dict(fields or {}),
                  saved=saved, over=over or [], period=PERIOD_WORDS.get(report["period"], "this period"),
                  notice_over=NOTICE_OVER)


def _limit_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each limit as the admin form shows it: its label, what is in force and from where, the usage."""
    rows = []
    for key in quotas.LIMITS:
        limit = report["limits"].get(key)
        rows.append({"key": key, "label": label(key, field=True), "integer": integer(key),
                     "limit": "no limit" if limit is None else f"{limit:g}",
                     "source": source_words(report["source"][key]) if key in report["source"] else "",
                     "used": _num(report["usage"].get(key, 0))})
    return rows


@router.get("/users/{name}/quota")
async def user_quota(name: str, request: Request, _: AdminPage, session: SessionDep, hub: HubDep) -> Response:
    return await _user_page(request, session, hub, await users.require_user(session, name))


@router.post("/users/{name}/quota")
async def set_user_quota(name: str, request: Request, actor: AdminPage, session: SessionDep,
                         hub: HubDep) -> Response:
    """Replace the user's own limits (blank: inherit); the page again, saying what is now over."""
    raw = _form(await request.form())
    check_csrf(request, raw.get("csrf_token"))
    user = await users.require_user(session, name)
    given, fields = parse_numbers(raw, {k: k for k in quotas.LIMITS})
    fields = _checked(given, fields, quotas.parse)
    form = {k: raw.get(k, "") for k in quotas.LIMITS}
    if not fields:
        try:
            over = await quotas.set_user_quota(session, actor=actor, user=user, given=given,
                                               site=hub.settings.quota, now=hub.clock(), address=_address(request))
        except Invalid as exc:
            fields = exc.fields
        else:
            page = await _user_page(request, session, hub, user, saved=True, over=over)  # (rendered before the commit)
            await session.commit()
            hub.reconciler.wake_all()  # a raised limit admits what waits
            return page
    return await _user_page(request, session, hub, user, status=422, form=form, fields=fields)


# -- groups: their quota and launch policy -------------------------------------------------------------
@router.get("/groups")
async def groups_page(request: Request, _: AdminPage, session: SessionDep) -> Response:
    rows = await groups.list_groups(session)
    return render(request, "admin_groups.html", section="admin", tab="groups", groups=rows,
                  labels={k: label(k) for k in quotas.LIMITS}, limits=quotas.LIMITS)


POLICY_NUMBERS = {"max_hours": "max_hours", "default_hours": "default_hours", "custom.cpus": "cpus",
                  "custom.memory_mb": "memory_mb", "custom.gpus": "gpus"}


def _policy_values(group: Group) -> dict[str, Any]:
    """The policy form's fields as stored."""
    policy = group.policy or {}
    custom = policy.get("custom_size") or {}

    def text(value: Any) -> str:
        return "" if value is None else f"{value:g}"

    return {"priority": str(group.priority), "self_service": group.self_service,
            "max_hours": text(policy.get("max_hours")), "default_hours": text(policy.get("default_hours")),
            "single_instance": bool(policy.get("single_instance")), "custom.cpus": text(custom.get("cpus")),
            "custom.memory_mb": text(custom.get("memory_mb")), "custom.gpus": text(custom.get("gpus"))}


async def _group_page(request: Request, session: AsyncSession, group: Group, *, status: int = 200,
                      quota_form: Mapping[str, str] | None = None, quota_fields: Mapping[str, str] | None = None,
                      policy_form: Mapping[str, Any] | None = None, policy_fields: Mapping[str, str] | None = None,
                      saved: str = "", over: list[str] | None = None) -> Response:
    own = group.quota or {}
    quota_values = dict(quota_form) if quota_form is not None else {
        k: "" if own.get(k) is None else f"{own[k]:g}" for k in quotas.LIMITS}
    return render(request, "admin_group.html", status=status, section="admin", tab="groups", group=group,
                  members=[u.name for u, _ in await groups.members(session, group=group)],
                  rows=[{"key": k, "label": label(k, field=True), "integer": integer(k)} for k in quotas.LIMITS],
                  quota_values=quota_values, quota_fields=dict(quota_fields or {}),
                  policy=dict(policy_form) if policy_form is not None else _policy_values(group),
                  policy_fields=dict(policy_fields or {}), saved=saved, over=over or [], notice_over=NOTICE_OVER)


@router.get("/groups/{group}")
async def group_page(group: str, request: Request, _: AdminPage, session: SessionDep) -> Response:
    return await _group_page(request, session, await groups.get_group(session, name=group))


@router.post("/groups/{group}/quota")
async def set_group_quota(group: str, request: Request, actor: AdminPage, session: SessionDep,
                          hub: HubDep) -> Response:
    """Replace the group's limits for its members (blank: no group limit); the page again, saying which
    members are now over."""
    raw = _form(await request.form())
    check_csrf(request, raw.get("csrf_token"))
    row = await groups.get_group(session, name=group)
    given, fields = parse_numbers(raw, {k: k for k in quotas.LIMITS})
    fields = _checked(given, fields, quotas.parse)
    if not fields:
        try:
            over = await quotas.set_group_quota(session, actor=actor, group=row, given=given,
                                                site=hub.settings.quota, now=hub.clock(), address=_address(request))
        except Invalid as exc:
            fields = exc.fields
        else:
            page = await _group_page(request, session, row, saved="quota", over=over)
            await session.commit()
            hub.reconciler.wake_all()  # a raised limit admits what waits
            return page
    return await _group_page(request, session, row, status=422, quota_fields=fields,
                             quota_form={k: raw.get(k, "") for k in quotas.LIMITS})


PRIORITY_RANGE = (-1000, 1000)  # as the API's PolicyIn


@router.post("/groups/{group}/policy")
async def set_group_policy(group: str, request: Request, actor: AdminPage, session: SessionDep,
                           hub: HubDep) -> Response:
    """Replace the group's launch policy: priority, self-service, durations, single instance, the largest
    custom size (all three blank: none)."""
    raw = _form(await request.form())
    check_csrf(request, raw.get("csrf_token"))
    row = await groups.get_group(session, name=group)
    form: dict[str, Any] = {k: raw.get(k, "") for k in ("priority", *POLICY_NUMBERS)}
    form.update(self_service="self_service" in raw, single_instance="single_instance" in raw)
    numbers, fields = parse_numbers(raw, POLICY_NUMBERS)
    priority = _priority(form["priority"], fields)
    policy: dict[str, Any] = {k: numbers[k] for k in ("max_hours", "default_hours") if k in numbers}
    if form["single_instance"]:
        policy["single_instance"] = True
    custom = {k: numbers[k] for k in ("cpus", "memory_mb", "gpus") if k in numbers}
    if custom or any(raw.get(f"custom.{k}", "").strip() for k in ("cpus", "memory_mb", "gpus")):
        policy["custom_size"] = custom
    fields = {_policy_field(k): v for k, v in _checked(policy, fields, launch_policy.parse).items()}
    if not fields:
        try:
            await groups.set_policy(session, actor=actor, group=row, priority=priority,
                                    self_service=form["self_service"], policy=policy, address=_address(request))
        except Invalid as exc:
            fields = {_policy_field(k): v for k, v in exc.fields.items()}
        else:
            page = await _group_page(request, session, row, saved="policy")
            await session.commit()
            hub.reconciler.wake_all()  # a new priority reorders the queue
            return page
    return await _group_page(request, session, row, status=422, policy_form=form, policy_fields=fields)


def _priority(text: str, fields: dict[str, str]) -> int | None:
    low, high = PRIORITY_RANGE
    if not text.strip():
        return None  # unchanged
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        fields["priority"] = f"must be a whole number from {low} to {high}"
        return None
    return value


def _policy_field(key: str) -> str:
    """A policy error's key as the form names its field (``custom_size.cpus``, ``cpus`` -> ``custom.cpus``)."""
    key = key.removeprefix("custom_size.")
    if key == "custom_size":
        return "custom.cpus"
    return f"custom.{key}" if key in ("cpus", "memory_mb", "gpus") else key

