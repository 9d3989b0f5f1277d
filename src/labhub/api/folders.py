"""/api/v1/folders: upload inputs as named folders, list them, look inside, delete."""

from __future__ import annotations

import datetime as dt
import posixpath
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from labhub.api.deps import HubDep, SessionDep, scoped, scoped_principal
from labhub.api.files import file_answer
from labhub.api.schemas import MAX_INT32, SIGNED_IN, Text, error, errors
from labhub.api.uploads import receive
from labhub.hub import Hub
from labhub.models import User
from labhub.proxy.routes import Principal
from labhub.services.errors import Invalid
from labhub.services.folders import FOLDER_NAME_RE, FOLDER_NAME_RULE, FolderInfo

router = APIRouter(prefix="/folders", tags=["folders"], responses=SIGNED_IN)
FoldersUser = Annotated[User, Depends(scoped("jobs", "instances"))]
FoldersCaller = Annotated[Principal, Depends(scoped_principal("jobs", "instances"))]
ONE = errors(404)


class FolderOut(BaseModel):
    name: str
    bytes: int
    files: int
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, info: FolderInfo) -> FolderOut:
        return cls(name=info.name, bytes=info.bytes, files=info.files, created_at=info.created_at,
                   updated_at=info.updated_at)


class FileOut(BaseModel):
    path: str
    size: int


class FolderDetail(FolderOut):
    items: list[FileOut]
    truncated: bool


class UploadOut(BaseModel):
    folder: FolderOut
    added_files: int
    added_bytes: int
    skipped: list[str]


@router.get("", response_model=list[FolderOut], summary="Your folders, by name")
async def list_folders(user: FoldersUser, session: SessionDep, hub: HubDep,
                       limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                       offset: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0) -> list[FolderOut]:
    return [FolderOut.of(f) for f in await hub.folders.list(session, owner_id=user.id, limit=limit, offset=offset)]


@router.get("/{name}", response_model=FolderDetail, summary="One folder and its files", responses=ONE)
async def get_folder(name: Text, user: FoldersUser, session: SessionDep, hub: HubDep,
                     limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000) -> FolderDetail:
    info, entries, truncated = await hub.folders.files(session, owner_id=user.id, name=name, limit=limit)
    return FolderDetail(**FolderOut.of(info).model_dump(), items=[FileOut(path=e.path, size=e.size) for e in entries],
                        truncated=truncated)


async def upload_into(request: Request, hub: Hub, owner_id: int, name: str, *, filename: str | None,
                      extract: bool | None, strip_top: bool) -> UploadOut:
    """Receive the request's body into folder ``name`` (shared with the MLaaS4HEP route and the page)."""
    if not FOLDER_NAME_RE.match(name or ""):  # before a byte is received
        raise Invalid("invalid folder name", fields={"name": FOLDER_NAME_RULE})
    received = hub.folders.new_upload_file(owner_id)
    try:
        given = await receive(request, received, limit=hub.folders.upload_limit())
    except BaseException:
        received.unlink(missing_ok=True)
        raise
    info, report = await hub.folders.add(hub.tx, owner_id=owner_id, name=name, received=received,
                                         filename=filename or (posixpath.basename(given) if given else None),
                                         extract=extract, strip_top=strip_top)
    return UploadOut(folder=FolderOut.of(info), added_files=report.files, added_bytes=report.bytes,
                     skipped=report.skipped)


@router.post("/{name}/upload", status_code=201, response_model=UploadOut, summary="Upload files into a folder",
             description="The body is the file (any content type) or a `multipart/form-data` form whose field "
                         "`file` holds it. A tar (gz, bz2, xz) or zip archive is extracted into the folder (safely: "
                         "links, devices and unsafe names are refused or skipped, and said so); anything else is "
                         "saved as `filename` (a multipart part's own name by default). The folder is created if "
                         "needed; files of the same path are replaced.",
             responses={**error(413, "Over a limit: per file, per folder or your storage"),
                        **error(422, "A bad name, or a refused archive (the member and why)")})
async def upload(
    name: Text, request: Request, caller: FoldersCaller, hub: HubDep,
    filename: Annotated[Text | None, Query(max_length=255, description="the file's name in the folder")] = None,
    extract: Annotated[Literal["auto", "yes", "no"], Query(
        description="auto: archives are extracted, except files named as a zip-based format of their own "
                    "(.keras, .skops, .pt, .npz, ...)")] = "auto",
    strip_top: Annotated[bool, Query(description="an archive holding one top directory: its contents")] = False,
) -> UploadOut:
    # No session is held while the body streams in: the caller comes from the authenticator's cache.
    return await upload_into(request, hub, caller.user_id, name, filename=filename,
                             extract={"auto": None, "yes": True, "no": False}[extract], strip_top=strip_top)


@router.get("/{name}/files/{path:path}", summary="Download one file of a folder", response_class=Response,
            responses={**ONE, 200: {"content": {"application/octet-stream": {}}}})
async def get_file(name: Text, path: Text, user: FoldersUser, session: SessionDep, hub: HubDep) -> Response:
    fh = await hub.folders.open(session, owner_id=user.id, name=name, path=path)
    return file_answer(fh, posixpath.basename(path))


@router.delete("/{name}/files/{path:path}", status_code=204, summary="Delete a file (or directory) of a folder",
               responses=ONE)
async def delete_file(name: Text, path: Text, user: FoldersUser, hub: HubDep) -> Response:
    await hub.folders.delete(hub.tx, owner_id=user.id, name=name, path=path)
    return Response(status_code=204)


@router.delete("/{name}", status_code=204, summary="Delete a folder and its files", responses=ONE)
async def delete_folder(name: Text, user: FoldersUser, hub: HubDep) -> Response:
    await hub.folders.delete(hub.tx, owner_id=user.id, name=name)
    return Response(status_code=204)
