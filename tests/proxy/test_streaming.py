"""ProxyServer: streamed bodies (large, chunked, close-delimited) and WebSockets."""

from __future__ import annotations

import asyncio
import os
import zlib
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from labhub.proxy.http import ClientProtocol
from labhub.proxy.upstream import P_UPSTREAM, UpstreamProtocol

from .conftest import CHUNK, INSTANCE_TOKEN, PATTERN, Env, RssSampler, read_response

pytestmark = pytest.mark.asyncio

BEARER = {"Authorization": "Bearer tok-alice"}
BIG = 200 * 1024 * 1024
#: the proxy, the upstream and the client all run in this process; streaming
#: keeps all three bounded, buffering anything whole would show up as ~200 MB
MAX_GROWTH = 40 * 1024 * 1024


async def _gen(total: int, piece: int = CHUNK) -> Any:
    left = total
    while left:
        n = min(left, piece)
        left -= n
        yield PATTERN[:n]


def _crc(total: int) -> int:
    crc = 0
    left = total
    while left:
        n = min(left, CHUNK)
        left -= n
        crc = zlib.crc32(PATTERN[:n], crc)
    return crc


# -- large bodies ---------------------------------------------------------------------


def _count_calls(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[Any]:
    calls: list[Any] = []
    orig = getattr(cls, name)

    def wrapper(self: Any, *args: Any) -> Any:
        calls.append(args)
        return orig(self, *args)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


async def test_large_upload_streams_with_backpressure(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.echo.slow_read = 0.3  # the instance is slow to start reading: the proxy must pause
    pauses = _count_calls(monkeypatch, ClientProtocol, "pause")
    async with httpx.AsyncClient(base_url=env.url, timeout=30) as c:
        async with RssSampler() as rss:
            r = await c.post("/user/alice/lab/upload", content=_gen(BIG),
                             headers={**BEARER, "Content-Length": str(BIG)})
    assert r.status_code == 200
    assert r.json()["body_len"] == BIG
    assert r.json()["crc"] == _crc(BIG)
    assert rss.growth < MAX_GROWTH, f"RSS grew by {rss.growth / 2**20:.0f} MiB"
    assert (P_UPSTREAM,) in pauses  # the client was paused while the upstream was full


async def test_large_download_streams_with_backpressure(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    pauses = _count_calls(monkeypatch, UpstreamProtocol, "pause_reading")
    got = 0
    crc = 0
    async with httpx.AsyncClient(base_url=env.url, timeout=30) as c:
        async with RssSampler() as rss:
            async with c.stream("GET", f"/user/alice/lab/download?size={BIG}", headers=BEARER) as r:
                assert r.status_code == 200
                assert r.headers["content-length"] == str(BIG)
                await asyncio.sleep(0.3)  # a slow reader: the proxy must pause the upstream
                async for data in r.aiter_raw():
                    got += len(data)
                    crc = zlib.crc32(data, crc)
    assert got == BIG
    assert crc == _crc(BIG)
    assert rss.growth < MAX_GROWTH, f"RSS grew by {rss.growth / 2**20:.0f} MiB"
    assert pauses  # the upstream was paused while the client was slow


# -- framing --------------------------------------------------------------------------


async def test_chunked_request_body(env: Env) -> None:
    total = 3 * 1024 * 1024 + 17
    async with httpx.AsyncClient(base_url=env.url, timeout=30) as c:
        r = await c.put("/user/alice/lab/api/contents", content=_gen(total, 100_000), headers=BEARER)
        assert r.status_code == 200
        p = r.json()
        assert p["body_len"] == total and p["crc"] == _crc_pieces(total, 100_000)
        assert [v for k, v in p["headers"] if k.lower() == "transfer-encoding"] == ["chunked"]
        # and again over the same connections (the chunked terminator was right)
        r = await c.post("/user/alice/lab/x", content=_gen(10, 3), headers=BEARER)
        assert r.json()["body"] == PATTERN[:3].decode("latin-1") * 3 + PATTERN[:1].decode("latin-1")
    assert env.echo.connections == 1


def _crc_pieces(total: int, piece: int) -> int:
    crc = 0
    left = total
    while left:
        n = min(left, piece)
        left -= n
        crc = zlib.crc32(PATTERN[:n], crc)
    return crc


async def test_chunked_response(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url, timeout=30) as c:
        r = await c.get("/user/alice/lab/chunked?n=100&size=1000", headers=BEARER)
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert len(r.content) == 100_000
        assert r.content[:1000] == b"a" * 1000 and r.content[-1000:] == b"v" * 1000
        r = await c.get("/user/alice/lab/api", headers=BEARER)  # connection still in sync
        assert r.json()["method"] == "GET"
    assert env.echo.connections == 1


async def test_chunked_on_the_wire(env: Env) -> None:
    """Raw chunked request with odd chunk sizes and a trailer, then a keep-alive request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    try:
        writer.write(b"POST /user/alice/lab/x HTTP/1.1\r\nHost: h\r\nAuthorization: token tok-alice\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1;ext=1\r\nd\r\n0\r\nX-T: 1\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200
        import json
        assert json.loads(body)["body"] == "abcd"
        writer.write(b"GET /user/alice/lab/chunked?n=2&size=3 HTTP/1.1\r\nHost: h\r\n"
                     b"Authorization: token tok-alice\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert headers["transfer-encoding"] == "chunked"
        assert body == b"aaabbb"
    finally:
        writer.close()


async def test_response_delimited_by_close(env: Env) -> None:
    size = 5 * 1024 * 1024 + 3
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    try:
        writer.write(b"GET /user/alice/lab/eof?size=%d HTTP/1.1\r\nHost: h\r\n"
                     b"Authorization: token tok-alice\r\n\r\n" % size)
        data = await asyncio.wait_for(reader.read(-1), 10)  # the proxy closes after it
    finally:
        writer.close()
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in head.lower()
    assert len(body) == size
    async with httpx.AsyncClient(base_url=env.url) as c:
        r = await c.get("/user/alice/lab/eof?size=1000", headers=BEARER)
        assert r.content == PATTERN[:1000]


# -- WebSockets -----------------------------------------------------------------------


async def test_websocket_echo_through_proxy(env: Env) -> None:
    url = env.ws_url + "/user/alice/ws/api/kernels/k1/channels?session_id=s"
    async with ws_connect(url, additional_headers={"Cookie": "labhub_session=sess-alice; x=1"},
                          max_size=None, compression=None) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01\x02")
        assert await ws.recv() == b"\x00\x01\x02"
        big = os.urandom(1024 * 1024)
        await ws.send(big)
        assert await ws.recv() == big
        for i in range(200):
            await ws.send(f"m{i}")
        assert [await ws.recv() for _ in range(200)] == [f"m{i}" for i in range(200)]
    # the upstream saw the instance token, not the hub cookie
    h = env.ws.request_headers[-1]
    assert h["Authorization"] == f"token {INSTANCE_TOKEN}"
    assert h["Cookie"] == "x=1"
    assert h["X-Forwarded-For"] == "127.0.0.1"
    # the client closing reaches the upstream
    await asyncio.wait_for(env.ws.closed.wait(), 5)
    assert env.lab.last_activity == 0.0 and env.routes.get("alice", "ws").last_activity > 0


async def test_websocket_upstream_close_reaches_client(env: Env) -> None:
    url = env.ws_url + "/user/alice/ws/close-after-one"
    async with ws_connect(url, additional_headers=BEARER, max_size=None) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4001


async def test_websocket_auth(env: Env) -> None:
    url = env.ws_url + "/user/alice/ws/api/kernels/k1/channels"
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(url):
            pass
    assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(url, additional_headers={"Authorization": "token tok-bob"}):
            pass
    assert info.value.response.status_code == 403
    assert env.ws.connections == 0
    async with ws_connect(url, additional_headers={"Authorization": "token tok-root"}) as ws:
        await ws.send("admin")
        assert await ws.recv() == "admin"


async def test_upgrade_refused_by_upstream_is_relayed(env: Env) -> None:
    # the HTTP echo server does not speak WebSocket: its 200 comes back as is
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(env.ws_url + "/user/alice/lab/api/ws", additional_headers=BEARER):
            pass
    assert info.value.response.status_code == 200


async def test_many_websockets_at_once(env: Env) -> None:
    url = env.ws_url + "/user/alice/ws/api/kernels/k/channels"

    async def one(i: int) -> None:
        async with ws_connect(url, additional_headers=BEARER) as ws:
            for j in range(10):
                await ws.send(f"{i}-{j}")
                assert await ws.recv() == f"{i}-{j}"

    await asyncio.gather(*[one(i) for i in range(30)])
    assert env.ws.connections == 30
