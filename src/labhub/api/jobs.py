"""Jobs' results under /api/v1/instances/{id}: artifacts, metrics and the log as it grows."""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select

from labhub.api.deps import HubDep, InstancesUser, SessionDep
from labhub.api.files import file_answer, targz_answer
from labhub.api.schemas import MAX_INT32, SIGNED_IN, Text, errors
from labhub.backends.base import BackendError
from labhub.files import tree
from labhub.hub import Hub
from labhub.models import TERMINAL, Instance, Kind
from labhub.services import instances as svc
from labhub.services import views
from labhub.services.errors import Invalid, NotFound
from labhub.services.jobs import MAX_METRIC_POINTS

log = logging.getLogger(__name__)
router = APIRouter(prefix="/instances", tags=["jobs"], responses=SIGNED_IN)
ONE = errors(404)
FOLLOW_POLL_S = 0.1  # a followed log's file is read this often while nothing new comes
STATUS_RECHECK_S = 2.0
FOLLOW_START_BYTES = 64 * 1024  # a followed log starts this far before its end


class ArtifactOut(BaseModel):
    path: str
    size: int
    modified_at: dt.datetime


class ArtifactsOut(BaseModel):
    items: list[ArtifactOut]
    bytes: int
    truncated: bool
    expires_at: dt.datetime | None


async def _job(session: Any, user: Any, instance_id: str) -> Instance:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    if inst.kind != Kind.JOB:
        raise NotFound("only jobs have artifacts and metrics")
    return inst


@router.get("/{instance_id}/artifacts", response_model=ArtifactsOut, summary="A job's artifacts", responses=ONE)
async def artifacts(instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep) -> ArtifactsOut:
    inst = await _job(session, user, instance_id)
    entries, truncated = await hub.jobs.artifacts(inst.id)
    return ArtifactsOut(items=[ArtifactOut(path=e.path, size=e.size, modified_at=dt.datetime.fromtimestamp(e.mtime, dt.UTC))
                               for e in entries], bytes=sum(e.size for e in entries), truncated=truncated,
                        expires_at=inst.artifacts_expire_at)


@router.get("/{instance_id}/artifacts.tar.gz", summary="All of a job's artifacts as one tar.gz",
            response_class=Response, responses={**ONE, 200: {"content": {"application/gzip": {}}}})
async def bundle(instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep) -> Response:
    inst = await _job(session, user, instance_id)
    if not (await hub.jobs.artifacts(inst.id, limit=1))[0]:
        raise NotFound("this job has no artifacts")
    return targz_answer(lambda out: hub.jobs.bundle(inst.id, out, prefix=f"{inst.name}/"), f"{inst.name}.tar.gz")


@router.get("/{instance_id}/artifacts/{path:path}", summary="Download one artifact", response_class=Response,
            responses={**ONE, 200: {"content": {"application/octet-stream": {}}}})
async def artifact(instance_id: Text, path: Text, user: InstancesUser, session: SessionDep, hub: HubDep) -> Response:
    inst = await _job(session, user, instance_id)
    try:
        fh = await hub.jobs.open_artifact(inst.id, path)
    except tree.TreeError as exc:
        raise NotFound(f"no artifact {path!r}: {exc}") from exc
    return file_answer(fh, posixpath.basename(path))


@router.get("/{instance_id}/metrics", summary="The metrics a job reported (one object per line it wrote)",
            description="What the job appended to `$LABHUB_METRICS` as JSON lines (numbers and short strings), "
                        "oldest first; e.g. `{\"epoch\": 1, \"loss\": 0.41, \"accuracy\": 0.83}`.",
            responses=ONE)
async def metrics(instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep,
                  limit: Annotated[int, Query(ge=1, le=MAX_METRIC_POINTS, description="the last this many")]
                  = MAX_METRIC_POINTS) -> list[dict[str, Any]]:
    inst = await _job(session, user, instance_id)
    return (await hub.jobs.metrics(inst.id))[-limit:]


@router.get("/{instance_id}/log", summary="The instance's output, followed as it grows",
            description="Plain text: the last 64 KiB of the output (or from byte `start`), then what it writes, "
                        "until the instance has ended (`follow=false`: what there is now). With `Accept: "
                        "text/event-stream`, Server-Sent Events: `event: log` whose `id` is the byte offset after "
                        "its text (a reconnect with `Last-Event-ID` resumes there), then `event: end`.",
            response_class=Response, responses={**ONE, **errors(503), 200: {"content": {
                "text/plain": {}, "text/event-stream": {"schema": {"type": "string"}}}}})
async def follow_log(instance_id: Text, request: Request, user: InstancesUser, session: SessionDep, hub: HubDep,
                     follow: bool = True,
                     start: Annotated[int, Query(ge=-MAX_INT32, le=MAX_INT32,
                                                 description="a byte offset (negative: from the end)")]
                     = -FOLLOW_START_BYTES) -> Response:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    backend = hub.backends.get(inst.backend)
    if backend is None:
        raise Invalid("the instance's backend is not enabled")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"}
    if "text/event-stream" in request.headers.get("accept", ""):
        resume = request.headers.get("last-event-id", "")
        offset = int(resume) if resume.isdigit() and int(resume) <= MAX_INT32 else start
        return StreamingResponse(_as_events(_follow(hub, inst.id, offset, follow, request, offsets=True)),
                                 media_type="text/event-stream", headers=headers)
    return StreamingResponse(_chunks(_follow(hub, inst.id, start, follow, request)),
                             media_type="text/plain; charset=utf-8", headers=headers)


async def _chunks(pieces: AsyncIterator[tuple[bytes, int]]) -> AsyncIterator[bytes]:
    async for data, _ in pieces:
        yield data


async def _as_events(pieces: AsyncIterator[tuple[bytes, int]]) -> AsyncIterator[bytes]:
    """The log as Server-Sent Events: ``event: log`` with the text as ``data:`` lines and the byte
    offset after it as the ``id`` (a reconnecting EventSource resumes exactly there), then ``event: end``."""
    async for data, offset in pieces:
        text = data.decode("utf-8", "replace")
        lines = "".join(f"data: {line}\n" for line in text.split("\n"))
        yield f"id: {offset}\nevent: log\n{lines}\n".encode()
    yield b"event: end\ndata: {}\n\n"


async def _follow(hub: Hub, instance_id: str, offset: int, follow: bool, request: Request, *,
                  offsets: bool = False) -> AsyncIterator[tuple[bytes, int]]:
    """The log from ``offset``; while following, new bytes as they come, until the instance ended
    and its last bytes were sent.  The file is looked at every :data:`FOLLOW_POLL_S` (a cheap read);
    the status, from the database (any replica's change), when a change is signalled and every
    :data:`STATUS_RECHECK_S` besides."""
    row: Any = None
    checked = 0.0
    async with hub.bus.subscribe(instance_id=instance_id) as signal:
        while True:
            if row is None or time.monotonic() - checked > STATUS_RECHECK_S:
                async with hub.sessions() as session:
                    row = (await session.execute(select(Instance.status, Instance.handle, Instance.backend)
                                                 .where(Instance.id == instance_id))).first()
                checked = time.monotonic()
                if row is None:
                    return
            ended = row.status in TERMINAL
            backend = hub.backends.get(row.backend)
            data = b""
            if row.handle and backend is not None:
                try:
                    data, offset = await backend.read_log(row.handle, offset)
                except BackendError as exc:
                    yield f"[labhub: cannot read the log now: {exc}]\n".encode(), offset
                    return
            if data and offsets:  # whole UTF-8 characters per event: a cut one waits for the next read
                cut = _utf8_tail(data)
                data, offset = data[:len(data) - cut], offset - cut
            if data:
                yield data, offset
                continue  # more may be waiting
            if ended or not follow:
                return
            if await signal.wait(timeout=FOLLOW_POLL_S):  # its status changed: read it again
                row = None
            if await request.is_disconnected():
                return


def _utf8_tail(data: bytes) -> int:
    """How many bytes at the end of ``data`` begin a UTF-8 character that is not complete."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): is its sequence complete?
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return back if need > back else 0
    return 0


@router.delete("/{instance_id}/record", status_code=204, summary="Delete an ended instance: its record, events "
               "and (jobs) artifacts", responses={**ONE, **errors(409)})
async def delete_record(instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep) -> Response:
    await views.delete_instance(session, user=user, instance_id=instance_id)
    await session.commit()
    await hub.jobs.remove(instance_id)
    return Response(status_code=204)
