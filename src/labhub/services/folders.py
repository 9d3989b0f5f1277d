"""Folders: a user's named sets of uploaded input files, on disk, with their totals in the database.

Layout (under ``storage.dir``): ``folders/<owner id>/<name>/`` holds a folder's files,
``folders/<owner id>/.staging/`` what is being received.  An upload is received into a
staging file, extracted (or saved) into a staging directory, and only then moved into
the folder: a failed or partial upload leaves nothing behind, and the folder never holds
half an archive.  Files are the hub's (mode 0640); a backend grants a job's account read
access to the one folder the job reads (``LaunchSpec.readable``).

Nothing here holds a database transaction across disk work: read (short session) ->
write files -> record (short session).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import secrets
import shutil
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.files import archive, tree
from labhub.models import Folder, utcnow
from labhub.services import quotas
from labhub.services.errors import Conflict, Invalid, NotFound, TooLarge
from labhub.settings import StorageSettings

FOLDER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Files that are zip archives inside but a format of their own (models, notebooks' data, office files):
# "auto" keeps them as they are; only extract=yes unpacks them.
ZIP_FORMATS = (".keras", ".skops", ".pt", ".pth", ".torchscript", ".npz", ".whl", ".jar", ".docx", ".xlsx",
               ".pptx", ".odt", ".ods")
FOLDER_NAME_RULE = "must be 1-63 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"
Tx = Callable[[], AbstractAsyncContextManager[AsyncSession]]


@dataclass(frozen=True, slots=True)
class FolderInfo:
    name: str
    bytes: int
    files: int
    created_at: dt.datetime
    updated_at: dt.datetime


def _info(row: Folder) -> FolderInfo:
    return FolderInfo(row.name, row.bytes, row.files, row.created_at, row.updated_at)


class Folders:
    """Where folders live and what they may hold (``storage`` settings)."""

    def __init__(self, storage: StorageSettings) -> None:
        assert storage.dir is not None
        self.settings = storage
        self.root = Path(storage.dir) / "folders"

    # -- paths -------------------------------------------------------------------------
    def user_dir(self, owner_id: int) -> Path:
        return self.root / str(int(owner_id))

    def path(self, owner_id: int, name: str) -> Path:
        """The folder's directory (``name`` must be valid: callers check it first)."""
        if not FOLDER_NAME_RE.match(name):
            raise Invalid("invalid folder name", fields={"name": FOLDER_NAME_RULE})
        return self.user_dir(owner_id) / name

    def _staging(self, owner_id: int) -> Path:
        staging = self.user_dir(owner_id) / ".staging"
        staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        return staging

    def new_upload_file(self, owner_id: int) -> Path:
        """A fresh path to receive an upload's bytes into (deleted by :meth:`add` whatever happens)."""
        return self._staging(owner_id) / f"{secrets.token_hex(8)}.upload"

    # -- reads ---------------------------------------------------------------------------
    async def list(self, session: AsyncSession, *, owner_id: int, limit: int = 10_000,
                   offset: int = 0) -> list[FolderInfo]:
        rows = await session.scalars(select(Folder).where(Folder.owner_id == owner_id).order_by(Folder.name)
                                     .limit(limit).offset(offset))
        return [_info(r) for r in rows]

    async def get(self, session: AsyncSession, *, owner_id: int, name: str) -> FolderInfo:
        return _info(await self._row(session, owner_id, name))

    async def files(self, session: AsyncSession, *, owner_id: int, name: str,
                    limit: int = 10_000) -> tuple[FolderInfo, list[tree.Entry], bool]:
        """The folder and its files (at most ``limit``; the flag says whether there were more)."""
        row = await self._row(session, owner_id, name)
        entries, truncated = await asyncio.to_thread(tree.walk, self.path(owner_id, name), max_entries=limit)
        return _info(row), entries, truncated

    async def open(self, session: AsyncSession, *, owner_id: int, name: str, path: str):  # noqa: ANN201
        """One file of the folder, opened for reading (a binary file object)."""
        await self._row(session, owner_id, name)
        try:
            return await asyncio.to_thread(tree.open_file, self.path(owner_id, name), path)
        except tree.TreeError as exc:
            raise NotFound(str(exc)) from exc

    async def _row(self, session: AsyncSession, owner_id: int, name: str) -> Folder:
        if not FOLDER_NAME_RE.match(name or ""):
            raise NotFound(f"no folder named {name!r}")
        row = await session.scalar(select(Folder).where(Folder.owner_id == owner_id, Folder.name == name))
        if row is None:
            raise NotFound(f"no folder named {name!r}")
        return row

    async def used_bytes(self, session: AsyncSession, owner_id: int) -> int:
        """What counts against the user's storage limit: folders and kept artifacts."""
        return await quotas.stored_bytes(session, owner_id)

    # -- writes --------------------------------------------------------------------------
    def upload_limit(self) -> int:
        """The most bytes one upload's body may have (the folder limit; the rest is checked after)."""
        return self.settings.max_folder_bytes

    async def add(self, tx: Tx, *, owner_id: int, name: str, received: Path, filename: str | None,
                  extract: bool | None = None, strip_top: bool = False) -> tuple[FolderInfo, archive.Report]:
        """Put an upload (the bytes in ``received``) into folder ``name``, creating it if needed.

        ``extract``: None extracts a tar or zip archive (recognised by its content) and saves
        anything else as the file ``filename``; True requires an archive; False saves as is.
        Files already in the folder with the same path are replaced.  Raises Invalid (bad name,
        refused archive: the message says which member and why), TooLarge (a limit), Conflict.
        ``received`` is removed whatever happens.
        """
        staged: Path | None = None
        try:
            if not FOLDER_NAME_RE.match(name or ""):
                raise Invalid("invalid folder name", fields={"name": FOLDER_NAME_RULE})
            async with tx() as session:
                row = await session.scalar(select(Folder).where(Folder.owner_id == owner_id, Folder.name == name))
                count = await session.scalar(select(func.count()).select_from(Folder).where(Folder.owner_id == owner_id))
                used = await self.used_bytes(session, owner_id)
                allowed = await quotas.storage_limit(session, owner_id,
                                                     site_bytes=self.settings.max_user_bytes)
            if row is None and (count or 0) >= self.settings.max_folders:
                raise TooLarge(f"you have {count} folders, the most allowed; delete one first",
                               fields={"name": f"at most {self.settings.max_folders} folders per user"})
            have_bytes, have_files = (row.bytes, row.files) if row is not None else (0, 0)
            limits = archive.Limits(
                max_file_bytes=self.settings.max_file_bytes,
                max_total_bytes=max(0, min(self.settings.max_folder_bytes - have_bytes,
                                           allowed - used)),
                max_files=max(0, self.settings.max_folder_files - have_files),
                max_ratio=self.settings.max_ratio,
            )
            staged = received.with_suffix(".d")
            staged.mkdir(mode=0o700)
            report = await asyncio.to_thread(self._unpack, received, staged, limits, filename, extract, strip_top)
            received.unlink(missing_ok=True)
            target = self.path(owner_id, name)
            await asyncio.to_thread(_merge, staged, target)
            size, files = await asyncio.to_thread(measure, target)
            if files > self.settings.max_folder_files or size > self.settings.max_folder_bytes:
                raise TooLarge("the folder is over its limit")  # only concurrent uploads get here
            now = utcnow()
            async with tx() as session:
                row = await session.scalar(select(Folder).where(Folder.owner_id == owner_id, Folder.name == name))
                if row is None:
                    row = Folder(owner_id=owner_id, name=name, created_at=now)
                    session.add(row)
                row.bytes, row.files, row.updated_at = size, files, now
                try:
                    await session.flush()
                except IntegrityError as exc:  # a concurrent upload created it: the next one counts both
                    raise Conflict("the folder was created meanwhile; try again") from exc
                info = _info(row)
            return info, report
        finally:
            received.unlink(missing_ok=True)
            if staged is not None:
                await asyncio.to_thread(tree.remove_tree, staged)

    @staticmethod
    def _unpack(received: Path, staged: Path, limits: archive.Limits, filename: str | None,
                extract: bool | None, strip_top: bool) -> archive.Report:
        kept = extract is None and bool(filename) and filename.lower().endswith(ZIP_FORMATS)  # type: ignore[union-attr]
        kind = archive.kind(received) if extract is not False and not kept else None
        try:
            if kind is not None:
                return archive.extract(received, staged, limits, strip_top=strip_top)
            if extract:
                raise Invalid("not a tar or zip archive", fields={"file": "not a tar or zip archive"})
            if not filename:
                raise Invalid("a file name is needed", fields={"filename": "name the file (?filename=...)"})
            with open(received, "rb") as src:
                return archive.save_file(src, staged, filename, limits)
        except archive.ArchiveError as exc:
            if exc.too_large:
                raise TooLarge(str(exc), fields={"file": str(exc)}) from exc
            raise Invalid(str(exc), fields={"file": str(exc)}) from exc

    async def delete(self, tx: Tx, *, owner_id: int, name: str, path: str | None = None) -> None:
        """Delete the folder (``path`` None) or one file or directory in it."""
        async with tx() as session:
            row = await self._row(session, owner_id, name)
            target = self.path(owner_id, name)
            if path is None:
                await session.delete(row)
                await session.flush()
        if path is None:
            await asyncio.to_thread(tree.remove_tree, target)
            return
        try:
            relative = archive.check_name(path)
        except archive.ArchiveError as exc:
            raise NotFound(str(exc)) from exc
        victim = target / relative
        if victim.is_symlink() or not (victim.is_file() or victim.is_dir()):
            raise NotFound(f"no file {relative!r} in folder {name!r}")
        await asyncio.to_thread(tree.remove_tree if victim.is_dir() else os.unlink, victim)
        size, files = await asyncio.to_thread(measure, target)
        async with tx() as session:
            row = await self._row(session, owner_id, name)
            row.bytes, row.files, row.updated_at = size, files, utcnow()

    async def remove_all(self, owner_id: int) -> None:
        """Every folder of a user (their account is being deleted; the rows go with it)."""
        await asyncio.to_thread(tree.remove_tree, self.user_dir(owner_id))


def measure(root: Path, *, uid: int | None = None, limit: int = 10**6) -> tuple[int, int]:
    """(bytes, files): the apparent sizes of the regular files under ``root`` (what users see and
    download; a sparse file counts its full size), by :func:`tree.walk`'s rules."""
    entries, _ = tree.walk(root, uid=uid, max_entries=limit)
    return sum(e.size for e in entries), len(entries)


def _merge(staged: Path, target: Path) -> None:
    """Move the staged files into ``target``: a rename of the whole directory for a new folder,
    else file by file (a file replaces one of the same path; a file and a directory of the same
    path cannot both exist, so such a clash is refused before anything moves)."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rename(staged, target)  # fails when target exists and is not empty
        return
    entries, _ = tree.walk(staged, max_entries=10**7)
    for entry in entries:
        parts = entry.path.split("/")
        for i in range(1, len(parts) + 1):
            existing = target.joinpath(*parts[:i])
            want_dir = i < len(parts)
            if existing.is_symlink() or (existing.exists() and existing.is_dir() != want_dir):
                raise Conflict(f"{'/'.join(parts[:i])} is a {'file' if want_dir else 'directory'} in the folder "
                               f"already", fields={"file": f"{entry.path} clashes with what the folder holds"})
    for entry in entries:
        destination = target / entry.path
        destination.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.replace(staged / entry.path, destination)
    shutil.rmtree(staged, ignore_errors=True)
