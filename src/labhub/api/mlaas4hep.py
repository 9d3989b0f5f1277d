"""MLaaS4HEP's server routes, so its ``curl`` recipes work against LabHub (docs/jobs.md).

``/upload``, ``/submit``, ``/status_docker``, ``/logs``, ``/model``, ``/delete_specs`` and
``/delete_folder`` behave as in MLaaS4HEP_server, with three differences: they act on the
caller's own folders and jobs only; a GPU job waits for a GPU instead of being refused; and
they take a bearer token only (never the session cookie), so no web page can make a
browser call them, the two GET routes that delete included.

A process is a job of the ``mlaas4hep`` template: ``<folder>_<n>`` is the n-th job
submitted for that folder, the instance named ``<folder in DNS form>-<n>``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import Field
from sqlalchemy import select

from labhub.api.deps import HubDep, SessionDep, bearer_token, scoped
from labhub.api.files import targz_answer
from labhub.api.folders import UploadOut, upload_into
from labhub.api.schemas import RequestBody, Text
from labhub.hub import Hub
from labhub.models import Instance, User
from labhub.services import groups
from labhub.services import instances as svc
from labhub.services.errors import Invalid, NotFound
from labhub.services.folders import FOLDER_NAME_RE, FOLDER_NAME_RULE

TEMPLATE = "mlaas4hep"
LOG_LIMIT = 16 * 1024 * 1024  # /logs answers at most the last 16 MiB
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_PROCESS_RE = re.compile(r"^(?P<folder>[A-Za-z0-9][A-Za-z0-9._-]{0,62})_(?P<n>[1-9][0-9]{0,8})$")


async def _bearer_only(request: Request) -> None:
    request.state.json_errors = True  # API routes outside /api/: errors are JSON, never a login page
    if bearer_token(request) is None:
        raise HTTPException(401, "these routes take an API token: -H 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(tags=["mlaas4hep"], dependencies=[Depends(_bearer_only)])
CompatUser = Annotated[User, Depends(scoped("jobs", "instances"))]


class SubmitRequest(RequestBody):
    """MLaaS4HEP's ``input_new.json``: which folder, which of its files, what resources."""

    name: str = Field(min_length=1, max_length=63, description="the folder (uploaded with /upload?name=)")
    files: str = Field(default="files.txt", max_length=255, description="the folder's ROOT file list")
    labels: str = Field(default="labels.txt", max_length=255)
    model: str = Field(default="model.py", max_length=255, description="defines model(idim)")
    params: str = Field(default="params.json", max_length=255)
    fout: str = Field(default="model", max_length=63, description="the trained model's name")
    memory: str | None = Field(default=None, max_length=16, description='e.g. "3gb", "512mb"')
    cpus: float | None = Field(default=None, gt=0, le=1024)
    device: Literal["cpu", "gpu"] = "cpu"
    hours: float | None = Field(default=None, gt=0)


def parse_memory(text: str) -> int:
    """``"3gb"`` -> 3072 (MiB); ValueError for anything else."""
    match = _MEMORY_RE.match(text)
    if not match:
        raise ValueError(text)
    factor = {"": 1 / (1024 * 1024), "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}[match.group(2).lower()]
    return max(1, int(float(match.group(1)) * factor))


def _size_for(hub: Hub, body: SubmitRequest) -> str:
    """The smallest of the template's sizes with the CPUs, memory and device asked for."""
    fields: dict[str, str] = {}
    memory_mb = 0
    if body.memory is not None:
        try:
            memory_mb = parse_memory(body.memory)
        except ValueError:
            fields["memory"] = 'a size such as "3gb" or "512mb"'
    template = hub.catalog.get(TEMPLATE)
    if template is None:
        raise NotFound(f"the {TEMPLATE} template is not available on this hub")
    names = [n for n in (template.sizes or list(hub.settings.sizes)) if n in hub.settings.sizes]
    fit = [n for n in names if hub.settings.sizes[n].memory_mb >= memory_mb
           and hub.settings.sizes[n].cpus >= (body.cpus or 0)
           and (hub.settings.sizes[n].gpus >= 1) == (body.device == "gpu")]
    if not fields and not fit:
        wanted = f"{body.cpus or 1:g} CPUs, {memory_mb or 0} MiB" + (", a GPU" if body.device == "gpu" else "")
        fields["device" if body.device == "gpu" and not any(hub.settings.sizes[n].gpus for n in names)
               else "memory"] = f"no size offers {wanted}"
    if fields:
        raise Invalid("invalid submit request", fields=fields)
    return min(fit, key=lambda n: (hub.settings.sizes[n].gpus, hub.settings.sizes[n].memory_mb,
                                   hub.settings.sizes[n].cpus))


def _dns(folder: str) -> str:
    label = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", folder.lower())).strip("-")[:50].strip("-")
    return label or "job"


async def _process(session: Any, user: User, process_name: str) -> Instance:
    match = _PROCESS_RE.match(process_name or "")
    if not match:
        raise NotFound(f"no process named {process_name!r}", fields={"process_name": "expected <folder>_<n>"})
    name = f"{_dns(match['folder'])}-{match['n']}"
    inst = await session.scalar(select(Instance).where(
        Instance.owner_id == user.id, Instance.name == name, Instance.input_folder == match["folder"],
        Instance.template == TEMPLATE).order_by(Instance.created_at.desc()).limit(1))
    if inst is None:
        raise NotFound(f"no process named {process_name!r}")
    return inst


@router.post("/upload", status_code=200, response_model=UploadOut, summary="MLaaS4HEP: upload a folder")
async def upload(request: Request, user: CompatUser, hub: HubDep,
                 name: Annotated[Text, Query(max_length=63)]) -> UploadOut:
    # a tarball of one top directory becomes the folder itself, as MLaaS4HEP_server does
    return await upload_into(request, hub, user.id, name, filename=None, extract=None, strip_top=True)


@router.post("/submit", summary="MLaaS4HEP: submit a training workflow; answers its process_name")
async def submit(body: SubmitRequest, user: CompatUser, session: SessionDep, hub: HubDep) -> dict[str, Any]:
    if not FOLDER_NAME_RE.match(body.name):
        raise Invalid("invalid folder name", fields={"name": FOLDER_NAME_RULE})
    size = _size_for(hub, body)
    try:
        _, entries, _ = await hub.folders.files(session, owner_id=user.id, name=body.name)
    except NotFound as exc:
        raise NotFound(exc.message, fields={"name": f"you have no folder named {body.name!r}"}) from exc
    present = {e.path for e in entries}
    missing = {field: f"the folder {body.name!r} has no file {getattr(body, field)!r}"
               for field in ("files", "labels", "model", "params") if getattr(body, field) not in present}
    if missing:
        raise Invalid("files missing from the folder", fields=missing)
    taken = set(await session.scalars(select(Instance.name).where(Instance.owner_id == user.id)))
    n = 1 + len(list(await session.scalars(select(Instance.id).where(
        Instance.owner_id == user.id, Instance.input_folder == body.name, Instance.template == TEMPLATE))))
    while f"{_dns(body.name)}-{n}" in taken:
        n += 1
    try:
        inst = await svc.launch(
            session, user=user, catalog=hub.catalog, sizes=hub.settings.sizes, backends=hub.backends,
            template=TEMPLATE, name=f"{_dns(body.name)}-{n}", size=size, hours=body.hours,
            params={"files": body.files, "labels": body.labels, "model": body.model, "params": body.params,
                    "fout": body.fout}, groups=await groups.names_of(session, user), input=body.name,
            now=hub.clock(), quota=hub.settings.quota)
    except Invalid as exc:  # in this request's words: the size is what device, cpus and memory chose
        renamed = {"device" if key == "size" else key.removeprefix("params."): why for key, why in exc.fields.items()}
        raise Invalid(exc.message, fields=renamed) from exc
    await session.commit()
    return {"process_name": f"{body.name}_{n}", "id": inst.id, "status": inst.status, "size": size}


@router.get("/status_docker", summary="MLaaS4HEP: a process's status")
async def status(user: CompatUser, session: SessionDep, process_name: Annotated[Text, Query(max_length=80)]
                 ) -> dict[str, Any]:
    inst = await _process(session, user, process_name)
    return {"process_name": process_name, "id": inst.id, "status": inst.status, "exit_code": inst.exit_code,
            "message": inst.message.split("\n--- last log lines ---")[0]}


@router.get("/logs", response_class=PlainTextResponse, summary="MLaaS4HEP: a process's log (its last 16 MiB)",
            operation_id="mlaas4hep_logs_get")
@router.post("/logs", response_class=PlainTextResponse, summary="MLaaS4HEP: a process's log (its last 16 MiB)",
             operation_id="mlaas4hep_logs_post")
async def logs(user: CompatUser, session: SessionDep, hub: HubDep,
               process_name: Annotated[Text, Query(max_length=80)]) -> PlainTextResponse:
    inst = await _process(session, user, process_name)
    backend = hub.backends.get(inst.backend)
    if not inst.handle or backend is None:
        return PlainTextResponse("")
    data, _ = await backend.read_log(inst.handle, -LOG_LIMIT, limit=LOG_LIMIT)
    return PlainTextResponse(data.decode("utf-8", "replace"))


@router.get("/model", summary="MLaaS4HEP: the trained model (a tar.gz of the process's artifacts)",
            response_class=Response, responses={200: {"content": {"application/gzip": {}}}})
async def model(user: CompatUser, session: SessionDep, hub: HubDep,
                process_name: Annotated[Text, Query(max_length=80)]) -> Response:
    inst = await _process(session, user, process_name)
    if not (await hub.jobs.artifacts(inst.id, limit=1))[0]:
        raise NotFound(f"{process_name} has no model (yet): it is {inst.status}")
    return targz_answer(lambda out: hub.jobs.bundle(inst.id, out, prefix=f"{process_name}/"),
                        f"{process_name}.tar.gz")


@router.get("/delete_specs", summary="MLaaS4HEP: delete the specs files jobs left in a folder")
async def delete_specs(user: CompatUser, session: SessionDep, hub: HubDep,
                       name: Annotated[Text, Query(max_length=63)]) -> dict[str, Any]:
    # LabHub's jobs never write into their input folder (their outputs are artifacts), so there are no
    # specs files to delete; the folder must exist, as in the original.
    await hub.folders.get(session, owner_id=user.id, name=name)
    return {"name": name, "deleted": []}


@router.get("/delete_folder", summary="MLaaS4HEP: delete a folder")
async def delete_folder(user: CompatUser, hub: HubDep, name: Annotated[Text, Query(max_length=63)]
                        ) -> dict[str, Any]:
    await hub.folders.delete(hub.tx, owner_id=user.id, name=name)
    return {"name": name, "deleted": True}

