"""Shared and open instances in the proxy: who :meth:`Principal.access` lets in, how the route table keeps
each instance's audience, and what reaches the upstream on an instance's own origin.

The attacks: someone a route is not shared with (token, origin cookie, hub session), a shared user's
token without an instance-using scope, a shared user's browser on the hub's origin (path mode), a route
built before a share was revoked and added after, an anonymous caller of a route open only to logged-in
users, and a cross-origin page using a cookie on a route open to anyone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from labhub.proxy.routes import (
    FULL,
    INFER,
    NONE,
    OPEN_TO_ANYONE,
    OPEN_TO_USERS,
    Audience,
    Authenticator,
    Principal,
    Route,
    RouteTable,
)
from labhub.proxy.server import ProxyServer

from .conftest import INSTANCE_TOKEN, make_routes, upstreams

ALICE, BOB, CAROL, ROOT = 1, 2, 4, 3
APPS = "apps.test"


def route(**kw: object) -> Route:
    return Route("i-lab", ALICE, "alice", "lab", "127.0.0.1", 1, "secret", label="lab--alice", **kw)  # type: ignore[arg-type]


def token(uid: int, *, admin: bool = False, scopes: frozenset[str] = frozenset({"*"})) -> Principal:
    return Principal(uid, f"u{uid}", admin, scopes)


def cookie(uid: int, instance: str = "i-lab", *, admin: bool = False) -> Principal:
    return Principal(uid, f"u{uid}", admin, instance_id=instance)


def session(uid: int, *, admin: bool = False) -> Principal:
    return Principal(uid, f"u{uid}", admin, browser=True)


def test_a_share_opens_the_route_to_its_users_tokens_and_origin_cookies_only():
    shared = route(shared_with=frozenset({BOB}))
    assert token(BOB).access(shared) == FULL
    assert token(BOB, scopes=frozenset({"instances"})).access(shared) == FULL
    assert cookie(BOB).access(shared) == FULL
    assert token(CAROL).access(shared) == NONE and cookie(CAROL).access(shared) == NONE
    # a token that may not use instances, or may only infer, opens nothing of someone else's
    assert token(BOB, scopes=frozenset({"read"})).access(shared) == NONE
    assert token(BOB, scopes=frozenset({"infer"})).access(route(kind="service", shared_with=frozenset({BOB}))) == NONE
    # the hub's session on the hub's origin (path mode): never someone else's pages
    assert session(BOB).access(shared) == NONE
    # revoked: the origin cookie he was granted opens nothing any more, whatever is cached
    assert cookie(BOB).access(route()) == NONE
    # unchanged for the owner and admins
    assert token(ALICE).access(shared) == FULL and cookie(ALICE).access(route()) == FULL
    assert token(ROOT, admin=True).access(route()) == FULL and cookie(ROOT, admin=True).access(route()) == FULL
    assert session(ROOT, admin=True).access(route()) == NONE  # the admin's browser rule stands
    assert token(ALICE, scopes=frozenset({"infer"})).access(route(kind="service")) == INFER
    assert token(ALICE, scopes=frozenset({"infer"})).access(route()) == NONE


def test_open_to_users_and_to_anyone():
    users = route(open_to=OPEN_TO_USERS)
    assert token(CAROL).access(users) == FULL and cookie(CAROL).access(users) == FULL
    assert token(CAROL, scopes=frozenset({"read"})).access(users) == NONE
    assert session(CAROL).access(users) == NONE
    assert cookie(CAROL, "i-other").access(users) == NONE  # another instance's cookie
    anyone = route(open_to=OPEN_TO_ANYONE)
    # what anyone may, everybody may: whatever the credential
    for principal in (token(CAROL), token(CAROL, scopes=frozenset({"read"})), cookie(CAROL, "i-other"),
                      session(CAROL), token(CAROL, scopes=frozenset({"infer"}))):
        assert principal.access(anyone) == FULL, principal


def test_the_table_stamps_each_routes_audience_on_it_even_one_built_before_a_change():
    table = RouteTable()
    table.add(route())
    table.set_audience({"i-lab": Audience(frozenset({BOB}), "")}, instance_ids={"i-lab"})
    assert table.get("alice", "lab").shared_with == {BOB}
    stale = route()  # built (say, by the reconciler) before the revocation, added after it
    table.set_audience({}, instance_ids={"i-lab"})
    assert table.get("alice", "lab").shared_with == frozenset()
    table.add(stale)
    assert table.get("alice", "lab").shared_with == frozenset() and table.audience("i-lab") == Audience()
    # routes added after a share get it; a partial update leaves the other instances alone
    table.set_audience({"i-lab": Audience(frozenset({BOB}), OPEN_TO_USERS), "i-b": Audience(frozenset({ALICE}))})
    table.add(Route("i-b", BOB, "bob", "b", "127.0.0.1", 1, "s", label="b--bob"))
    table.add(route())
    assert table.get("bob", "b").shared_with == {ALICE}
    assert (table.get("alice", "lab").shared_with, table.get("alice", "lab").open_to) == ({BOB}, OPEN_TO_USERS)
    table.set_audience({}, instance_ids={"i-b"})
    assert table.get("bob", "b").shared_with == frozenset() and table.get("alice", "lab").shared_with == {BOB}
    table.set_audience({})  # everything: nobody else anywhere
    assert table.get("alice", "lab").open_to == "" and table.get("alice", "lab").shared_with == frozenset()


ORIGINS = {"o-bob-lab": cookie(BOB), "o-carol-lab": cookie(CAROL), "o-carol-ws": cookie(CAROL, "i-ws")}
TOKENS = {"tok-bob": token(BOB), "tok-carol": token(CAROL)}
SESSIONS = {"sess-bob": session(BOB)}


@pytest_asyncio.fixture
async def proxies(tmp_path: Path) -> AsyncIterator[tuple[ProxyServer, ProxyServer, RouteTable, RouteTable]]:
    """One proxy with instance origins (subdomain mode) and one in path mode, each on its own table."""
    async with upstreams(tmp_path) as (echo, hub, ws):
        async def lookup(kind: str, secret: str) -> Principal | None:
            await asyncio.sleep(0)
            return {"token": TOKENS, "session": SESSIONS, "origin": ORIGINS}[kind].get(secret)

        on_origins, on_paths = make_routes(echo, ws, labels=True), make_routes(echo, ws)
        sub = ProxyServer(routes=on_origins, auth=Authenticator(lookup), hub_upstream=hub.path, apps_domain=APPS,
                          hub_url="http://hub.test:8000")
        path = ProxyServer(routes=on_paths, auth=Authenticator(lookup), hub_upstream=hub.path)
        await sub.start("127.0.0.1", 0)
        await path.start("127.0.0.1", 0)
        try:
            yield sub, path, on_origins, on_paths
        finally:
            await sub.close()
            await path.close()


async def _get(proxy: ProxyServer, path: str = "/api", *, host: str | None = None, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.port}", timeout=10) as c:
        if host is not None:
            headers["Host"] = f"{host}.{APPS}:{proxy.port}"
        return await c.get(path, headers={"Accept": "application/json", **headers})


@pytest.mark.asyncio
async def test_the_proxy_follows_the_audience(proxies) -> None:
    sub, path, on_origins, on_paths = proxies
    lab = {"host": "lab--alice"}
    assert (await _get(sub, **lab, Cookie="labhub_origin=o-bob-lab")).status_code == 403
    assert (await _get(sub, **lab, Authorization="Bearer tok-bob")).status_code == 403

    on_origins.set_audience({"i-lab": Audience(frozenset({BOB}))}, instance_ids={"i-lab"})
    seen = await _get(sub, "/api?x", **lab, Cookie="labhub_origin=o-bob-lab")
    assert seen.status_code == 200
    assert [v for k, v in seen.json()["headers"] if k.lower() == "authorization"] == [f"token {INSTANCE_TOKEN}"]
    assert (await _get(sub, **lab, Authorization="Bearer tok-bob")).status_code == 200
    assert (await _get(sub, **lab, Authorization="Bearer tok-carol")).status_code == 403
    assert (await _get(sub, host="lab--bob", Authorization="Bearer tok-bob")).status_code == 200  # his own, still

    # open to every user: anyone's token or origin cookie, nobody anonymous
    on_origins.set_audience({"i-lab": Audience(open_to=OPEN_TO_USERS)}, instance_ids={"i-lab"})
    assert (await _get(sub, **lab, Authorization="Bearer tok-carol")).status_code == 200
    assert (await _get(sub, **lab, Cookie="labhub_origin=o-carol-lab")).status_code == 200
    assert (await _get(sub, **lab)).status_code == 401
    assert (await _get(sub, **lab, Authorization="Bearer tok-bob")).status_code == 200  # shares went, users stay
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sub.port}", timeout=10) as c:
        forged = await c.post("/api/contents", headers={"Host": f"lab--alice.{APPS}:{sub.port}", "Origin":
                                                        "http://evil.example", "Cookie": "labhub_origin=o-carol-lab"})
        assert forged.status_code == 403  # another origin's page may not use carol's cookie

    # open to anyone: no credential at all, and a cookie from another origin's page is just anyone
    on_origins.set_audience({"i-lab": Audience(open_to=OPEN_TO_ANYONE)}, instance_ids={"i-lab"})
    assert (await _get(sub, **lab)).status_code == 200
    assert (await _get(sub, "/lab", **lab, Accept="text/html")).status_code == 200  # no detour to log in
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sub.port}", timeout=10) as c:
        host = f"lab--alice.{APPS}:{sub.port}"
        forged = await c.post("/api/contents", headers={"Host": host, "Cookie": "labhub_origin=o-carol-lab",
                                                        "Origin": "http://evil.example"})
        assert forged.status_code == 200 and forged.json()["server"] == "instance"
    assert (await _get(sub, host="lab--bob")).status_code == 401  # only that instance

    on_origins.set_audience({}, instance_ids={"i-lab"})
    assert (await _get(sub, **lab)).status_code == 401
    assert (await _get(sub, **lab, Cookie="labhub_origin=o-bob-lab")).status_code == 403

    # path mode: a shared user's hub session is refused (saying why); his token opens it
    on_paths.set_audience({"i-lab": Audience(frozenset({BOB}))})
    refused = await _get(path, "/user/alice/lab/api", Cookie="labhub_session=sess-bob")
    assert refused.status_code == 403 and "API token" in refused.json()["detail"]
    assert (await _get(path, "/user/alice/lab/api", Authorization="Bearer tok-bob")).status_code == 200
