"""Launching, finding, listing and stopping instances."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from labhub.backends.base import Backend, Capability, LaunchSpec, Resources
from labhub.catalog import Catalog, Template
from labhub.catalog.schema import NAME_RE
from labhub.models import ACTIVE, TERMINAL, AuditEvent, Event, Folder, Instance, Kind, Status, User, utcnow
from labhub.services import admission, policy, quotas
from labhub.services.errors import Conflict, Forbidden, Invalid, NotFound, ServiceError
from labhub.services.lifecycle import can_transition, note, record_event, transition
from labhub.settings import QuotaSettings, Size

NAME_RULE = "must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-', without '--'"


def template_allowed(template: Template, *, user: User, groups: set[str]) -> bool:
    return user.is_admin or not template.groups or bool(groups & set(template.groups))


def resolve_backend(template: Template, requested: str | None, enabled: Mapping[str, Backend]) -> tuple[str | None, str | None]:
    """``(backend name, None)`` or ``(None, reason)``."""
    allowed = [b for b in (template.backends or list(enabled)) if b in enabled]
    if not allowed:
        return None, "no enabled backend can run this template"
    if requested is None:
        return allowed[0], None
    if requested not in allowed:
        return None, f"must be one of: {', '.join(allowed)}"
    return requested, None


def build_spec(
    instance: Instance, template: Template, *, owner: str, token: str, home: Path | None, base_url: str,
    backend: Backend, account: str | None = None, extra_env: Mapping[str, str] | None = None,
    runtime: Path | None = None, dirs: tuple[str, ...] = (), readable: tuple[Path, ...] = (),
    params: Mapping[str, Any] | None = None,
) -> LaunchSpec:
    """The backend's view of an instance (pure).

    ``base_url`` is the path the instance is served under on its origin;
    ``backend`` decides how it is told where to listen (a Unix socket where the
    backend offers one and the template can use it).  ``extra_env`` (a job's
    input and output places) wins over the template's ``env``.
    """
    unix = Capability.UNIX_SOCKET in backend.capabilities
    command, env = template.render({**(instance.params or {}), **(params or {})}, unix_socket=unix,
                                   replicas=instance.replicas or 1, instance=instance.name)
    env = {**env, **(extra_env or {}), "LABHUB_INSTANCE_ID": instance.id, "LABHUB_TOKEN": token,
           "JUPYTER_TOKEN": token}
    return LaunchSpec(
        instance_id=instance.id,
        owner=owner,
        name=instance.name,
        kind=instance.kind,
        command=command,
        env=env,
        resources=Resources(cpus=instance.cpus, memory_mb=instance.memory_mb, gpus=instance.gpus),
        base_url=base_url,
        token=token,
        time_limit_s=max(60, int(instance.hours * 3600)),
        home=str(home) if home is not None else None,
        account=account,
        options={"slurm": template.slurm.model_dump(exclude_none=True)} if template.slurm else {},
        runtime=str(runtime) if runtime is not None else None,
        dirs=dirs,
        readable=tuple(str(p) for p in readable),
    )


async def launch(
    session: AsyncSession,
    *,
    user: User,
    catalog: Catalog,
    sizes: Mapping[str, Size],
    backends: Mapping[str, Backend],
    template: str,
    name: str,
    size: str | None = None,
    hours: float | None = None,
    params: dict[str, Any] | None = None,
    backend: str | None = None,
    groups: set[str] | None = None,
    input: str | None = None,  # noqa: A002 - the API's field name
    public: bool | None = None,
    min_replicas: int | None = None,
    replicas: int | None = None,
    custom: Mapping[str, Any] | None = None,
    quota: QuotaSettings | None = None,
    actor: User | None = None,
    now: dt.datetime | None = None,
) -> Instance:
    """Validate a launch request and record it as ``requested``, or ``queued`` for admission.

    Every problem is reported at once, keyed by field; nothing is written
    unless the whole request is valid.  A launch that can never start (over
    the owner's quota, more than the backend has) is refused (``Invalid``);
    one that does not fit yet waits in the admission queue
    (:mod:`labhub.services.admission`).  ``size="custom"`` takes ``custom``
    (``cpus``, ``memory_mb``, ``gpus``) where the template or the owner's
    group policy allows it.  ``actor``: an admin launching for ``user``
    (default: ``user`` itself, who then needs self-service).  The reconciler
    does the rest.
    """
    errors: dict[str, str] = {}
    actor = actor or user
    if actor.id != user.id and not actor.is_admin:
        raise Forbidden("only admins may launch for another user")
    tpl = catalog.get(template)
    if tpl is None or not template_allowed(tpl, user=user, groups=groups or set()):
        raise Invalid("unknown template", fields={"template": f"no template named {template!r}"})
    member_of = (await quotas.groups_of(session, [user.id]))[user.id]
    rules = policy.of_groups(member_of)
    if actor.id == user.id and not user.is_admin and not rules.self_service:
        raise Forbidden("self-service is off for your groups: an admin launches instances for you")
    if not NAME_RE.match(name or "") or "--" in name:
        errors["name"] = NAME_RULE  # '--' separates the instance from its owner in its origin's name
    size = size or tpl.default_size or next(iter(tpl.sizes or sizes))
    allowed_sizes = [s for s in (tpl.sizes or list(sizes)) if s in sizes]
    limit = custom_limit(tpl, rules, sizes)
    preset = None
    if size == CUSTOM and limit is not None:
        preset, custom_errors = custom_size(custom or {}, limit)
        errors.update(custom_errors)
    elif size == CUSTOM:
        errors["size"] = f"this template takes no custom size; choose one of: {', '.join(allowed_sizes)}"
    elif size not in allowed_sizes:
        errors["size"] = f"must be one of: {', '.join(allowed_sizes + ([CUSTOM] if limit else []))}"
    elif custom:
        errors["custom"] = 'only with size "custom"'
    default_hours, max_hours = rules.hours(tpl.hours.default, tpl.hours.max)
    hours = default_hours if hours is None else hours
    if not (0 < hours <= max_hours):
        errors["hours"] = f"must be more than 0 and at most {max_hours:g}"
    values, param_errors = tpl.check_params(params or {})
    errors.update({f"params.{k}": v for k, v in param_errors.items()})
    backend_name, reason = resolve_backend(tpl, backend, backends)
    if reason:
        errors["backend"] = reason
    if input is not None and tpl.input == "none":
        errors["input"] = "this template reads no input folder"
    elif input is None and tpl.input == "required":
        errors["input"] = "name the folder this job reads (upload one first)"
    elif input is not None:
        found = await session.execute(select(Folder.id).where(Folder.owner_id == user.id, Folder.name == input))
        if found.first() is None:
            errors["input"] = f"you have no folder named {input!r}"
    errors.update(_service_fields(tpl, public, min_replicas))
    if replicas is not None and (tpl.service is None or not 1 <= replicas <= tpl.service.max_replicas):
        errors["replicas"] = (f"must be 1 to {tpl.service.max_replicas}" if tpl.service
                              else "only services have replicas")
    if errors:
        raise Invalid("invalid launch request", fields=errors)
    if rules.single_instance or tpl.single_instance:
        await _only_one(session, user=user, template=tpl)

    assert backend_name is not None
    preset = preset or sizes[size]
    count = replicas or 1  # each replica has the size: the instance holds their sum
    now = now or utcnow()
    instance = Instance(
        id=uuid.uuid4().hex,
        owner_id=user.id,
        name=name,
        active_name=name,
        template=tpl.name,
        kind=tpl.kind,
        size=size,
        cpus=preset.cpus * count,
        memory_mb=preset.memory_mb * count,
        gpus=preset.gpus * count,
        replicas=count,
        hours=hours,
        params=values,
        input_folder=input,
        public=bool(public),
        min_replicas=min_replicas if min_replicas is not None else (tpl.service.min_replicas if tpl.service else 1),
        backend=backend_name,
        status=Status.REQUESTED,
        created_at=now,
        expires_at=now + dt.timedelta(hours=hours),
        priority=rules.priority,
    )
    instance.owner = user
    spec = build_spec(instance, tpl, owner=user.name, token="-", home=None, base_url="/",  # noqa: S106
                      backend=backends[backend_name])
    if refused := backends[backend_name].unsupported(spec):
        raise Invalid("the backend cannot run this request", fields=refused)
    existing = await session.execute(
        select(Instance.id).where(Instance.owner_id == user.id, Instance.active_name == name)
    )
    if existing.first() is not None:
        raise Conflict("name already in use", fields={"name": f"you already have an instance named {name!r}"})
    site = quota or QuotaSettings()
    await admission.lock(session)  # until commit: this launch's decision sees every earlier one's
    seen = await admission.situation(session, backends=backends, site=site, now=now, owners=[user.id])
    if never := admission.refusal(admission.ask_of(instance), limits=seen.limits[user.id], usage=seen.usage[user.id],
                                  capacity=backends[backend_name].capacity(), hours=hours, period=site.period):
        raise Invalid("this launch can never start", fields=never)
    session.add(instance)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent launch with the same name won the race
        raise Conflict("name already in use", fields={"name": f"you already have an instance named {name!r}"}) from exc
    each = f" x {count} replicas" if count > 1 else ""
    what = f"custom size ({_describe_size(preset)})" if size == CUSTOM else f"size {size}"
    by = f" by admin {actor.name}" if actor.id != user.id else ""
    transition_msg = f"{tpl.title} requested{by}: {what}{each}, {hours:g} h, on {backend_name}"
    event = Event(instance_id=instance.id, at=now, status=Status.REQUESTED, reason="requested", message=transition_msg)
    session.add(event)
    record_event(session, event, owner_id=user.id)
    await admission.decide(session, seen, now=now, new=instance)
    if actor.id != user.id:
        session.add(AuditEvent(actor=actor.name, action="instance.launch_for", target=f"{user.name}/{name}",
                               detail={"instance": instance.id, "template": tpl.name}))
    return instance


CUSTOM = "custom"


def custom_limit(tpl: Template, rules: policy.Policy, sizes: Mapping[str, Size]) -> policy.CustomMax | None:
    """The largest custom size a launch of ``tpl`` may ask for, or None when it offers none: the owner's
    group policy's, else (a template with ``custom_size: true``) the largest preset's in each dimension."""
    if rules.custom_size is not None:
        return rules.custom_size
    if not tpl.custom_size or not sizes:
        return None
    presets = list(sizes.values())
    return policy.CustomMax(cpus=max(s.cpus for s in presets), memory_mb=max(s.memory_mb for s in presets),
                            gpus=max(s.gpus for s in presets))


def custom_size(given: Mapping[str, Any], limit: policy.CustomMax) -> tuple[Size | None, dict[str, str]]:
    """A custom size within ``limit``, or field errors (``custom.cpus``, ...) (pure)."""
    errors = {}
    values: dict[str, Any] = {}
    for key, kind, low in (("cpus", float, 0.1), ("memory_mb", int, 64), ("gpus", int, 0)):
        value = given.get(key, 0 if key == "gpus" else None)
        most = getattr(limit, key)
        if value is None:
            errors[f"custom.{key}"] = "required"
        elif isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
            errors[f"custom.{key}"] = "must be a whole number" if kind is int else "must be a number"
        elif not low <= value <= most:
            errors[f"custom.{key}"] = f"must be {low:g} to {most:g}"
        else:
            values[key] = kind(value)
    errors.update({f"custom.{k}": "unknown field" for k in given if k not in ("cpus", "memory_mb", "gpus")})
    if errors:
        return None, errors
    return Size(cpus=values["cpus"], memory_mb=values["memory_mb"], gpus=values["gpus"],
                description=_describe_size_values(values)), {}


def size_of(instance: Instance) -> dict[str, Any]:
    """The custom size one replica of ``instance`` has (what a relaunch asks for again)."""
    count = instance.replicas or 1
    return {"cpus": instance.cpus / count, "memory_mb": instance.memory_mb // count, "gpus": instance.gpus // count}


def _describe_size_values(values: Mapping[str, Any]) -> str:
    gpus = f", {values['gpus']} GPU{'s' if values['gpus'] != 1 else ''}" if values["gpus"] else ""
    return f"{values['cpus']:g} CPU{'s' if values['cpus'] != 1 else ''}, {values['memory_mb']} MB{gpus}"


def _describe_size(size: Size) -> str:
    return _describe_size_values({"cpus": size.cpus, "memory_mb": size.memory_mb, "gpus": size.gpus})


async def _only_one(session: AsyncSession, *, user: User, template: Template) -> None:
    """Single-instance mode: a second active instance of ``template`` is refused, naming the first."""
    first = (await session.execute(
        select(Instance.name).where(Instance.owner_id == user.id, Instance.template == template.name,
                                    Instance.status.in_([s.value for s in ACTIVE])).limit(1))).scalar()
    if first is not None:
        raise Conflict(f"you already have {template.title} running as {first!r}: open it instead",
                       fields={"template": f"one at a time: open {first!r} (at /user/{user.name}/{first}/)"})


def _service_fields(tpl: Template | None, public: bool | None, min_replicas: int | None) -> dict[str, str]:
    """Field errors of a service's options given to something that is not a service, or out of range."""
    errors = {}
    if tpl is not None and tpl.kind != "service":
        if public:
            errors["public"] = "only services can be public"
        if min_replicas is not None:
            errors["min_replicas"] = "only services scale"
    elif min_replicas not in (None, 0, 1):
        errors["min_replicas"] = "must be 0 (sleep when idle, woken by the next request) or 1 (keep running)"
    return errors


async def change_service(session: AsyncSession, *, user: User, instance_id: str, public: bool | None,
                         min_replicas: int | None, now: dt.datetime) -> Instance:
    """Make a service public or private, or change whether it may sleep: the owner's (or an admin's)
    call, audited.  A sleeping service that may no longer sleep is woken."""
    instance = await get_instance(session, user=user, instance_id=instance_id)
    if instance.kind != Kind.SERVICE:
        field = "public" if public is not None else "min_replicas"
        raise Invalid("not a service", fields={field: "only services have this option"})
    if errors := _service_fields(None, public, min_replicas):
        raise Invalid("invalid change", fields=errors)
    if instance.status in TERMINAL:
        raise Conflict("the service has ended", fields={"status": instance.status})
    changed = {}
    if public is not None and public != instance.public:
        instance.public = changed["public"] = public
    if min_replicas is not None and min_replicas != instance.min_replicas:
        instance.min_replicas = changed["min_replicas"] = min_replicas
        if min_replicas > 0 and instance.status == Status.SLEEPING:
            transition(session, instance, Status.REQUESTED, reason="woken", message="woken: it may no longer sleep",
                       now=now)
    if changed:
        session.add(AuditEvent(actor=user.name, action="service.change",
                               target=f"{instance.owner.name}/{instance.name}", detail=changed))
        note(session, instance, reason="changed", message=_describe_change(changed, user, instance), now=now)
    return instance


def _describe_change(changed: dict[str, Any], user: User, instance: Instance) -> str:
    parts = []
    if "public" in changed:
        parts.append("made public: anyone may call its inference routes (rate-limited)" if changed["public"]
                     else "made private: callers need a token")
    if "min_replicas" in changed:
        parts.append("may sleep when idle" if changed["min_replicas"] == 0 else "keeps running when idle")
    by = "" if user.id == instance.owner_id else f" (by admin {user.name})"
    return "; ".join(parts) + by


async def get_instance(session: AsyncSession, *, user: User, instance_id: str) -> Instance:
    """The instance if ``user`` may see it: 404 when it does not exist, 403 when it is someone else's."""
    instance = await session.get(Instance, instance_id)
    if instance is None:
        raise NotFound("no such instance")
    if instance.owner_id != user.id and not user.is_admin:
        raise Forbidden("not your instance")
    return instance


async def find_by_name(session: AsyncSession, *, owner: User, name: str) -> Instance | None:
    """The owner's active instance with this name, else the newest ended one."""
    rows = await session.execute(
        select(Instance)
        .where(Instance.owner_id == owner.id, Instance.name == name)
        .order_by(Instance.active_name.is_(None), Instance.created_at.desc())
        .limit(1)
    )
    return rows.scalar_one_or_none()


async def list_instances(
    session: AsyncSession,
    *,
    user: User,
    owner: User | None = None,
    all_owners: bool = False,
    name: str | None = None,
    status: str | None = None,
    active: bool | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[Instance]:
    if (owner is not None and owner.id != user.id or all_owners) and not user.is_admin:
        raise Forbidden("only admins may list other users' instances")
    query = select(Instance).order_by(Instance.created_at.desc()).limit(limit).offset(offset)
    if not all_owners:
        query = query.where(Instance.owner_id == (owner or user).id)
    if name is not None:
        query = query.where(Instance.name == name)
    if status is not None:
        query = query.where(Instance.status == status)
    if active is True:
        query = query.where(Instance.status.in_([s.value for s in ACTIVE]))
    elif active is False:
        query = query.where(Instance.status.not_in([s.value for s in ACTIVE]))
    return list((await session.execute(query)).scalars())


def request_stop(session: AsyncSession, instance: Instance, *, actor: User | None, reason: str = "user",
                 why: str = "") -> bool:
    """Ask the reconciler to stop ``instance`` (``why``: the message, where the reason code is not
    enough); False when it is already stopping or ended."""
    if instance.status == Status.STOPPING or not can_transition(instance.status, Status.STOPPING):
        return False
    if reason == "user" and actor is not None and actor.id != instance.owner_id:
        reason, message = "admin", f"stop requested by admin {actor.name}"
    elif reason == "user":
        message = "stop requested by the owner"
    else:
        message = why or f"stop requested: {reason}"
    transition(session, instance, Status.STOPPING, reason=reason, message=message)
    return True


async def stop(tx: Callable[[], AbstractAsyncContextManager[AsyncSession]], *, user_id: int, instance_id: str,
               attempts: int = 5) -> Instance:
    """Ask for ``instance_id`` to stop on behalf of user ``user_id``, each try in a transaction of
    its own from ``tx``; returns the instance as it now is.

    Every status change is compared on write (the ORM's version check on
    ``status``): if the hub moved the instance meanwhile (requested -> starting),
    the request is read again and retried rather than refused.  Raises
    NotFound/Forbidden like :func:`get_instance`, Conflict if it keeps losing.
    """
    for _ in range(attempts):
        try:
            async with tx() as session:
                user = await session.get(User, user_id)
                if user is None:
                    raise NotFound("no such user")
                instance = await get_instance(session, user=user, instance_id=instance_id)
                request_stop(session, instance, actor=user)
        except StaleDataError:
            continue
        return instance
    raise Conflict("the instance keeps changing; try again")


async def restart_resized(session: AsyncSession, *, user: User, instance_id: str, size: str,
                          custom: Mapping[str, Any] | None, catalog: Catalog, sizes: Mapping[str, Size],
                          backends: Mapping[str, Backend], quota: QuotaSettings, now: dt.datetime) -> Instance:
    """"Restart with a new size": no backend changes a running instance's size in place, so the instance
    is stopped and launched again as a new instance with the same name, template, parameters and
    options and the new size (through the admission queue: until the old one has stopped, it still
    counts).  Its owner or an admin; the new instance (the old one's events say where it went).

    Raises NotFound/Forbidden like :func:`get_instance`, Conflict (409) when it is stopping or has
    ended, Invalid (422) for a size the template or the owner's quota does not allow."""
    old = await get_instance(session, user=user, instance_id=instance_id)
    if old.status == Status.STOPPING or old.status in TERMINAL:
        raise Conflict("it is stopping or has ended: launch it again instead", fields={"status": old.status})
    owner = old.owner
    names = {g.name for g in (await quotas.groups_of(session, [owner.id]))[owner.id]}
    old.active_name = None  # the name passes to the new instance (unique among active ones)
    await session.flush()
    service = old.kind == Kind.SERVICE
    try:
        new = await launch(session, user=owner, actor=user, catalog=catalog, sizes=sizes, backends=backends,
                           template=old.template, name=old.name, size=size, hours=old.hours,
                           params=dict(old.params or {}), backend=old.backend, groups=names, input=old.input_folder,
                           custom=custom, quota=quota, now=now, public=bool(old.public) if service else None,
                           min_replicas=old.min_replicas if service else None,
                           replicas=old.replicas if service else None)
    except ServiceError:  # refused before anything new was added: the old one keeps its name
        old.active_name = old.name
        raise
    request_stop(session, old, actor=None, reason="restart",
                 why=f"restarted with size {size} as a new instance ({new.id})")
    return new
