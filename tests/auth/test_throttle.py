"""Login throttling: exponential back-off per account and per address, audited; session rotation and CSRF."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from labhub.auth.throttle import LoginThrottle, Throttle, address_key
from labhub.settings import ThrottleSettings

from .conftest import Browser

RIGHT = "right password"  # noqa: S105


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_back_off_doubles_after_the_free_failures_and_is_forgotten():
    clock = Clock()
    throttle = Throttle(base_delay=1, max_delay=60, forget_after=3600, clock=clock)
    for _ in range(3):
        assert throttle.wait("k", free=3) == 0
        throttle.failure("k")
    assert throttle.wait("k", free=3) == 1  # third failure: wait 1 s
    throttle.failure("k")
    assert throttle.wait("k", free=3) == 2
    for _ in range(10):
        throttle.failure("k")
    assert throttle.wait("k", free=3) == 60  # capped
    clock.now += 61
    assert throttle.wait("k", free=3) == 0
    clock.now += 3600
    throttle.failure("k")  # long quiet: counting starts again
    assert throttle.wait("k", free=3) == 0
    throttle.reset("k")
    assert throttle.wait("k", free=1) == 0


def test_account_address_pairs_and_addresses_are_throttled_separately():
    clock = Clock()
    t = LoginThrottle(ThrottleSettings(account_free=2, address_free=4, base_delay=10), clock=clock)
    t.login_failed("alice", "10.0.0.1")
    t.login_failed("alice", "10.0.0.1")
    assert t.login_wait("alice", "10.0.0.1") == 10  # this address, on this account
    assert t.login_wait("alice", "10.0.0.9") == 0  # the account from elsewhere: not locked
    assert t.login_wait("bob", "10.0.0.1") == 0
    for name in ("c", "d"):
        t.login_failed(name, "10.0.0.1")
    assert t.login_wait("fresh-name", "10.0.0.1") == 10  # the address, whatever name it tries
    t.login_succeeded("alice", "10.0.0.1")
    assert t.login_wait("alice", "10.0.0.1") == 10  # the address's own count stays
    clock.now += 10
    assert t.login_wait("alice", "10.0.0.1") == 0
    t.login_failed("alice", "2001:db8::1")
    t.login_failed("alice", "2001:db8::2")  # the same /64
    assert t.login_wait("alice", "2001:db8::3") == 10


def test_a_botnet_gets_one_guess_per_address_while_the_account_is_under_attack():
    clock = Clock()
    t = LoginThrottle(ThrottleSettings(account_free=5, address_free=20, account_attack=10, base_delay=10,
                                       forget_after=3600), clock=clock)
    for _ in range(4):
        t.login_failed("alice", "10.0.0.1")
    assert t.login_wait("alice", "10.0.0.1") == 0  # below account_free: no back-off yet
    for i in range(6):  # ten failures on alice in all: under attack
        t.login_failed("alice", f"10.1.0.{i}")
    assert t.under_attack("alice") and not t.under_attack("bob")
    assert t.login_wait("alice", "10.0.0.1") == 10 * 2**3  # its four failures count from one free now
    for i in range(50):
        bot = f"10.2.0.{i}"
        assert t.login_wait("alice", bot) == 0  # a clean address: one attempt ...
        t.login_failed("alice", bot)
        assert t.login_wait("alice", bot) == 10  # ... then its own back-off
        assert t.login_wait("bob", bot) == 0  # other accounts from there are not affected
    assert t.login_wait("alice", "192.0.2.1") == 0  # the owner from a clean address still may try
    assert t.login_wait("ghost", "192.0.2.1") == 0
    clock.now += 3601  # the attack stopped an hour ago: forgotten
    assert not t.under_attack("alice")
    for _ in range(4):
        t.login_failed("alice", "10.3.0.1")
    assert t.login_wait("alice", "10.3.0.1") == 0


def test_unknown_names_are_throttled_exactly_like_real_ones():
    def waits(name: str) -> list[float]:
        clock = Clock()
        t = LoginThrottle(ThrottleSettings(account_free=3, account_attack=6, base_delay=10), clock=clock)
        out = []
        for i in range(30):
            address = f"10.0.{i % 7}.1"
            out.append(t.login_wait(name, address))
            if out[-1] == 0:
                t.login_failed(name, address)
            clock.now += 3
        return out

    assert waits("alice") == waits("no-such-user")  # the throttle never asks whether an account exists


def test_memory_stays_bounded_under_a_flood_of_addresses():
    clock = Clock()
    t = LoginThrottle(ThrottleSettings(), clock=clock)
    t.logins.max_keys = 1000
    for i in range(5000):
        t.login_failed("alice", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        clock.now += 0.01
    assert len(t.logins._entries) <= 1000
    assert t.under_attack("alice")  # the account-wide count is the freshest entry: never the one pruned


def test_failures_from_elsewhere_never_lock_the_owner_out():
    """The attack: anyone can name alice and fail; alice with her password, from a clean address, gets in."""
    clock = Clock()
    t = LoginThrottle(ThrottleSettings(), clock=clock)
    attacker, botnet, owner = "203.0.113.7", [f"198.51.100.{i}" for i in range(200)], "192.0.2.1"
    for _ in range(60):  # one address, as fast as it is let through
        if t.login_wait("alice", attacker) == 0:
            t.login_failed("alice", attacker)
        clock.now += 1
    for address in botnet:
        while t.login_wait("alice", address) == 0:
            t.login_failed("alice", address)
    assert t.login_wait("alice", attacker) > 0 and t.login_wait("alice", botnet[0]) > 0
    assert t.login_wait("alice", owner) == 0  # she can try, so her right password succeeds


def test_address_keys_group_ipv6_prefixes():
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff") == "2001:db8::/64"
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert address_key("10.1.2.3") == "10.1.2.3"
    assert address_key("unix") == "unix"


@pytest.mark.asyncio
async def test_login_is_throttled_with_retry_after_and_audited(identity_hub):
    hub = await identity_hub(login_throttle={"account_free": 3, "address_free": 50, "base_delay": 30})
    await hub.user("alice", password=RIGHT)
    browser = hub.browser()
    for _ in range(3):
        assert (await browser.login("alice", "wrong password")).status_code == 401
    blocked = await browser.login("alice", "right password")  # from where it failed, even the right password waits
    assert blocked.status_code == 429 and 25 <= int(blocked.headers["retry-after"]) <= 30
    assert "Too many failed log-ins" in blocked.text and "labhub_session" not in blocked.headers.get("set-cookie", "")
    ghost = hub.browser()
    for _ in range(3):
        assert (await ghost.login("ghost", "x" * 10)).status_code == 401
    assert (await ghost.login("ghost", "x" * 10)).status_code == 429  # unknown names behave the same
    other = hub.browser()
    assert (await other.login("bob-does-not-exist", "whatever1")).status_code == 401  # other accounts unaffected
    json_client = hub.client()
    resp = await json_client.post("/login", data={"username": "alice", "password": "x"},
                                  headers={"Accept": "application/json"})
    assert resp.status_code == 429 and resp.json()["retry_after"] > 0
    assert (await json_client.post("/login", json={"username": "alice"})).status_code == 415

    admin = await hub.user("root", admin=True)
    events = (await admin.http.get("/api/v1/audit", params={"action": "login."})).json()["events"]
    actions = [(e["action"], e["target"]) for e in events]
    assert actions.count(("login.failed", "alice")) == 3 and ("login.throttled", "alice") in actions
    assert all(e["address"] == "127.0.0.1" for e in events)

    hub.hub.throttle.logins.clock = lambda: 10**12  # much later
    ok = await browser.login("alice", "right password")
    assert ok.status_code == 303
    # The audit row is written once the response has gone out: give it a moment.
    for _ in range(100):
        events = (await admin.http.get("/api/v1/audit", params={"target": "alice"})).json()["events"]
        if any(e["action"] == "login.ok" for e in events):
            break
        await asyncio.sleep(0.05)
    assert any(e["action"] == "login.ok" for e in events)


@pytest.mark.asyncio
async def test_an_attacker_cannot_lock_out_the_owner_over_http(identity_hub):
    hub = await identity_hub(login_throttle={"account_free": 3, "address_free": 50, "base_delay": 30})
    await hub.user("alice", password=RIGHT)
    attacker = hub.browser()  # 127.0.0.1
    answers = {name: [(await attacker.login(name, "a guess")).status_code for _ in range(5)]
               for name in ("alice", "ghost")}
    assert answers["alice"] == answers["ghost"] == [401, 401, 401, 429, 429]  # unknown names: the same
    assert (await attacker.login("alice", RIGHT)).status_code == 429  # the attacking address stays throttled
    owner = Browser(hub.client(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")))
    ok = await owner.login("alice", RIGHT)
    assert ok.status_code == 303 and "labhub_session" in ok.headers["set-cookie"]
    stranger = Browser(hub.client(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.3")))
    assert (await stranger.login("ghost", "a guess")).status_code == 401  # a clean address may try any name


@pytest.mark.asyncio
async def test_password_login_rotates_the_session_and_forms_need_csrf(identity_hub):
    hub = await identity_hub(signup="open")
    await hub.user("boss", password=RIGHT, admin=True)
    await hub.user("alice")
    browser = hub.browser()
    await browser.get("/login")
    browser.http.cookies.set("labhub_session", "fixated", domain="127.0.0.1")
    ok = await browser.login("boss", "right password")
    new = ok.cookies.get("labhub_session")
    assert ok.status_code == 303 and new and new != "fixated"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie  # plain http here
    # every state-changing form refuses a missing or foreign CSRF token
    for path, data in [("/login", {"username": "boss", "password": "right password"}),
                       ("/signup", {"username": "zed", "email": "z@x.org", "password": "password1"}),
                       ("/logout", {}), ("/approvals/alice/approve", {}), ("/approvals/alice/reject", {})]:
        missing = await browser.post_form(path, data, csrf=False)
        forged = await browser.http.post(path, data={**data, "csrf_token": "forged"}, headers={"Accept": "text/html"})
        for resp in (missing, forged):
            assert resp.status_code == 403 and "came from another site" in resp.text, path
    assert (await browser.api("GET", "/api/v1/users/alice")).json()["status"] == "active"  # nothing happened
    # cookie-authenticated API writes need the header
    assert (await browser.http.post("/api/v1/groups", json={"name": "g"})).status_code == 403


@pytest.mark.asyncio
async def test_secure_cookies_behind_https(identity_hub):
    hub = await identity_hub(public_url="https://hub.example.org")
    await hub.user("alice", password=RIGHT)
    ok = await hub.browser().login("alice", "right password")
    assert "secure" in ok.headers["set-cookie"].lower()
