"""/api/v1/instances: launch, list, inspect, stop; events and logs."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic_core import to_json
from sqlalchemy import Integer, Select, bindparam, select

from labhub.api.deps import HubDep, InstancesCaller, InstancesUser, SessionDep
from labhub.api.schemas import (
    MAX_INT32,
    SIGNED_IN,
    EventOut,
    InstanceOut,
    LaunchRequest,
    Resize,
    ServiceChange,
    Text,
    error,
    errors,
    json_answer,
)
from labhub.backends.base import BackendError, BackendUnavailable
from labhub.hub import Hub
from labhub.models import ACTIVE, TERMINAL, Event, Instance, Status, User, awaits_admission
from labhub.services import admission, groups, users
from labhub.services import instances as svc
from labhub.services.errors import Forbidden, Invalid, NotFound, Unavailable
from labhub.services.lifecycle import event_dict

log = logging.getLogger(__name__)
router = APIRouter(prefix="/instances", tags=["instances"], responses=SIGNED_IN)
ONE = errors(404)  # every route about one instance: 403 (someone else's) is in SIGNED_IN
EVENTS_LIMIT = 1000


@router.post("", status_code=201, response_model=InstanceOut, summary="Launch an instance",
             responses=error(409, "You already have an active instance with this name"))
async def launch(body: LaunchRequest, user: InstancesUser, session: SessionDep, hub: HubDep) -> InstanceOut:
    owner = user
    if body.owner is not None and body.owner != user.name:
        if not user.is_admin:
            raise Forbidden("only admins may launch for another user")
        owner = await users.get_user(session, name=body.owner)
        if owner is None:
            raise Invalid("no such user", fields={"owner": f"no user named {body.owner!r}"})
    inst = await svc.launch(
        session, user=owner, actor=user, catalog=hub.catalog, sizes=hub.settings.sizes, backends=hub.backends,
        template=body.template, name=body.name, size=body.size, hours=body.hours, params=body.params,
        backend=body.backend, groups=await groups.names_of(session, owner), input=body.input, public=body.public,
        min_replicas=body.min_replicas, replicas=body.replicas, now=hub.clock(), quota=hub.settings.quota,
        custom=body.custom.model_dump() if body.custom else None,
    )
    await session.commit()
    return await _out(hub, inst)


async def _out(hub: Hub, inst: Instance) -> InstanceOut:
    """The instance as the API shows it, with its place in the admission queue while it waits."""
    place = None
    if awaits_admission(inst.status, inst.handle):
        async with hub.engine.connect() as conn:
            place = (await admission.positions(conn, [inst.id])).get(inst.id)
    return InstanceOut.of(inst, url=hub.instance_url(inst), queue_position=place)


@router.get("", response_model=list[InstanceOut], summary="List instances (yours; admins: any owner or all)",
            responses=error(404, "Admins: no user named `owner`"))
async def list_instances(
    caller: InstancesCaller, hub: HubDep,
    owner: Annotated[Text | None, Query(max_length=63)] = None,
    all: Annotated[bool, Query(description="admins: every user's instances")] = False,  # noqa: A002
    name: Annotated[Text | None, Query(max_length=63)] = None,
    status: Annotated[Text | None, Query(max_length=16)] = None,
    active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0,
) -> Response:
    # One Core select of the listed columns, serialised once: no ORM objects, no second validation.
    async with hub.engine.connect() as conn:
        owner_id = caller.user_id
        if owner is not None:
            owner_id = (await conn.execute(select(User.id).where(User.name == owner))).scalar()
            if owner_id is None:
                if not caller.is_admin:
                    return json_answer(b"[]")
                raise NotFound("no such user", fields={"owner": f"no user named {owner!r}"})
        if (owner_id != caller.user_id or all) and not caller.is_admin:
            raise Forbidden("only admins may list other users' instances")
        query = _list_query(all, name is not None, status is not None, active)
        rows = (await conn.execute(query, {"owner_id": owner_id, "name": name, "status": status, "limit": limit,
                                           "offset": offset})).all()
        waiting = [row[0] for row in rows if row[11] == Status.QUEUED and row[12] == admission.REASON]
        places = await admission.positions(conn, waiting) if waiting else {}
    return json_answer(to_json([_listed(hub, row, places.get(row[0])) for row in rows]))


_LISTED = (Instance.id, Instance.name, Instance.kind, Instance.template, Instance.size, Instance.cpus,
           Instance.memory_mb, Instance.gpus, Instance.hours, Instance.params, Instance.backend, Instance.status,
           Instance.reason, Instance.message, Instance.created_at, Instance.started_at, Instance.ended_at,
           Instance.expires_at, Instance.last_activity_at, Instance.input_folder, Instance.exit_code,
           Instance.output_bytes, Instance.public, Instance.min_replicas, Instance.replicas)


@functools.cache
def _list_query(all_owners: bool, by_name: bool, by_status: bool, active: bool | None) -> Select:
    """The listing's statement for one combination of filters, with bound parameters; built once.

    Building a select of twenty columns costs more than running it, and executing the very
    statement object that was compiled spares SQLAlchemy re-keying its result columns."""
    query = select(*_LISTED, User.name).join(User, User.id == Instance.owner_id) \
        .order_by(Instance.created_at.desc()) \
        .limit(bindparam("limit", type_=Integer)).offset(bindparam("offset", type_=Integer))
    if not all_owners:
        query = query.where(Instance.owner_id == bindparam("owner_id"))
    if by_name:
        query = query.where(Instance.name == bindparam("name"))
    if by_status:
        query = query.where(Instance.status == bindparam("status"))
    if active is True:
        query = query.where(Instance.status.in_([s.value for s in ACTIVE]))
    elif active is False:
        query = query.where(Instance.status.not_in([s.value for s in ACTIVE]))
    return query


class _Named(NamedTuple):
    """What ``Hub.instance_url`` reads of an instance (the one place its URL is made)."""

    id: str
    name: str
    owner: SimpleNamespace


def _listed(hub: Hub, row: Any, queue_position: int | None = None) -> dict[str, Any]:
    """One row of :data:`_LISTED` (and the owner's name) as :class:`InstanceOut` writes it, field for field."""
    (iid, name, kind, template, size, cpus, memory_mb, gpus, hours, params, backend, status, reason, message,
     created_at, started_at, ended_at, expires_at, last_activity_at, input_folder, exit_code, output_bytes,
     public, min_replicas, replicas, owner) = row
    return {
        "id": iid, "name": name, "owner": owner, "kind": kind, "template": template, "size": size,
        "resources": {"cpus": float(cpus), "memory_mb": memory_mb, "gpus": gpus}, "hours": float(hours),
        "params": params or {}, "backend": backend, "status": status, "reason": reason, "message": message,
        "url": hub.instance_url(_Named(iid, name, SimpleNamespace(name=owner))),  # type: ignore[arg-type]
        "created_at": created_at, "started_at": started_at, "ended_at": ended_at, "expires_at": expires_at,
        "last_activity_at": last_activity_at, "input": input_folder, "exit_code": exit_code,
        "artifacts_bytes": output_bytes, "public": bool(public), "min_replicas": min_replicas,
        "replicas": replicas, "queue_position": queue_position,
    }


@router.get("/{instance_id}", response_model=InstanceOut, summary="One instance", responses=ONE)
async def get_instance(instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep) -> InstanceOut:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    return await _out(hub, inst)


@router.patch("/{instance_id}", response_model=InstanceOut, summary="Change a service: public or not, may sleep or not",
              responses={**ONE, **errors(409, 422)})
async def change_instance(instance_id: Text, body: ServiceChange, user: InstancesUser, session: SessionDep,
                          hub: HubDep) -> InstanceOut:
    inst = await svc.change_service(session, user=user, instance_id=instance_id, public=body.public,
                                    min_replicas=body.min_replicas, now=hub.clock())
    await session.commit()
    await hub.refresh_routes({inst.id})  # this replica's proxy at once (the others follow the change's notice)
    return InstanceOut.of(inst, url=hub.instance_url(inst))


@router.post("/{instance_id}/restart", status_code=201, response_model=InstanceOut,
             summary="Restart with a new size: stops it and launches it again, same name and options",
             responses={**ONE, **errors(409, 422)})
async def restart(instance_id: Text, body: Resize, user: InstancesUser, session: SessionDep,
                  hub: HubDep) -> InstanceOut:
    inst = await svc.restart_resized(session, user=user, instance_id=instance_id, size=body.size,
                                     custom=body.custom.model_dump() if body.custom else None, catalog=hub.catalog,
                                     sizes=hub.settings.sizes, backends=hub.backends, quota=hub.settings.quota,
                                     now=hub.clock())
    await session.commit()
    return await _out(hub, inst)


@router.delete("/{instance_id}", status_code=202, response_model=InstanceOut, summary="Stop an instance",
               responses=ONE)
async def stop_instance(instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep) -> InstanceOut:
    await session.commit()  # the stop is its own transaction (retried if the hub moves the instance meanwhile)
    inst = await svc.stop(hub.tx, user_id=user.id, instance_id=instance_id)
    return await _out(hub, inst)


@router.get("/{instance_id}/events", response_model=list[EventOut],
            summary="Events, as JSON or (Accept: text/event-stream) as Server-Sent Events",
            description="JSON: the first `limit` events after the event id `after`, oldest first (pass the last "
                        "id as `after` for the next page). `Accept: text/event-stream`: the events after `after` "
                        "(or the `Last-Event-ID` header), then live ones as they happen; the stream ends with "
                        "`event: end` after a terminal status.",
            responses={**ONE, 200: {"description": "The events", "content": {
                "text/event-stream": {"schema": {"type": "string", "description": "`id:`, `event: status` and "
                                                 "`data:` (an event as JSON) per event"}}}}})
async def events(
    instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep, request: Request,
    last_event_id: Annotated[Text | None, Header(max_length=20)] = None,
    after: Annotated[int, Query(ge=0, le=MAX_INT32, description="an event id: only later events")] = 0,
    limit: Annotated[int, Query(ge=1, le=EVENTS_LIMIT, description="JSON: at most this many events")] = EVENTS_LIMIT,
) -> Response | list[EventOut]:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    # Accept is read, not declared: OpenAPI ignores Accept as a parameter; the two answers are documented instead
    if "text/event-stream" not in request.headers.get("accept", ""):
        rows = await session.execute(select(Event).where(Event.instance_id == inst.id, Event.id > after)
                                     .order_by(Event.id).limit(limit))
        return [EventOut.model_validate(event_dict(e)) for e in rows.scalars()]
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() and int(last_event_id) <= MAX_INT32 \
        else after
    return StreamingResponse(_event_stream(hub, inst.id, start, request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _event_stream(hub: HubDep, instance_id: str, after: int, request: Request) -> AsyncIterator[bytes]:
    """Past events after ``after``, then live ones; ends after a terminal status.

    Events are read from the database (whichever replica wrote them); a signal
    after each commit, here or on another replica, says when to read again."""
    async with hub.bus.subscribe(instance_id=instance_id) as signal:  # first: nothing falls in between
        last = after
        while True:
            async with hub.sessions() as session:
                rows = (await session.execute(select(Event).where(Event.instance_id == instance_id, Event.id > last)
                                              .order_by(Event.id).limit(EVENTS_LIMIT))).scalars()
                batch = [event_dict(e) for e in rows]
            for event in batch:
                last = event["id"]
                yield _sse(event)
                if event["status"] in TERMINAL:
                    yield b"event: end\ndata: {}\n\n"
                    return
            if len(batch) == EVENTS_LIMIT:
                continue  # more to catch up on
            if not await signal.wait(timeout=15):
                if await request.is_disconnected():
                    return
                yield b": keep-alive\n\n"


def _sse(event: dict) -> bytes:
    payload = {k: v for k, v in event.items() if k != "owner_id"}
    return f"id: {event['id']}\nevent: status\ndata: {json.dumps(payload)}\n\n".encode()


@router.get("/{instance_id}/logs", response_class=PlainTextResponse, summary="The last lines of the instance's output",
            responses={**ONE, **errors(503), 200: {"description": "The lines, oldest first"}})
async def logs(instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep,
               tail: Annotated[int, Query(ge=1, le=10_000)] = 200) -> PlainTextResponse:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    backend = hub.backends.get(inst.backend)
    if not inst.handle or backend is None:
        return PlainTextResponse("")
    try:
        lines = [line async for line in backend.logs(inst.handle, tail=tail)]
    except BackendError as exc:  # e.g. a Slurm login node that does not answer
        log.warning("logs of instance %s: %s", inst.id, exc)
        raise Unavailable(f"the {inst.backend} backend cannot give the logs now: {exc}",
                          headers={"Retry-After": "10"} if isinstance(exc, BackendUnavailable) else None) from exc
    return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""))
