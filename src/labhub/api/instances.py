"""/api/v1/instances: launch, list, inspect, stop; events and logs."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlalchemy import select

from labhub.api.deps import HubDep, InstancesUser, SessionDep
from labhub.api.schemas import MAX_INT32, SIGNED_IN, EventOut, InstanceOut, LaunchRequest, Text, error, errors
from labhub.backends.base import BackendError, BackendUnavailable
from labhub.models import TERMINAL, Event
from labhub.services import groups, users
from labhub.services import instances as svc
from labhub.services.errors import NotFound, Unavailable
from labhub.services.lifecycle import event_dict

log = logging.getLogger(__name__)
router = APIRouter(prefix="/instances", tags=["instances"], responses=SIGNED_IN)
ONE = errors(404)  # every route about one instance: 403 (someone else's) is in SIGNED_IN
EVENTS_LIMIT = 1000


@router.post("", status_code=201, response_model=InstanceOut, summary="Launch an instance",
             responses=error(409, "You already have an active instance with this name"))
async def launch(body: LaunchRequest, user: InstancesUser, session: SessionDep, hub: HubDep) -> InstanceOut:
    inst = await svc.launch(
        session, user=user, catalog=hub.catalog, sizes=hub.settings.sizes, backends=hub.backends,
        template=body.template, name=body.name, size=body.size, hours=body.hours, params=body.params,
        backend=body.backend, groups=await groups.names_of(session, user), now=hub.clock(),
    )
    await session.commit()
    return InstanceOut.of(inst, url=hub.instance_url(inst))


@router.get("", response_model=list[InstanceOut], summary="List instances (yours; admins: any owner or all)",
            responses=error(404, "Admins: no user named `owner`"))
async def list_instances(
    user: InstancesUser, session: SessionDep, hub: HubDep,
    owner: Annotated[Text | None, Query(max_length=63)] = None,
    all: Annotated[bool, Query(description="admins: every user's instances")] = False,  # noqa: A002
    name: Annotated[Text | None, Query(max_length=63)] = None,
    status: Annotated[Text | None, Query(max_length=16)] = None,
    active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0,
) -> list[InstanceOut]:
    owner_user = None
    if owner is not None:
        owner_user = await users.get_user(session, name=owner)
        if owner_user is None:
            if not user.is_admin:
                return []
            raise NotFound("no such user", fields={"owner": f"no user named {owner!r}"})
    rows = await svc.list_instances(session, user=user, owner=owner_user, all_owners=all, name=name,
                                    status=status, active=active, limit=limit, offset=offset)
    return [InstanceOut.of(i, url=hub.instance_url(i)) for i in rows]


@router.get("/{instance_id}", response_model=InstanceOut, summary="One instance", responses=ONE)
async def get_instance(instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep) -> InstanceOut:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    return InstanceOut.of(inst, url=hub.instance_url(inst))


@router.delete("/{instance_id}", status_code=202, response_model=InstanceOut, summary="Stop an instance",
               responses=ONE)
async def stop_instance(instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep) -> InstanceOut:
    await session.commit()  # the stop is its own transaction (retried if the hub moves the instance meanwhile)
    inst = await svc.stop(hub.tx, user_id=user.id, instance_id=instance_id)
    return InstanceOut.of(inst, url=hub.instance_url(inst))


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
