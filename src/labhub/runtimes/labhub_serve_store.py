"""labhub_serve's store: the model versions uploaded at run time, on disk as ``STORE/NAME/VERSION/model.SUFFIX``
(``model.json`` beside it for a labhub_train spec), and the upload bodies that bring them.

An upload is received into a directory of its own under ``STORE/.incoming`` (bounded by the store's
byte limit, written as it arrives, never held in memory) and becomes ``STORE/NAME/VERSION`` by one
rename once its model has loaded; anything else it left is removed. Runs inside the serve runtime:
imports nothing from LabHub.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from labhub_serve_models import SUFFIXES

NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
VERSION = r"[1-9][0-9]{0,8}"
INCOMING = ".incoming"  # not a model name: names start with a letter or digit
MODEL_FIELDS = ("file", "model")  # the model file's form field (TFaaS calls it "model")
SPEC_FIELDS = ("spec", "params")  # labhub_train's NAME.json
TEXT_FIELDS = ("name", "version")
ARCHIVE_TYPES = (b"application/octet-stream", b"application/gzip", b"application/x-gzip")
_PLAIN_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MAX_MEMBERS = 16
_MAX_TEXT = 1024


class Refused(Exception):
    """A request this server will not do: answered ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """A received upload, unpacked into ``directory``: ``model`` (``model.SUFFIX``), maybe ``model.json``."""

    directory: Path
    model: Path
    stem: str  # the model file's name as sent, without its suffix: the model's name where none is given
    fields: dict[str, str] = field(default_factory=dict)  # "name", "version" as the body or query gave them


@dataclass(frozen=True)
class Store:
    """The ``--store`` directory: uploaded versions, and at most ``max_bytes`` per upload body."""

    root: Path
    max_bytes: int

    @classmethod
    def open(cls, root: Path, max_bytes: int) -> Store:
        """The store at ``root``, made (mode 0700) where missing; uploads an earlier run left half-done are removed."""
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not root.is_dir():
            raise ValueError(f"--store {root} is not a directory")
        shutil.rmtree(root / INCOMING, ignore_errors=True)
        (root / INCOMING).mkdir(mode=0o700)
        return cls(root, max_bytes)

    def scan(self) -> list[tuple[str, str, Path]]:
        """Every stored version as (name, version, model file); a version directory without exactly one
        ``model.SUFFIX`` is a ValueError (the store is this server's own: nothing else writes there)."""
        found = []
        for top in sorted(self.root.iterdir()):
            if not (re.fullmatch(NAME, top.name) and top.is_dir()):
                continue
            for directory in sorted(top.iterdir(), key=lambda p: (len(p.name), p.name)):
                if not (re.fullmatch(VERSION, directory.name) and directory.is_dir()):
                    continue
                files = [p for p in directory.iterdir() if p.stem == "model" and p.suffix.lower() in SUFFIXES]
                if len(files) != 1:
                    raise ValueError(f"--store {self.root}: {directory} holds {len(files)} model files, not one")
                found.append((top.name, directory.name, files[0]))
        return found

    async def receive(self, headers: Mapping[str, str], query: Mapping[str, str],
                      stream: AsyncIterator[bytes]) -> Upload:
        """Read an upload body: multipart/form-data, or a ``.tar.gz`` sent as it is. Refused: 413 past
        ``max_bytes``, 415 for another content type, 400 for a body that is not an upload."""
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise Refused(413, f"the upload is {length} bytes; this server takes at most {self.max_bytes}")
        kind, options = _content_type(headers.get("content-type"))
        if kind != b"multipart/form-data" and kind not in ARCHIVE_TYPES:
            raise Refused(415, "send multipart/form-data (fields name, version, file, spec) or a .tar.gz as "
                               "application/octet-stream with ?name=&version=")
        directory = Path(tempfile.mkdtemp(dir=self.root / INCOMING))
        try:
            body = _bounded(stream, self.max_bytes)
            if kind == b"multipart/form-data":
                upload = await _Form(directory, options.get(b"boundary", b"")).read(body)
            else:
                archive = directory / "upload.tar.gz"
                await _write(body, archive)
                upload = await asyncio.to_thread(_unpack, archive, directory, self.max_bytes)
            for key in TEXT_FIELDS:
                given = query.get(key)
                if given is not None and upload.fields.setdefault(key, given) != given:
                    raise Refused(400, f"{key!r} is given twice, differently: in the form and the query")
            return upload
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def commit(self, upload: Upload, name: str, version: str) -> Path:
        """Make ``upload`` the stored ``name@version`` (one rename); its model file's new path."""
        final = self.root / name / version
        final.parent.mkdir(mode=0o700, exist_ok=True)
        upload.directory.rename(final)
        return final / upload.model.name

    def discard(self, upload: Upload) -> None:
        shutil.rmtree(upload.directory, ignore_errors=True)

    def remove(self, name: str, version: str) -> None:
        """Delete the stored ``name@version`` (slow for a large model: call it off the event loop)."""
        shutil.rmtree(self.root / name / version)

    def prune(self, name: str) -> None:
        """Remove ``name``'s directory if it holds no version (on the event loop, where :meth:`commit` runs:
        never between a commit's making it and renaming a version into it)."""
        with contextlib.suppress(OSError):
            (self.root / name).rmdir()


def _content_type(value: str | None) -> tuple[bytes, dict[bytes, bytes]]:
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(value or "")
    return kind.lower(), options


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """``stream``'s chunks, and a 413 once they add up to more than ``limit`` bytes."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise Refused(413, f"the upload is larger than the {limit} bytes this server takes")
        if chunk:
            yield chunk


async def _write(body: AsyncIterator[bytes], path: Path) -> None:
    with path.open("xb") as out:
        async for chunk in body:
            await asyncio.to_thread(out.write, chunk)


def _model_name(filename: str) -> str:
    """``model.SUFFIX`` for an uploaded model file's name; 400 for a format this server does not load."""
    suffix = Path(filename).suffix.lower()
    if suffix not in SUFFIXES:
        raise Refused(400, f"{filename!r}: unknown model format {suffix!r} (known: {', '.join(sorted(SUFFIXES))})")
    return f"model{suffix}"


class _Form:
    """A multipart/form-data body read as it arrives: the text fields kept, the file fields written to
    ``directory`` (the model as ``model.SUFFIX``, the spec as ``model.json``)."""

    def __init__(self, directory: Path, boundary: bytes) -> None:
        self.directory = directory
        self.boundary = boundary
        self.fields: dict[str, str] = {}
        self.files: dict[str, IO[bytes]] = {}
        self.model: tuple[Path, str] | None = None
        self.ended = False
        self._part: dict[str, Any] = {}
        self._header = [b"", b""]
        self._pending: list[tuple[IO[bytes], bytes]] = []

    async def read(self, body: AsyncIterator[bytes]) -> Upload:
        from python_multipart.exceptions import FormParserError
        from python_multipart.multipart import MultipartParser

        if not self.boundary:
            raise Refused(400, "a multipart/form-data body needs its boundary in the content type")
        parser = MultipartParser(self.boundary, self._callbacks())
        try:
            async for chunk in body:
                parser.write(chunk)
                pending, self._pending = self._pending, []
                if pending:
                    await asyncio.to_thread(_write_all, pending)
            parser.finalize()
        except FormParserError as exc:
            raise Refused(400, f"not a multipart/form-data body: {exc}") from exc
        finally:
            for out in self.files.values():
                out.close()
        if not self.ended:
            raise Refused(400, "the multipart/form-data body ends before its closing boundary")
        if self.model is None:
            raise Refused(400, f"the form has no model file: give it as the field {MODEL_FIELDS[0]!r}")
        return Upload(self.directory, *self.model, fields=self.fields)

    def _callbacks(self) -> dict[str, Callable[..., None]]:
        def begin() -> None:
            self._part = {"disposition": b"", "text": bytearray()}

        def header_field(data: bytes, start: int, end: int) -> None:
            self._header[0] += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            self._header[1] += data[start:end]

        def header_end() -> None:
            if self._header[0].lower() == b"content-disposition":
                self._part["disposition"] = self._header[1]
            self._header = [b"", b""]

        def end() -> None:
            self.ended = True

        return {"on_part_begin": begin, "on_header_field": header_field, "on_header_value": header_value,
                "on_header_end": header_end, "on_headers_finished": self._start_part,
                "on_part_data": self._data, "on_part_end": self._end_part, "on_end": end}

    def _start_part(self) -> None:
        _, options = _content_type(self._part["disposition"].decode("latin-1"))
        name = options.get(b"name", b"").decode("latin-1")
        filename = options.get(b"filename")
        if name in self.fields or name in self.files:
            raise Refused(400, f"the form gives the field {name!r} twice")
        if name in TEXT_FIELDS and filename is None:
            self._part["name"] = name
            return
        if filename is None or name not in MODEL_FIELDS + SPEC_FIELDS:
            raise Refused(400, f"the form field {name!r} is not one this server takes: name and version as "
                               "text, file (the model) and optionally spec (labhub_train's .json) as files")
        if name in MODEL_FIELDS:
            if self.model is not None:
                raise Refused(400, "the form gives two model files")
            sent = filename.decode("utf-8", "replace")
            path = self.directory / _model_name(sent)
            self.model = (path, Path(sent).stem)
        else:
            if any(field in self.files for field in SPEC_FIELDS):
                raise Refused(400, "the form gives two spec files")
            path = self.directory / "model.json"
        self.files[name] = self._part["file"] = path.open("xb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if "file" in self._part:
            self._pending.append((self._part["file"], data[start:end]))
            return
        self._part["text"] += data[start:end]
        if len(self._part["text"]) > _MAX_TEXT:
            raise Refused(400, f"the form field {self._part['name']!r} is longer than {_MAX_TEXT} bytes")

    def _end_part(self) -> None:
        if "name" in self._part:
            try:
                self.fields[self._part["name"]] = self._part["text"].decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise Refused(400, f"the form field {self._part['name']!r} is not UTF-8") from exc


def _write_all(pending: list[tuple[IO[bytes], bytes]]) -> None:
    for out, data in pending:
        out.write(data)


def _unpack(archive: Path, directory: Path, limit: int) -> Upload:
    """The model file (and a ``.json`` spec) from a ``.tar.gz``: regular files at its top level only,
    at most ``limit`` bytes in all; links, folders, devices and anything else are refused."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _members(tar, limit)
            models = [m for m in members if Path(m.name).suffix.lower() in SUFFIXES]
            specs = [m for m in members if Path(m.name).suffix.lower() == ".json"]
            others = sorted(m.name for m in members if m not in models and m not in specs)
            if len(models) != 1 or len(specs) > 1 or others:
                raise Refused(400, f"the archive must hold one model file (and at most one .json spec); it holds "
                                   f"{sorted(m.name for m in members)}")
            targets = [(models[0], directory / _model_name(models[0].name))]
            targets += [(spec, directory / "model.json") for spec in specs]
            for member, path in targets:
                source = tar.extractfile(member)
                assert source is not None  # a regular file's
                with source, path.open("xb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise Refused(400, f"the body is not a .tar.gz archive: {exc}") from exc
    archive.unlink()
    return Upload(directory, targets[0][1], Path(models[0].name).stem)


def _members(tar: tarfile.TarFile, limit: int) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:
        name = member.name.removeprefix("./")
        if member.isdir() and name in ("", "."):
            continue
        if len(members) == _MAX_MEMBERS:
            raise Refused(400, f"the archive holds more than {_MAX_MEMBERS} files")
        if not member.isreg():
            kind = "link" if member.issym() or member.islnk() else "folder" if member.isdir() else "special file"
            raise Refused(400, f"the archive's {member.name!r} is a {kind}: only regular files at its top level "
                               "are taken")
        if not _PLAIN_FILE.fullmatch(name):
            raise Refused(400, f"the archive's {member.name!r} is not a plain file name at its top level")
        total += member.size
        if total > limit:
            raise Refused(413, f"the archive unpacks to more than the {limit} bytes this server takes")
        member.name = name
        members.append(member)
    return members
