"""Receiving an upload: the request body streamed to a file, never held in memory.

Two shapes are accepted: ``multipart/form-data`` (what ``curl -F file=@x`` and browser
forms send; the first file part of the named field is kept) and any other body taken
as the file's bytes (``curl --data-binary @x``, the CLI).  The byte limit holds while
streaming: the client gets 413 as soon as it is passed, and nothing is kept.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from labhub.services.errors import Invalid, TooLarge

MAX_HEADER_BYTES = 1024 * 1024  # part headers, all parts together (the file parts' data is not counted)


class _Sink:
    """Writes the wanted part's bytes to ``fd``, counting them against ``limit``."""

    def __init__(self, fd: int, limit: int, field: str) -> None:
        self.fd, self.limit, self.field = fd, limit, field
        self.written = 0
        self.filename: str | None = None
        self.found = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._current = False  # the part being read is the one kept

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.written > self.limit:
            raise TooLarge(f"the upload is over the limit of {self.limit} bytes")
        view = memoryview(data)
        while view:
            done = os.write(self.fd, view)
            view = view[done:]

    # multipart callbacks
    def part_begin(self) -> None:
        self._headers = {}
        self._current = False

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        self._count(end - start)

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._count(end - start)

    def header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if name == self.field and filename is not None and not self.found:
            self.found = self._current = True
            self.filename = filename.decode("utf-8", "replace")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current:
            self.write(data[start:end])

    def part_end(self) -> None:
        self._current = False

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise Invalid("malformed multipart body", fields={"file": "too many part headers"})


async def receive(request: Request, dest: Path, *, limit: int, field: str = "file") -> str | None:
    """Stream the body into the new file ``dest``; returns the file name a multipart part gave.

    Raises TooLarge past ``limit`` bytes of file content, Invalid for a malformed multipart
    body or one without a file in ``field``.  ``dest`` is left for the caller to remove.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        sink = _Sink(fd, limit, field)
        if content_type == b"multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise Invalid("malformed multipart body", fields={"file": "no boundary"})
            parser = MultipartParser(boundary, {
                "on_part_begin": sink.part_begin, "on_header_field": sink.header_field,
                "on_header_value": sink.header_value, "on_header_end": sink.header_end,
                "on_headers_finished": sink.headers_finished, "on_part_data": sink.part_data,
                "on_part_end": sink.part_end})
            async for chunk in request.stream():
                try:
                    parser.write(chunk)
                except (TooLarge, Invalid):
                    raise
                except Exception as exc:  # noqa: BLE001 - the parser's errors: the body is malformed
                    raise Invalid("malformed multipart body", fields={"file": str(exc)[:200]}) from exc
            parser.finalize()
            if not sink.found:
                raise Invalid("no file in the upload", fields={field: f"send the file in the form field {field!r}"})
            return sink.filename
        async for chunk in request.stream():
            sink.write(chunk)
        return None
    finally:
        os.close(fd)
