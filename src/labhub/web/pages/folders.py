"""Folders: a user's uploaded inputs for jobs; the list, one folder's files, uploads (also without
JavaScript) and deletes.  The pages' script uploads through the API with progress bars."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.api.deps import CSRF_HEADER, HubDep, SessionDep
from labhub.api.folders import upload_into
from labhub.catalog import Template
from labhub.hub import Hub
from labhub.models import User
from labhub.services import groups, views
from labhub.services.errors import NotFound, ServiceError
from labhub.services.folders import FOLDER_NAME_RE, FOLDER_NAME_RULE
from labhub.web.pages.common import PageUser, Viewer, check_csrf, render, templates

router = APIRouter(include_in_schema=False)

FILES_SHOWN = 1_000  # a folder's page lists this many files at most


def size(value: int | None) -> str:
    """Bytes in words: ``512 bytes``, ``1.5 KiB``, ``20 GiB``."""
    amount = float(value or 0)
    if amount < 1024:
        return f"{int(amount)} byte{'' if amount == 1 else 's'}"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        amount /= 1024
        if amount < 1024 or unit == "TiB":
            break
    return f"{amount:.1f} {unit}".replace(".0 ", " ")


# the folder and job pages show sizes (instance.html too: registered when the pages are mounted)
templates.env.filters["size"] = size


async def job_templates(session: AsyncSession, hub: Hub, user: User) -> list[Template]:
    """The job templates this user can launch that read a folder."""
    cards = views.catalog_cards(hub.catalog, user=user, groups=await groups.names_of(session, user),
                                sizes=hub.settings.sizes, backends=hub.backends)
    return [c.template for c in cards if c.available and c.template.kind == "job" and c.template.input != "none"]


def _limits(hub: Hub) -> dict[str, int]:
    storage = hub.folders.settings
    return {"file": storage.max_file_bytes, "folder": storage.max_folder_bytes, "user": storage.max_user_bytes,
            "files": storage.max_folder_files}


@router.get("/folders")
async def folders_page(request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                       new: str | None = None, deleted: str = "") -> Response:
    """The list; ``?new=NAME`` (the form without JavaScript) opens that folder's page to upload into."""
    rows = await hub.folders.list(session, owner_id=user.id)
    fields: dict[str, str] = {}
    if new is not None:
        name = new.strip()
        if FOLDER_NAME_RE.match(name):
            known = any(r.name == name for r in rows)
            return RedirectResponse(f"/folders/{name}" + ("" if known else "?new=1"), status_code=303)
        fields["name"] = f"A folder's name {FOLDER_NAME_RULE}." if name else "Choose a name for the folder."
    return render(request, "folders.html", status=422 if fields else 200, section="folders", folders=rows,
                  fields=fields, new=new or "", deleted=deleted if FOLDER_NAME_RE.match(deleted) else "",
                  used=await hub.folders.used_bytes(session, user.id), limits=_limits(hub),
                  jobs=await job_templates(session, hub, user))


async def _folder_page(request: Request, session: AsyncSession, hub: Hub, user: User, name: str, *,
                       new: bool = False, notice: str = "", error: str = "", status: int = 200) -> Response:
    try:
        info, entries, truncated = await hub.folders.files(session, owner_id=user.id, name=name, limit=FILES_SHOWN)
    except NotFound:
        if not new or not FOLDER_NAME_RE.match(name):
            raise
        info, entries, truncated = None, [], False
    return render(request, "folder.html", status=status, section="folders", folder=name, info=info, files=entries,
                  truncated=truncated, notice=notice, error=error, limits=_limits(hub),
                  jobs=await job_templates(session, hub, user))


@router.get("/folders/{name}")
async def folder_page(name: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                      new: bool = False, added: int | None = None, skipped: int = 0, removed: bool = False) -> Response:
    """One folder's files; ``?new=1``: a folder not made yet (its first upload makes it)."""
    notice = ""
    if added is not None:
        notice = f"Uploaded: {added} file{'' if added == 1 else 's'} added"
        notice += f", {skipped} skipped (links, devices or unsafe names)." if skipped else "."
    elif removed:
        notice = "The file was deleted."
    return await _folder_page(request, session, hub, user, name, new=new, notice=notice)


@router.post("/folders/{name}/upload")
async def upload(name: str, request: Request, hub: HubDep, csrf_token: str = "") -> Response:
    """The upload form without JavaScript: one file (an archive is extracted), then back to the folder.

    The body streams to disk, so the CSRF token comes in the query string (the form's action) or
    the X-CSRF-Token header, not as a form field; and no database session is held while it streams
    (the caller comes from the authenticator's cache, which holds active users only).
    """
    cookie = request.cookies.get(hub.cookies.session)
    principal = await hub.auth.authenticate("session", cookie) if cookie else None
    if principal is None:
        raise HTTPException(401, "log in first")
    request.state.user = Viewer(principal.user_id, principal.username, principal.is_admin)
    check_csrf(request, csrf_token or request.headers.get(CSRF_HEADER))
    if not FOLDER_NAME_RE.match(name):
        raise NotFound(f"no folder named {name!r}")
    try:
        report = await upload_into(request, hub, principal.user_id, name, filename=None, extract=None,
                                   strip_top=False)
    except ServiceError as exc:
        async with hub.sessions() as session:
            user = await hub.active_user(session, principal.user_id)
            if user is None:
                raise HTTPException(401, "log in first") from exc
            nothing = "filename" in exc.fields or exc.message == "no file in the upload"  # no file was chosen
            why = "choose a file first" if nothing else "; ".join(dict.fromkeys([exc.message, *exc.fields.values()]))
            return await _folder_page(request, session, hub, user, name, new=True, status=exc.status,
                                      error=f"The upload failed: {why}.")
    target = f"/folders/{name}?added={report.added_files}"
    return RedirectResponse(target + (f"&skipped={len(report.skipped)}" if report.skipped else ""), status_code=303)


@router.post("/folders/{name}/remove")
async def remove_file(name: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                      csrf_token: Annotated[str, Form()] = "", path: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf_token)
    await hub.folders.get(session, owner_id=user.id, name=name)  # 404 for anyone else's
    await session.commit()  # the delete is its own transaction
    await hub.folders.delete(hub.tx, owner_id=user.id, name=name, path=path)
    return RedirectResponse(f"/folders/{name}?removed=1", status_code=303)


@router.post("/folders/{name}/delete")
async def delete_folder(name: str, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                        csrf_token: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf_token)
    await hub.folders.get(session, owner_id=user.id, name=name)
    await session.commit()
    await hub.folders.delete(hub.tx, owner_id=user.id, name=name)
    return RedirectResponse(f"/folders?deleted={name}", status_code=303)

