"""Real upstreams for the proxy tests: an HTTP echo server (h11, TCP or unix
socket), a websockets echo server, and a proxy wired to them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import pytest_asyncio

try:
    import labhub.proxy  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from labhub.proxy.routes import Authenticator, Principal, Route, RouteTable  # noqa: E402
from labhub.proxy.server import ProxyServer  # noqa: E402

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """Run every async test on plain asyncio and on uvloop (what the hub runs)."""
    factories: dict[str, Any] = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


CHUNK = 256 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover


class RssSampler:
    """Highest RSS seen while the block runs, sampled every few ms."""

    def __init__(self) -> None:
        self.base = 0
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await asyncio.sleep(0.005)

    async def __aenter__(self) -> RssSampler:
        self.base = self.peak = rss_bytes()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.base


class EchoUpstream:
    """A small HTTP/1.1 server (h11) that echoes requests as JSON.

    Endpoints, matched on the last path segment (so they work under any prefix):
      ``upload``            stream the body in, answer its length and crc32
      ``download?size=N``   N bytes with Content-Length, streamed
      ``chunked?n=K&size=S`` K chunks of S bytes, chunked framing
      ``eof?size=N``        N bytes with no framing, then close
      ``drop-next``         answer, then drop the connection at the next request
      ``close``             answer with ``Connection: close``
      ``status?code=C``     an empty response with that status
      anything else         JSON: server, method, target, headers, body
    ``slow_read`` delays reading request bodies (to exercise backpressure).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self.requests = 0
        self.slow_read = 0.0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.path = ""
        self._writers: set[asyncio.StreamWriter] = set()

    async def start_tcp(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=CHUNK)
        self.port = self.server.sockets[0].getsockname()[1]

    async def start_unix(self, path: str) -> None:
        self.path = path
        self.server = await asyncio.start_unix_server(self._handle, path, limit=CHUNK)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self._writers):
            w.close()
        await asyncio.sleep(0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=128 * 1024)
        drop_next = False

        async def next_event() -> Any:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(CHUNK))
                    continue
                return event

        async def send(*events: Any) -> None:
            for ev in events:
                data = conn.send(ev)
                if data:
                    writer.write(data)
            await writer.drain()

        try:
            while True:
                event = await next_event()
                if isinstance(event, (h11.ConnectionClosed,)) or event is h11.PAUSED:
                    break
                assert isinstance(event, h11.Request), event
                if drop_next:
                    break
                self.requests += 1
                target = event.target.decode()
                parts = urlsplit(target)
                last = parts.path.rstrip("/").rsplit("/", 1)[-1]
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if last == "upload" and self.slow_read:
                    await asyncio.sleep(self.slow_read)
                if conn.they_are_waiting_for_100_continue:
                    if last == "refuse-continue":
                        await send(h11.Response(status_code=417, headers=[("Content-Length", "0")]),
                                   h11.EndOfMessage())
                        break
                    await send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
                # read the body (streamed: only length, crc and the first bytes kept)
                body = bytearray()
                n = 0
                crc = 0
                while True:
                    ev = await next_event()
                    if isinstance(ev, h11.Data):
                        n += len(ev.data)
                        crc = zlib.crc32(ev.data, crc)
                        if len(body) < 65536:
                            body += ev.data[:65536 - len(body)]
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    else:
                        raise AssertionError(ev)
                headers = [(k.decode("latin-1"), v.decode("latin-1"))
                           for k, v in event.headers.raw_items()]
                if last == "download":
                    size = int(query["size"])
                    await send(h11.Response(status_code=200, headers=[
                        ("Content-Length", str(size)), ("Content-Type", "application/octet-stream")]))
                    left = size
                    while left:
                        piece = PATTERN[:min(left, CHUNK)]
                        left -= len(piece)
                        await send(h11.Data(data=piece))
                    await send(h11.EndOfMessage())
                elif last == "chunked":
                    k, size = int(query["n"]), int(query["size"])
                    await send(h11.Response(status_code=200, headers=[("Content-Type", "text/plain"),
                                                                      ("Transfer-Encoding", "chunked")]))
                    for i in range(k):
                        await send(h11.Data(data=bytes([97 + i % 26]) * size))
                    await send(h11.EndOfMessage(headers=[("X-Trailer", "t")]))
                elif last == "eof":
                    size = int(query["size"])
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                    left = size
                    while left:
                        piece = PATTERN[:min(left, CHUNK)]
                        left -= len(piece)
                        writer.write(piece)
                        await writer.drain()
                    break
                elif last == "status":
                    await send(h11.Response(status_code=int(query["code"]), headers=[
                        ("Content-Length", "0")] if int(query["code"]) not in (204, 304) else []),
                        h11.EndOfMessage())
                else:
                    payload = json.dumps({
                        "server": self.name, "method": event.method.decode(), "target": target,
                        "http_version": event.http_version.decode(),
                        "headers": headers, "body": bytes(body).decode("latin-1"),
                        "body_len": n, "crc": crc,
                    }).encode()
                    resp_headers = [("Content-Type", "application/json"),
                                    ("Content-Length", str(len(payload))),
                                    ("X-Upstream", self.name)]
                    if last == "close":
                        resp_headers.append(("Connection", "close"))
                    if last == "set-cookie":
                        resp_headers += [("Set-Cookie", "labhub_session=evil; Path=/"),
                                         ("set-cookie", "Labhub_csrf=x"),
                                         ("Set-Cookie", "_xsrf=abc; Path=/user/alice/lab/")]
                    await send(h11.Response(status_code=200, headers=resp_headers))
                    if event.method != b"HEAD":
                        await send(h11.Data(data=payload))
                    await send(h11.EndOfMessage())
                    if last == "drop-next":
                        drop_next = True
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


class WsUpstream:
    """A websockets echo server; ``.../close-after-one`` closes with 4001 after a message."""

    def __init__(self) -> None:
        self.port = 0
        self.server: Any = None
        self.request_headers: list[Any] = []
        self.closed = asyncio.Event()
        self.connections = 0

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        async def handler(ws: Any) -> None:
            self.connections += 1
            self.request_headers.append(ws.request.headers)
            try:
                if ws.request.path.endswith("/close-after-one"):
                    msg = await ws.recv()
                    await ws.send(msg)
                    await ws.close(4001, "bye")
                    return
                async for msg in ws:
                    await ws.send(msg)
            finally:
                self.closed.set()

        self.server = await serve(handler, "127.0.0.1", 0, max_size=None, compression=None)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


ALICE = Principal(user_id=1, username="alice", is_admin=False)
BOB = Principal(user_id=2, username="bob", is_admin=False)
ROOT = Principal(user_id=3, username="root", is_admin=True)
READONLY = Principal(user_id=1, username="alice", is_admin=False, scopes=frozenset({"read"}))

TOKENS = {"tok-alice": ALICE, "tok-bob": BOB, "tok-root": ROOT, "tok-readonly": READONLY}
SESSIONS = {"sess-alice": ALICE, "sess-bob": BOB}
INSTANCE_TOKEN = "instance-secret-1"


@dataclass
class Env:
    proxy: ProxyServer
    routes: RouteTable
    auth: Authenticator
    echo: EchoUpstream
    hub: EchoUpstream
    ws: WsUpstream
    lookups: list[tuple[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.proxy.port}"

    @property
    def lab(self) -> Route:
        route = self.routes.get("alice", "lab")
        assert route is not None
        return route


def _short_dir(tmp_path: Path) -> tuple[Path, bool]:
    # AF_UNIX paths are limited to ~107 bytes
    if len(str(tmp_path / "hub.sock")) < 100:
        return tmp_path, False
    return Path(tempfile.mkdtemp(prefix="lhp")), True


@contextlib.asynccontextmanager
async def upstreams(tmp_path: Path) -> AsyncIterator[tuple[EchoUpstream, EchoUpstream, WsUpstream]]:
    """The instance's HTTP echo (TCP), the hub's (a unix socket) and a WebSocket echo, closed afterwards."""
    echo = EchoUpstream("instance")
    await echo.start_tcp()
    hub = EchoUpstream("hub")
    sock_dir, cleanup = _short_dir(tmp_path)
    await hub.start_unix(str(sock_dir / "hub.sock"))
    ws = WsUpstream()
    await ws.start()
    try:
        yield echo, hub, ws
    finally:
        await echo.close()
        await hub.close()
        await ws.close()
        if cleanup:
            shutil.rmtree(sock_dir, ignore_errors=True)
        elif (sock_dir / "hub.sock").exists():
            os.unlink(sock_dir / "hub.sock")


def make_routes(echo: EchoUpstream, ws: WsUpstream, *, labels: bool = False) -> RouteTable:
    """alice's ``lab`` (echo) and ``ws`` (WebSocket echo), bob's ``lab``; with origin labels if asked."""
    routes = RouteTable()
    for iid, uid, owner, name, port, token in (("i-lab", 1, "alice", "lab", echo.port, INSTANCE_TOKEN),
                                               ("i-ws", 1, "alice", "ws", ws.port, INSTANCE_TOKEN),
                                               ("i-bob", 2, "bob", "lab", echo.port, "bob-secret")):
        routes.add(Route(iid, uid, owner, name, "127.0.0.1", port, token, label=f"{name}--{owner}" if labels else ""))
    return routes


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> Any:
    async with upstreams(tmp_path) as (echo, hub, ws):
        lookups: list[tuple[str, str]] = []

        async def lookup(kind: str, secret: str) -> Principal | None:
            lookups.append((kind, secret))
            await asyncio.sleep(0)
            return (TOKENS if kind == "token" else SESSIONS).get(secret)

        routes = make_routes(echo, ws)
        auth = Authenticator(lookup)
        proxy = ProxyServer(routes=routes, auth=auth, hub_upstream=hub.path)
        await proxy.start("127.0.0.1", 0)
        try:
            yield Env(proxy, routes, auth, echo, hub, ws, lookups)
        finally:
            await proxy.close()


async def raw_request(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the proxy closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length or chunked response from a raw connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        body = await reader.read(-1)
    return status, headers, body
