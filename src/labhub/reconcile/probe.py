"""Readiness probes of a starting instance: a cheap connect, then one small HTTP request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit


def _open(url: str) -> Coroutine[Any, Any, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to an upstream URL: ``http://host:port`` or ``unix:/path``."""
    if url.startswith("unix:"):
        return asyncio.open_unix_connection(url.removeprefix("unix:"))
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    return asyncio.open_connection(host, port)


async def listening(url: str, wait: float) -> bool:
    """Whether ``url`` accepts connections, trying every 10 ms for up to ``wait`` s.

    A refused connect costs tens of microseconds; an HTTP client's failed request, a
    millisecond: so the readiness probe only runs once something listens."""
    deadline = time.monotonic() + wait
    while True:
        try:
            async with asyncio.timeout(1.0):
                _, writer = await _open(url)
        except (OSError, TimeoutError):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
            continue
        writer.close()
        return True


async def http_status(url: str, path: str, token: str, timeout: float = 5.0) -> int | None:
    """The status code of ``GET path`` on ``url`` with the instance token, or None.

    One small request on its own connection: the hub does not need a general HTTP
    client for this (httpx would cost the hub several MiB and a slower start)."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port or 80}" if parts.hostname else "localhost"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open(url)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: token {token}\r\n"
                             f"Connection: close\r\n\r\n".encode())
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    fields = line.split(b" ", 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        return None
    return int(fields[1])
