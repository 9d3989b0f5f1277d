"""Getting into an instance's origin: the hub's single-use code, redeemed for that origin's own cookie.

Attacks: replaying a code, redeeming it on another instance's origin, after its
minute, an open redirect through ``next``, the cookie outliving the hub login
or the right to the instance, and the hub's own pages served on an instance origin.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlsplit

import pytest

from labhub.backends.fake import FakeBackend
from tests.conftest import page_csrf

PASSWORD = "correct horse battery"  # noqa: S105
WS = {"template": "jupyterlab", "name": "ws", "hours": 1}


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
async def hub(start_hub, sqlite_url, echo_upstream):
    clock = Clock()
    harness = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)}, clock=clock)
    harness.clock = clock
    return harness


async def browser_for(hub, name: str, *, admin: bool = False):
    await hub.user(name, password=PASSWORD, admin=admin)
    browser = hub.client(headers={"Accept": "text/html"})
    done = await browser.post("/login", data={"username": name, "password": PASSWORD,
                                              "csrf_token": await page_csrf(browser)})
    assert done.status_code == 303
    return browser


async def running(hub, owner):
    inst = (await owner.http.post("/api/v1/instances", json=WS)).json()
    return await hub.wait_status(owner, inst["id"], {"running"})


async def code_for(browser, path="/user/alice/ws/lab?reset"):
    hop = await browser.get(path)
    assert hop.status_code == 303, hop.text
    target = urlsplit(hop.headers["location"])
    assert hop.headers["referrer-policy"] == "no-referrer" and hop.headers["cache-control"] == "no-store"
    return target


async def redeem(hub, target, *, host=None):
    origin = hub.client(headers={"Host": host or target.netloc, "Accept": "text/html"})
    return origin, await origin.get(f"{target.path}?{target.query}")


async def test_a_code_opens_its_own_origin_once_and_the_cookie_works_there_only(hub):
    alice = await hub.user("alice")
    inst = await running(hub, alice)
    browser = await browser_for(hub, "alicia")  # someone else: no code for alice's instance
    assert (await browser.get("/user/alice/ws/lab")).status_code == 403
    root = await browser_for(hub, "root", admin=True)
    target = await code_for(root)
    assert target.netloc == urlsplit(inst["url"]).netloc and target.path == "/_labhub/auth"
    assert parse_qs(target.query)["next"] == ["/lab?reset"]

    origin, resp = await redeem(hub, target)
    assert resp.status_code == 303 and resp.headers["location"] == "/lab?reset"
    set_cookie = resp.headers["set-cookie"].lower()
    assert set_cookie.startswith("labhub_origin=") and "httponly" in set_cookie and "samesite=lax" in set_cookie
    assert "domain=" not in set_cookie  # host-only: no other origin receives it
    assert (await origin.get("/api", headers={"Accept": "application/json"})).status_code == 200

    _, again = await redeem(hub, target)
    assert again.status_code == 403 and "used already" in again.text  # single use


async def test_a_code_is_worthless_on_another_origin_and_after_a_minute(hub):
    alice, bob = await hub.user("alice"), await hub.user("bob")
    await running(hub, alice)
    bob_inst = await running(hub, bob)
    root = await browser_for(hub, "root", admin=True)
    target = await code_for(root)
    _, elsewhere = await redeem(hub, target, host=urlsplit(bob_inst["url"]).netloc)
    assert elsewhere.status_code == 403
    _, still_good = await redeem(hub, target)  # refused elsewhere, so not used up
    assert still_good.status_code == 303

    late = await code_for(root)
    hub.clock.now += dt.timedelta(seconds=61)
    _, expired = await redeem(hub, late)
    assert expired.status_code == 403


async def test_next_stays_on_the_origin(hub):
    alice = await hub.user("alice")
    await running(hub, alice)
    root = await browser_for(hub, "root", admin=True)
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        target = await code_for(root)
        forged = target._replace(query=f"code={parse_qs(target.query)['code'][0]}&next={evil}")
        _, resp = await redeem(hub, forged)
        assert resp.status_code == 303 and resp.headers["location"] == "/", evil


async def test_the_origin_cookie_ends_with_the_hub_login_and_with_the_right_to_the_instance(hub):
    alice = await hub.user("alice")
    await running(hub, alice)
    root = await browser_for(hub, "root", admin=True)
    origin, _ = await redeem(hub, await code_for(root))
    api = {"Accept": "application/json"}
    assert (await origin.get("/api", headers=api)).status_code == 200
    await root.post("/logout", data={"csrf_token": await page_csrf(root, "/")})
    assert (await origin.get("/api", headers=api)).status_code == 401  # at once, not after a cache timeout

    admin2 = await browser_for(hub, "boss", admin=True)
    origin2, _ = await redeem(hub, await code_for(admin2))
    assert (await origin2.get("/api", headers=api)).status_code == 200
    boss_admin = (await hub.user("other-root", admin=True))
    demoted = await boss_admin.http.patch("/api/v1/users/boss", json={"admin": False})
    assert demoted.status_code == 200
    assert (await origin2.get("/api", headers=api)).status_code == 401  # no longer may: nobody there


async def test_api_clients_are_sent_to_the_origin_and_nothing_of_the_hub_is_served_there(hub):
    alice = await hub.user("alice")
    inst = await running(hub, alice)
    moved = await alice.http.get("/user/alice/ws/api/status?x=1")
    assert moved.status_code == 308 and moved.headers["location"] == inst["url"] + "api/status?x=1"
    origin = hub.instance_client(alice, inst)
    # hub routes on an instance origin reach the instance, never the hub's pages or API
    assert (await origin.get("/api/v1/me")).json()["path"] == "/api/v1/me"
    assert (await origin.get("/_labhub/whatever")).status_code == 404
    # a client cannot make the hub's origin play an instance origin: the proxy drops the header
    root = await browser_for(hub, "root", admin=True)
    target = await code_for(root)
    forged = await hub.client(headers={"X-LabHub-Origin": target.netloc.split(".")[0]}).get(
        f"{target.path}?{target.query}")
    assert forged.status_code == 404 and "set-cookie" not in forged.headers
    _, honest = await redeem(hub, target)  # the code was not spent by that
    assert honest.status_code == 303


async def test_a_route_this_replica_missed_is_taken_from_the_database(hub):
    """Another replica started the instance and its notification has not arrived (or was lost):
    the origin's first request finds it running in the database and sends the client round again."""
    alice = await hub.user("alice")
    inst = await running(hub, alice)
    hub.hub.routes.remove_instance(inst["id"])
    origin = hub.instance_client(alice, inst)
    again = await origin.get("/api/status?x=1")
    assert again.status_code == 307 and again.headers["location"] == "/api/status?x=1"
    assert hub.hub.routes.get("alice", "ws").instance_id == inst["id"]
    assert (await origin.get("/api/status?x=1")).json()["path"] == "/api/status?x=1"  # the echo upstream
    bob = await hub.user("bob")  # a route that is back opens to nobody new
    assert (await hub.instance_client(bob, inst).get("/api/status")).status_code == 403
