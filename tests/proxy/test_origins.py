"""Subdomain mode: every instance on its own origin, routed by Host, opened by that origin's own cookie.

The attacks: another instance's cookie (stolen, or tossed in from a sibling
origin), the hub's session cookie, pages of other origins writing, fetching or
opening a WebSocket with the victim's cookie, a forged X-LabHub-Origin, and
X-Forwarded-For from anyone but a trusted proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from labhub.proxy.routes import Authenticator, Principal, Route, RouteTable
from labhub.proxy.server import ProxyServer

from .conftest import INSTANCE_TOKEN, TOKENS, EchoUpstream, WsUpstream, make_routes, upstreams

pytestmark = pytest.mark.asyncio

APPS = "apps.test"
ORIGINS = {  # origin cookie -> who, for which instance
    "o-alice-lab": Principal(1, "alice", False, instance_id="i-lab"),
    "o-alice-ws": Principal(1, "alice", False, instance_id="i-ws"),
    "o-bob": Principal(2, "bob", False, instance_id="i-bob"),
    "o-root-lab": Principal(3, "root", True, instance_id="i-lab"),
}
SESSIONS = {"sess-alice": Principal(1, "alice", False, browser=True),
            "sess-root": Principal(3, "root", True, browser=True)}


@dataclass
class OriginEnv:
    proxy: ProxyServer
    echo: EchoUpstream
    hub: EchoUpstream
    ws: WsUpstream
    lookups: list[tuple[str, str]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def host(self, label: str) -> str:
        return f"{label}.{APPS}:{self.proxy.port}"

    def origin(self, label: str) -> str:
        return f"http://{self.host(label)}"

    async def get(self, label: str, path: str = "/api", **kw: Any) -> httpx.Response:
        return await self.request("GET", label, path, **kw)

    async def request(self, method: str, label: str, path: str, *, headers: dict[str, str] | None = None,
                      **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as c:
            return await c.request(method, path, headers={"Host": self.host(label), **(headers or {})}, **kw)


@pytest_asyncio.fixture
async def oenv(tmp_path: Path) -> AsyncIterator[OriginEnv]:
    async with upstreams(tmp_path) as (echo, hub, ws):
        lookups: list[tuple[str, str]] = []

        async def lookup(kind: str, secret: str) -> Principal | None:
            lookups.append((kind, secret))
            await asyncio.sleep(0)
            return {"token": TOKENS, "session": SESSIONS, "origin": ORIGINS}[kind].get(secret)

        proxy = ProxyServer(routes=make_routes(echo, ws, labels=True), auth=Authenticator(lookup),
                            hub_upstream=hub.path, apps_domain=APPS, hub_url="http://hub.test:8000",
                            trusted_proxies=["10.9.0.0/16"])
        await proxy.start("127.0.0.1", 0)
        try:
            yield OriginEnv(proxy, echo, hub, ws, lookups)
        finally:
            await proxy.close()


def hdrs(payload: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in payload["headers"] if k.lower() == name.lower()]


COOKIE = {"Cookie": "labhub_origin=o-alice-lab"}


async def test_the_origin_cookie_opens_its_instance_and_is_not_passed_on(oenv: OriginEnv) -> None:
    r = await oenv.get("lab--alice", "/lab?x=1", headers={"Cookie": "_xsrf=1; labhub_origin=o-alice-lab"})
    assert r.status_code == 200
    p = r.json()
    assert p["server"] == "instance" and p["target"] == "/lab?x=1"
    assert hdrs(p, "cookie") == ["_xsrf=1"] and hdrs(p, "authorization") == [f"token {INSTANCE_TOKEN}"]
    assert hdrs(p, "host") == [oenv.host("lab--alice")]
    assert oenv.lookups == [("origin", "o-alice-lab")]


async def test_another_instances_cookie_does_not_open_this_one(oenv: OriginEnv) -> None:
    # alice's cookie for her lab, sent to bob's origin (stolen, or tossed in from a sibling)
    assert (await oenv.get("lab--bob", headers=COOKIE)).status_code == 403
    # alice's cookie for her other instance
    assert (await oenv.get("lab--alice", headers={"Cookie": "labhub_origin=o-alice-ws"})).status_code == 403
    # an admin's grant opens the one instance it was made for
    assert (await oenv.get("lab--alice", headers={"Cookie": "labhub_origin=o-root-lab"})).status_code == 200
    assert (await oenv.get("lab--bob", headers={"Cookie": "labhub_origin=o-root-lab"})).status_code == 403


async def test_a_tossed_duplicate_cookie_neither_opens_nor_locks_out(oenv: OriginEnv) -> None:
    both = {"Cookie": "labhub_origin=o-bob; labhub_origin=o-alice-lab"}
    r = await oenv.get("lab--alice", headers=both)
    assert r.status_code == 200 and r.json()["server"] == "instance"
    # none of them is this origin's: nobody is logged in here (a browser goes to the hub for a grant)
    assert (await oenv.get("lab--bob", headers={"Cookie": "labhub_origin=o-alice-lab; labhub_origin=zz"})
            ).status_code == 401


async def test_the_hubs_session_cookie_means_nothing_on_an_instance_origin(oenv: OriginEnv) -> None:
    page = await oenv.get("lab--alice", "/lab/tree?a=b", headers={
        "Cookie": "labhub_session=sess-root", "Accept": "text/html"})
    # a browser is sent to the hub, which grants this origin (or not) and sends it back
    assert page.status_code == 302
    assert page.headers["location"] == "http://hub.test:8000/user/alice/lab/lab/tree?a=b"
    api = await oenv.get("lab--alice", headers={"Cookie": "labhub_session=sess-root"})
    assert api.status_code == 401 and api.headers["www-authenticate"] == "Bearer"
    assert oenv.lookups == []


async def test_bearer_tokens_work_on_instance_origins(oenv: OriginEnv) -> None:
    assert (await oenv.get("lab--alice", headers={"Authorization": "Bearer tok-alice"})).status_code == 200
    assert (await oenv.get("lab--bob", headers={"Authorization": "Bearer tok-alice"})).status_code == 403
    assert (await oenv.get("lab--bob", headers={"Authorization": "Bearer tok-root"})).status_code == 200


@pytest.mark.parametrize(("method", "headers", "status"), [
    # writes: only from this origin's own pages
    ("POST", {"Origin": "http://lab--bob.apps.test:{port}"}, 403),       # a sibling instance's page
    ("POST", {"Origin": "http://hub.test:8000"}, 403),                   # even the hub's
    ("POST", {"Origin": "null"}, 403),
    ("POST", {"Origin": "http://lab--alice.apps.test:{port}"}, 200),
    ("POST", {}, 200),                                                   # no Origin: not a page's request
    ("DELETE", {"Origin": "http://evil.example"}, 403),
    # reads: other origins may link here (navigations), not fetch or embed
    ("GET", {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}, 403),
    ("GET", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, 403),
    ("GET", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, 200),
    ("GET", {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}, 200),
    ("GET", {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}, 200),
])
async def test_other_origins_cannot_use_the_cookie(oenv: OriginEnv, method: str, headers: dict[str, str],
                                                   status: int) -> None:
    sent = {k: v.format(port=oenv.proxy.port) for k, v in headers.items()}
    r = await oenv.request(method, "lab--alice", "/api/contents", headers={**COOKIE, **sent})
    assert r.status_code == status, r.text


async def test_bearer_requests_are_not_origin_checked(oenv: OriginEnv) -> None:
    r = await oenv.request("POST", "lab--alice", "/api/contents", headers={
        "Authorization": "Bearer tok-alice", "Origin": "http://elsewhere.example"})
    assert r.status_code == 200


async def test_websocket_from_another_origin_is_refused(oenv: OriginEnv) -> None:
    url = f"ws://{oenv.host('ws--alice')}/api/kernels/k1/channels"
    cookie = {"Cookie": "labhub_origin=o-alice-ws"}
    where = {"host": "127.0.0.1", "port": oenv.proxy.port}
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(url, additional_headers=cookie, origin="http://lab--bob.apps.test", **where):
            pass
    assert refused.value.response.status_code == 403
    async with ws_connect(url, additional_headers=cookie, origin=oenv.origin("ws--alice"), **where) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"


async def test_grant_path_and_unknown_labels_go_to_the_hub_with_the_label(oenv: OriginEnv) -> None:
    r = await oenv.get("lab--alice", "/_labhub/auth?code=c1&next=/lab", headers={
        **COOKIE, "X-LabHub-Origin": "lab--bob"})
    p = r.json()
    assert p["server"] == "hub" and p["target"] == "/_labhub/auth?code=c1&next=/lab"
    assert hdrs(p, "x-labhub-origin") == ["lab--alice"]  # the proxy's, never the client's
    r = await oenv.get("gone--alice", "/lab")
    assert r.json()["server"] == "hub" and hdrs(r.json(), "x-labhub-origin") == ["gone--alice"]


async def test_the_hubs_own_origin_never_carries_the_label_header(oenv: OriginEnv) -> None:
    async with httpx.AsyncClient(base_url=oenv.url, timeout=10) as c:
        r = await c.get("/user/alice/lab/", headers={"Host": "hub.test:8000", "X-LabHub-Origin": "lab--alice"})
    p = r.json()
    assert p["server"] == "hub" and hdrs(p, "x-labhub-origin") == []  # /user/ on the hub is the hub's


async def test_the_apps_domain_itself_and_deeper_names_are_not_instances(oenv: OriginEnv) -> None:
    async with httpx.AsyncClient(base_url=oenv.url, timeout=10) as c:
        root = await c.get("/", headers={"Host": f"{APPS}:{oenv.proxy.port}"})
        deep = await c.get("/", headers={"Host": f"x.lab--alice.{APPS}:{oenv.proxy.port}"})
        upper = await c.get("/api", headers={"Host": f"LAB--Alice.{APPS.upper()}:{oenv.proxy.port}", **COOKIE})
    assert root.status_code == 302 and root.headers["location"] == "http://hub.test:8000/"
    assert deep.status_code == 404
    assert upper.status_code == 200 and upper.json()["server"] == "instance"


async def test_instance_cannot_set_the_origin_cookie(oenv: OriginEnv) -> None:
    r = await oenv.get("lab--alice", "/set-cookie", headers={"Authorization": "Bearer tok-alice"})
    assert not any(c.lower().startswith("labhub_origin=") for c in r.headers.get_list("set-cookie"))


async def test_forwarded_for_is_believed_only_from_trusted_proxies(oenv: OriginEnv) -> None:
    r = await oenv.get("lab--alice", headers={**COOKIE, "X-Forwarded-For": "6.6.6.6",
                                               "X-Forwarded-Proto": "https"})
    p = r.json()
    assert hdrs(p, "x-forwarded-for") == ["127.0.0.1"] and hdrs(p, "x-forwarded-proto") == ["http"]
    oenv.proxy._trusted = [__import__("ipaddress").ip_network("127.0.0.0/8")]
    oenv.proxy._trust_cache.clear()
    r = await oenv.get("lab--alice", headers={**COOKIE, "X-Forwarded-For": "6.6.6.6, 203.0.113.7, 127.0.0.5",
                                               "X-Forwarded-Proto": "https"})
    p = r.json()
    # the last address a trusted proxy did not add: 203.0.113.7 (6.6.6.6 is what the client claimed)
    assert hdrs(p, "x-forwarded-for") == ["203.0.113.7"] and hdrs(p, "x-forwarded-proto") == ["https"]


async def test_labels_belong_to_one_instance() -> None:
    routes = RouteTable()
    routes.add(Route("i1", 1, "c", "a--b", "127.0.0.1", 1, "t", label="a--b--c"))
    with pytest.raises(ValueError, match="already belongs"):
        routes.add(Route("i2", 2, "b--c", "a", "127.0.0.1", 2, "t", label="a--b--c"))
    assert routes.by_label(b"a--b--c").instance_id == "i1"
    routes.remove_instance("i1")
    assert routes.by_label(b"a--b--c") is None


