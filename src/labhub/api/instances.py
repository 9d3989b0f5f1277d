"""/api/v1/instances: launch, list, inspect, stop; events and logs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlalchemy import select

from labhub.api.deps import HubDep, InstancesUser, SessionDep
from labhub.api.schemas import EventOut, InstanceOut, LaunchRequest
from labhub.models import TERMINAL, Event
from labhub.services import groups, users
from labhub.services import instances as svc
from labhub.services.errors import NotFound
from labhub.services.lifecycle import event_dict

router = APIRouter(prefix="/instances", tags=["instances"])


@router.post("", status_code=201, response_model=InstanceOut, summary="Launch an instance")
async def launch(body: LaunchRequest, user: InstancesUser, session: SessionDep, hub: HubDep) -> InstanceOut:
    inst = await svc.launch(
        session, user=user, catalog=hub.catalog, sizes=hub.settings.sizes, backends=hub.backends,
        template=body.template, name=body.name, size=body.size, hours=body.hours, params=body.params,
        backend=body.backend, groups=await groups.names_of(session, user), now=hub.clock(),
    )
    await session.commit()
    hub.reconciler.kick(inst.id)
    return InstanceOut.of(inst)


@router.get("", response_model=list[InstanceOut], summary="List instances (yours; admins: any owner or all)")
async def list_instances(
    user: InstancesUser, session: SessionDep,
    owner: Annotated[str | None, Query(max_length=63)] = None,
    all: Annotated[bool, Query(description="admins: every user's instances")] = False,  # noqa: A002
    name: Annotated[str | None, Query(max_length=63)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
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
    return [InstanceOut.of(i) for i in rows]


@router.get("/{instance_id}", response_model=InstanceOut)
async def get_instance(instance_id: str, user: InstancesUser, session: SessionDep) -> InstanceOut:
    return InstanceOut.of(await svc.get_instance(session, user=user, instance_id=instance_id))


@router.delete("/{instance_id}", status_code=202, response_model=InstanceOut, summary="Stop an instance")
async def stop_instance(instance_id: str, user: InstancesUser, session: SessionDep, hub: HubDep) -> InstanceOut:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    svc.request_stop(session, inst, actor=user)
    await session.commit()
    hub.reconciler.kick(inst.id, stop=True)
    return InstanceOut.of(inst)


@router.get("/{instance_id}/events", response_model=list[EventOut],
            summary="Events, as JSON or (Accept: text/event-stream) as Server-Sent Events")
async def events(
    instance_id: str, user: InstancesUser, session: SessionDep, hub: HubDep, request: Request,
    accept: Annotated[str, Header()] = "",
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int, Query(ge=0)] = 0,
) -> Response | list[EventOut]:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    if "text/event-stream" not in accept:
        rows = await session.execute(select(Event).where(Event.instance_id == inst.id, Event.id > after).order_by(Event.id))
        return [EventOut.model_validate(event_dict(e)) for e in rows.scalars()]
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
    return StreamingResponse(_event_stream(hub, inst.id, start, request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _event_stream(hub: HubDep, instance_id: str, after: int, request: Request) -> AsyncIterator[bytes]:
    """Past events after ``after``, then live ones; ends after a terminal status."""
    async with hub.bus.subscribe(instance_id) as queue:
        async with hub.sessions() as session:
            rows = (await session.execute(
                select(Event).where(Event.instance_id == instance_id, Event.id > after).order_by(Event.id))).scalars()
            backlog = [event_dict(e) for e in rows]
        last = after
        for event in backlog:
            last = event["id"]
            yield _sse(event)
            if event["status"] in TERMINAL:
                yield b"event: end\ndata: {}\n\n"
                return
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=15)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield b": keep-alive\n\n"
                continue
            if event["id"] <= last:
                continue
            last = event["id"]
            yield _sse(event)
            if event["status"] in TERMINAL:
                yield b"event: end\ndata: {}\n\n"
                return


def _sse(event: dict) -> bytes:
    payload = {k: v for k, v in event.items() if k != "owner_id"}
    return f"id: {event['id']}\nevent: status\ndata: {json.dumps(payload)}\n\n".encode()


@router.get("/{instance_id}/logs", response_class=PlainTextResponse, summary="The last lines of the instance's output")
async def logs(instance_id: str, user: InstancesUser, session: SessionDep, hub: HubDep,
               tail: Annotated[int, Query(ge=1, le=10_000)] = 200) -> PlainTextResponse:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    backend = hub.backends.get(inst.backend)
    if not inst.handle or backend is None:
        return PlainTextResponse("")
    lines = [line async for line in backend.logs(inst.handle, tail=tail)]
    return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""))
