"""Answers that carry files: one file streamed from an open file object, or a tar.gz written as
it is sent (never built in memory or on disk first)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import IO

from fastapi.responses import StreamingResponse

CHUNK = 1024 * 1024


def _disposition(filename: str) -> str:
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


def file_answer(fh: IO[bytes], filename: str) -> StreamingResponse:
    """Stream an open file (closed once sent) as a download: never rendered by the browser."""
    size = os.fstat(fh.fileno()).st_size

    async def chunks() -> AsyncIterator[bytes]:
        try:
            sent = 0
            while sent < size:  # never more than the size it had when opened (it may be growing)
                data = await asyncio.to_thread(fh.read, min(CHUNK, size - sent))
                if not data:
                    break
                sent += len(data)
                yield data
        finally:
            fh.close()

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
        "Content-Disposition": _disposition(filename), "Content-Length": str(size),
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"})


def targz_answer(write: Callable[[IO[bytes]], object], filename: str) -> StreamingResponse:
    """A tar.gz that ``write(out)`` produces (blocking, run in a thread) streamed as it is made."""
    read_fd, write_fd = os.pipe()

    def produce() -> None:
        with os.fdopen(write_fd, "wb", buffering=CHUNK) as out, contextlib.suppress(BrokenPipeError):
            write(out)

    async def chunks() -> AsyncIterator[bytes]:
        producer = asyncio.ensure_future(asyncio.to_thread(produce))
        try:
            while True:
                data = await asyncio.to_thread(os.read, read_fd, CHUNK)
                if not data:
                    break
                yield data
            await producer  # its errors surface (the answer is cut short, as it must be)
        finally:
            os.close(read_fd)  # a client gone mid-way: the writer's next write fails and it stops
            with contextlib.suppress(Exception):
                await producer

    return StreamingResponse(chunks(), media_type="application/gzip", headers={
        "Content-Disposition": _disposition(filename), "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store"})
