"""ProxyServer: routing, authentication, header rewriting, keep-alive, errors."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from labhub.proxy.routes import Authenticator, Route, RouteTable
from labhub.proxy.server import ProxyServer

from .conftest import INSTANCE_TOKEN, Env, raw_request, read_response

pytestmark = pytest.mark.asyncio

BEARER = {"Authorization": "Bearer tok-alice"}


def hdrs(payload: dict[str, Any], name: str) -> list[str]:
    """All values of header ``name`` (case-insensitive) the upstream received."""
    return [v for k, v in payload["headers"] if k.lower() == name.lower()]


async def client(env: Env, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=env.url, timeout=10, **kw)


# -- routing ------------------------------------------------------------------------


async def test_hub_fallback_over_unix_socket(env: Env) -> None:
    async with await client(env) as c:
        r = await c.get("/hub/home?x=1", headers={
            "Authorization": "token hub-api-token", "Cookie": "labhub_session=s1; other=2",
            "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil", "X-Forwarded-Proto": "https"})
    assert r.status_code == 200
    p = r.json()
    assert p["server"] == "hub"
    assert p["target"] == "/hub/home?x=1"
    # the hub gets its own credentials untouched
    assert hdrs(p, "authorization") == ["token hub-api-token"]
    assert hdrs(p, "cookie") == ["labhub_session=s1; other=2"]
    # forwarded headers replaced, not appended
    assert hdrs(p, "x-forwarded-for") == ["127.0.0.1"]
    assert hdrs(p, "x-forwarded-proto") == ["http"]
    assert hdrs(p, "x-forwarded-host") == [f"127.0.0.1:{env.proxy.port}"]
    assert env.lookups == []  # the hub does its own authentication


@pytest.mark.parametrize("path", [
    "/user/alice/nope/lab",      # no such route
    "/user/alice/lab",           # no trailing slash: the hub redirects
    "/user/alice/lab?x=/y/",     # query is not part of the name
    "/user/alice",
    "/users/alice/lab/",
    "/",
])
async def test_non_instance_paths_go_to_hub(env: Env, path: str) -> None:
    async with await client(env) as c:
        r = await c.get(path, headers=BEARER)
    assert r.status_code == 200
    assert r.json()["server"] == "hub"
    assert r.json()["target"] == path


async def test_instance_route_for_owner(env: Env) -> None:
    async with await client(env) as c:
        r = await c.post("/user/alice/lab/api/contents?type=file", headers=BEARER, content=b"hello")
    assert r.status_code == 200
    p = r.json()
    assert p["server"] == "instance"
    assert p["method"] == "POST"
    assert p["target"] == "/user/alice/lab/api/contents?type=file"  # path and query unchanged
    assert p["body"] == "hello"
    assert hdrs(p, "host") == [f"127.0.0.1:{env.proxy.port}"]
    assert r.headers["x-upstream"] == "instance"


async def test_percent_encoded_route_segments(env: Env) -> None:
    async with await client(env) as c:
        r = await c.get("/user/al%69ce/lab/x", headers=BEARER)
    assert r.json()["server"] == "instance"


# -- authentication and authorization ----------------------------------------------


async def test_anonymous_browser_is_redirected_to_login(env: Env) -> None:
    async with await client(env) as c:
        r = await c.get("/user/alice/lab/tree/a b?x=1&y=2",
                        headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert r.status_code == 302
    assert r.headers["location"] == (
        "/login?next=%2Fuser%2Falice%2Flab%2Ftree%2Fa%2520b%3Fx%3D1%26y%3D2")  # the raw target, quoted
    assert env.echo.requests == 0


async def test_anonymous_api_gets_401(env: Env) -> None:
    async with await client(env) as c:
        r = await c.get("/user/alice/lab/api/status", headers={"Accept": "application/json"})
        r2 = await c.post("/user/alice/lab/api/x", headers={"Accept": "text/html"}, content=b"{}")
    for resp in (r, r2):
        assert resp.status_code == 401
        assert resp.json() == {"detail": "authentication required"}
        assert resp.headers["www-authenticate"] == "Bearer"
        assert resp.headers["content-type"] == "application/json"
    assert env.echo.requests == 0


async def test_bad_credentials_get_401(env: Env) -> None:
    async with await client(env) as c:
        for h in ({"Authorization": "Bearer nope"}, {"Authorization": "token nope"},
                  {"Cookie": "labhub_session=nope"}, {"Authorization": "Bearer"},
                  {"Cookie": "labhub_session="}, {"Authorization": "Basic eDp5"}):
            r = await c.get("/user/alice/lab/api", headers=h)
            assert r.status_code == 401, h


async def test_other_user_gets_403(env: Env) -> None:
    async with await client(env) as c:
        r = await c.get("/user/alice/lab/api", headers={"Authorization": "Bearer tok-bob"})
        assert r.status_code == 403
        assert r.json() == {"detail": "not your instance"}
        r = await c.get("/user/alice/lab/tree", headers={"Cookie": "labhub_session=sess-bob",
                                                         "Accept": "text/html"})
        assert r.status_code == 403
        assert r.headers["content-type"].startswith("text/html")
        assert "<h1>403 Forbidden</h1>" in r.text
        # a token without an instance scope is refused too
        r = await c.get("/user/alice/lab/api", headers={"Authorization": "Bearer tok-readonly"})
        assert r.status_code == 403
    assert env.echo.requests == 0


async def test_admin_may_use_any_instance(env: Env) -> None:
    async with await client(env) as c:
        r = await c.get("/user/alice/lab/api", headers={"Authorization": "token tok-root"})
        r2 = await c.get("/user/bob/lab/api", headers={"Authorization": "token tok-root"})
    assert r.status_code == 200 and r.json()["server"] == "instance"
    assert r2.status_code == 200
    assert hdrs(r2.json(), "authorization") == ["token bob-secret"]


@pytest.mark.parametrize("headers,kind", [
    ({"Authorization": "Bearer tok-alice"}, ("token", "tok-alice")),
    ({"Authorization": "bearer tok-alice"}, ("token", "tok-alice")),
    ({"Authorization": "token tok-alice"}, ("token", "tok-alice")),
    ({"Cookie": "a=1; labhub_session=sess-alice"}, ("session", "sess-alice")),
    ({"Cookie": 'labhub_session="sess-alice"'}, ("session", "sess-alice")),
    # an Authorization scheme we do not know falls back to the cookie
    ({"Authorization": "Basic eDp5", "Cookie": "labhub_session=sess-alice"}, ("session", "sess-alice")),
    # the header wins over the cookie
    ({"Authorization": "Bearer tok-alice", "Cookie": "labhub_session=sess-bob"}, ("token", "tok-alice")),
])
async def test_credential_sources(env: Env, headers: dict[str, str], kind: tuple[str, str]) -> None:
    async with await client(env) as c:
        r = await c.get("/user/alice/lab/api", headers=headers)
    assert r.status_code == 200
    assert env.lookups == [kind]


async def test_hub_credentials_stripped_and_instance_token_injected(env: Env) -> None:
    async with await client(env) as c:
        r = await c.get("/user/alice/lab/api", headers={
            "Authorization": "Bearer tok-alice",
            "Cookie": "_xsrf=2|ab|cd;  labhub_session=abc; theme=dark ;labhub_csrf=zz; last=1"})
        p = r.json()
        assert hdrs(p, "authorization") == [f"token {INSTANCE_TOKEN}"]
        # other cookies byte-for-byte, hub cookies gone
        assert hdrs(p, "cookie") == ["_xsrf=2|ab|cd; theme=dark ; last=1"]
        # only hub cookies: the header disappears
        r = await c.get("/user/alice/lab/api", headers={
            "Cookie": "labhub_session=sess-alice; labhub_csrf=x"})
        p = r.json()
        assert hdrs(p, "cookie") == []
        assert hdrs(p, "authorization") == [f"token {INSTANCE_TOKEN}"]
        # no cookies at all
        r = await c.get("/user/alice/lab/api", headers=BEARER)
        assert hdrs(r.json(), "cookie") == []


async def test_instance_cannot_set_hub_cookies(env: Env) -> None:
    async with await client(env) as c:
        r = await c.get("/user/alice/lab/set-cookie", headers=BEARER)
        assert r.headers.get_list("set-cookie") == ["Labhub_csrf=x", "_xsrf=abc; Path=/user/alice/lab/"]
        r = await c.get("/hub/set-cookie")  # the hub may
        assert len(r.headers.get_list("set-cookie")) == 3


async def test_forwarded_headers_on_instance_route(env: Env) -> None:
    async with await client(env) as c:
        r = await c.get("/user/alice/lab/api", headers={
            **BEARER, "X-Forwarded-For": "1.2.3.4", "x-forwarded-proto": "https",
            "Host": "hub.example.org", "Origin": "http://hub.example.org"})
    p = r.json()
    assert hdrs(p, "x-forwarded-for") == ["127.0.0.1"]
    assert hdrs(p, "x-forwarded-proto") == ["http"]
    assert hdrs(p, "x-forwarded-host") == ["hub.example.org"]
    assert hdrs(p, "host") == ["hub.example.org"]
    assert hdrs(p, "origin") == ["http://hub.example.org"]


async def test_authenticator_cache_saves_lookups(env: Env) -> None:
    async with await client(env) as c:
        for _ in range(20):
            assert (await c.get("/user/alice/lab/api", headers=BEARER)).status_code == 200
        for _ in range(5):
            r = await c.get("/user/alice/lab/api", headers={"Cookie": "labhub_session=sess-alice"})
            assert r.status_code == 200
        for _ in range(5):  # negative results are cached too
            assert (await c.get("/user/alice/lab/api",
                                headers={"Authorization": "Bearer bad"})).status_code == 401
    assert env.lookups == [("token", "tok-alice"), ("session", "sess-alice"), ("token", "bad")]
    # invalidation takes effect at once
    env.auth.invalidate_user(1)
    async with await client(env) as c:
        assert (await c.get("/user/alice/lab/api", headers=BEARER)).status_code == 200
    assert len(env.lookups) == 4


async def test_lookup_failure_answers_503(env: Env) -> None:
    async def broken(kind: str, secret: str) -> Any:
        raise RuntimeError("database is down")

    env.proxy.auth = Authenticator(broken)
    async with await client(env) as c:
        r = await c.get("/user/alice/lab/api", headers=BEARER)
        assert r.status_code == 503
        r = await c.get("/hub/ok")  # the connection and the proxy live on
        assert r.status_code == 200


async def test_last_activity_updated(env: Env) -> None:
    route = env.lab
    assert route.last_activity == 0.0
    before = time.time()
    async with await client(env) as c:
        await c.get("/user/alice/lab/api", headers=BEARER)
    assert before <= route.last_activity <= time.time()
    # refused requests do not count as activity
    route.last_activity = 0.0
    async with await client(env) as c:
        await c.get("/user/alice/lab/api", headers={"Authorization": "Bearer tok-bob"})
    assert route.last_activity == 0.0


# -- connections ----------------------------------------------------------------------


async def test_keepalive_reuses_one_upstream_connection(env: Env) -> None:
    async with await client(env) as c:
        for i in range(50):
            r = await c.get(f"/user/alice/lab/api/{i}", headers=BEARER)
            assert r.json()["target"] == f"/user/alice/lab/api/{i}"
            r = await c.post("/hub/api/x", content=b"x" * i)
            assert r.json()["body_len"] == i
    assert env.echo.connections == 1
    assert env.echo.requests == 50
    assert env.hub.connections == 1
    assert env.hub.requests == 50


async def test_concurrent_clients(env: Env) -> None:
    async with await client(env) as c:
        rs = await asyncio.gather(*[c.get(f"/user/alice/lab/{i}", headers=BEARER) for i in range(40)])
    assert [r.json()["target"] for r in rs] == [f"/user/alice/lab/{i}" for i in range(40)]
    assert env.echo.connections <= 40


async def test_pooled_connection_closed_by_upstream_is_retried(env: Env) -> None:
    async with await client(env) as c:
        # the upstream drops the pooled connection when it gets the next request
        await c.get("/user/alice/lab/drop-next", headers=BEARER)
        r = await c.get("/user/alice/lab/after", headers=BEARER)
        assert r.status_code == 200
        assert r.json()["target"] == "/user/alice/lab/after"
        assert env.echo.connections == 2
        # a request with a body is not replayed
        await c.get("/user/alice/lab/drop-next", headers=BEARER)
        r = await c.post("/user/alice/lab/post", headers=BEARER, content=b"data")
        assert r.status_code == 502


async def test_upstream_connection_close_is_not_pooled(env: Env) -> None:
    async with await client(env) as c:
        r = await c.get("/user/alice/lab/close", headers=BEARER)
        assert r.status_code == 200
        assert "close" not in r.headers.get("connection", "")  # hop-by-hop, not relayed
        r = await c.get("/user/alice/lab/again", headers=BEARER)
        assert r.status_code == 200
    assert env.echo.connections == 2


async def test_client_connection_close_and_http10(env: Env) -> None:
    raw = await raw_request(env.proxy.port, b"GET /hub/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in raw
    raw = await raw_request(env.proxy.port, b"GET /hub/b HTTP/1.0\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ")
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["target"] == "/hub/b"
    # a chunked upstream response reaches an HTTP/1.0 client unframed, then close
    raw = await raw_request(env.proxy.port, b"GET /user/alice/lab/chunked?n=3&size=5 HTTP/1.0\r\n"
                                            b"Authorization: token tok-alice\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"chunked" not in head.lower()
    assert body == b"aaaaabbbbbccccc"


async def test_http10_keepalive(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    try:
        for i in range(3):
            writer.write(b"GET /hub/%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
            status, headers, body = await read_response(reader)
            assert status == 200
            assert headers["connection"] == "keep-alive"
            assert json.loads(body)["target"] == f"/hub/{i}"
    finally:
        writer.close()


async def test_pipelined_requests_answered_in_order(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    try:
        writer.write(b"".join(
            b"GET /user/alice/lab/%d HTTP/1.1\r\nHost: x\r\nAuthorization: token tok-alice\r\n\r\n" % i
            for i in range(5)) + b"POST /hub/p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            + b"GET /user/alice/lab/x HTTP/1.1\r\nHost: x\r\n\r\n")
        for i in range(5):
            status, _, body = await read_response(reader)
            assert status == 200 and json.loads(body)["target"] == f"/user/alice/lab/{i}"
        status, _, body = await read_response(reader)
        assert json.loads(body)["body"] == "abc"
        status, _, body = await read_response(reader)
        assert status == 401
    finally:
        writer.close()


async def test_head_request_and_empty_statuses(env: Env) -> None:
    async with await client(env) as c:
        r = await c.head("/user/alice/lab/api", headers=BEARER)
        assert r.status_code == 200
        assert int(r.headers["content-length"]) > 0
        assert r.content == b""
        for code in (204, 304, 404):
            r = await c.get(f"/user/alice/lab/status?code={code}", headers=BEARER)
            assert r.status_code == code
        r = await c.get("/user/alice/lab/api", headers=BEARER)
        assert r.json()["method"] == "GET"
    assert env.echo.connections == 1


async def test_idle_client_connection_closed(env: Env) -> None:
    proxy = ProxyServer(routes=env.routes, auth=env.auth, hub_upstream=env.hub.path,
                        idle_timeout=0.3)
    await proxy.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /hub/x HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status == 200
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy
        assert 0.2 < time.monotonic() - t0 < 3
        writer.close()
        # a connection that never completes its request head is closed too
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /hub/x HTTP/1.1\r\nHost:")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await proxy.close()


async def test_expect_100_continue(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    try:
        writer.write(b"POST /user/alice/lab/x HTTP/1.1\r\nHost: h\r\nAuthorization: token tok-alice\r\n"
                     b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["body"] == "hello"
        # an upstream that refuses before the body: the answer is relayed, then close
        writer.write(b"POST /user/alice/lab/refuse-continue HTTP/1.1\r\nHost: h\r\n"
                     b"Authorization: token tok-alice\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert status == 417 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_refused_upload_gets_its_answer(env: Env) -> None:
    """A 401 to a large upload reaches the client instead of a connection reset."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    writer.write(b"PUT /user/alice/lab/api/contents/big HTTP/1.1\r\nHost: h\r\n"
                 b"Content-Length: 100000000\r\n\r\n")
    try:
        for _ in range(64):
            writer.write(b"x" * 65536)
            await asyncio.wait_for(writer.drain(), 5)
    except (TimeoutError, ConnectionError):
        pass
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 401 ")
    assert b"Connection: close" in data
    # a small refused body is read and dropped, and the connection kept
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    try:
        for _ in range(2):
            writer.write(b"POST /user/alice/lab/x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
            status, headers, _ = await read_response(reader)
            assert status == 401 and "connection" not in headers
    finally:
        writer.close()
    assert env.echo.requests == 0


# -- errors ---------------------------------------------------------------------------


async def test_upstream_down_gives_502(env: Env) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead_port = s.getsockname()[1]
    s.close()
    env.routes.add(Route("i-dead", 1, "alice", "dead", "127.0.0.1", dead_port, "t"))
    async with await client(env) as c:
        r = await c.get("/user/alice/dead/api", headers=BEARER)
        assert r.status_code == 502
        assert "not reachable" in r.json()["detail"]
        r = await c.get("/user/alice/dead/lab", headers={**BEARER, "Accept": "text/html"})
        assert r.status_code == 502
        assert "<h1>502 Bad Gateway</h1>" in r.text
        # the connection is still good
        assert (await c.get("/user/alice/lab/api", headers=BEARER)).status_code == 200


async def test_hub_down_gives_502(env: Env, tmp_path: Any) -> None:
    proxy = ProxyServer(routes=RouteTable(), auth=env.auth, hub_upstream=str(tmp_path / "none.sock"))
    await proxy.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.port}") as c:
            r = await c.get("/hub/home")
        assert r.status_code == 502
    finally:
        await proxy.close()


async def test_oversized_header_gives_431(env: Env) -> None:
    raw = await raw_request(env.proxy.port, b"GET /hub/x HTTP/1.1\r\nHost: x\r\nX-Big: "
                            + b"a" * (70 * 1024) + b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 431 ")
    raw = await raw_request(env.proxy.port, b"GET /hub/" + b"a" * (70 * 1024) + b" HTTP/1.1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 431 ")
    # many small headers add up
    raw = await raw_request(env.proxy.port, b"GET /hub/x HTTP/1.1\r\n"
                            + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(1000)) + b"\r\n")
    assert raw.startswith(b"HTTP/1.1 431 ")
    # a header that never ends is cut off without being buffered forever
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nX-Endless: ")
    try:
        for _ in range(40):
            writer.write(b"b" * 16384)
            await writer.drain()
    except ConnectionError:
        pass
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 431 ")
    writer.close()
    assert env.hub.requests == 0


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",  # TLS to a plain port
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
])
async def test_malformed_request_gives_400(env: Env, data: bytes) -> None:
    raw = await raw_request(env.proxy.port, data)
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:100]
    # the server is fine
    async with await client(env) as c:
        assert (await c.get("/hub/x")).status_code == 200


async def test_connect_method_refused(env: Env) -> None:
    raw = await raw_request(env.proxy.port, b"CONNECT example.org:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 405 ")


async def test_client_disconnect_mid_request_does_not_hurt(env: Env) -> None:
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
        writer.write(b"POST /user/alice/lab/upload HTTP/1.1\r\nAuthorization: token tok-alice\r\n"
                     b"Content-Length: 1000000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        writer.close()
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", env.proxy.port)
        writer2.write(b"GET /user/alice/lab/download?size=10000000 HTTP/1.1\r\n"
                      b"Authorization: token tok-alice\r\n\r\n")
        await reader2.readexactly(1000)
        writer2.close()
    async with await client(env) as c:
        assert (await c.get("/user/alice/lab/api", headers=BEARER)).status_code == 200
    for _ in range(100):  # broken exchanges leave no connections behind
        if not env.proxy._clients and len(env.proxy._upstreams) <= 1:
            break
        await asyncio.sleep(0.02)
    assert len(env.proxy._upstreams) <= 1
    assert not env.proxy._clients


async def test_close_closes_everything(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    writer.write(b"GET /hub/x HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_response(reader)
    await env.proxy.close()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", env.proxy.port)
    writer.close()
