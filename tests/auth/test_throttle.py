"""Login throttling: exponential back-off per account and per address, audited; session rotation and CSRF."""

from __future__ import annotations

import asyncio

import pytest

from labhub.auth.throttle import LoginThrottle, Throttle, address_key
from labhub.settings import ThrottleSettings

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


def test_accounts_and_addresses_are_throttled_separately():
    clock = Clock()
    t = LoginThrottle(ThrottleSettings(account_free=2, address_free=4, base_delay=10), clock=clock)
    t.login_failed("alice", "10.0.0.1")
    t.login_failed("alice", "10.0.0.2")
    assert t.login_wait("alice", "10.0.0.9") == 10  # the account, from anywhere
    assert t.login_wait("bob", "10.0.0.1") == 0
    for name in ("c", "d", "e"):
        t.login_failed(name, "10.0.0.1")
    assert t.login_wait("fresh-name", "10.0.0.1") == 10  # the address, whatever name it tries
    t.login_succeeded("alice")
    assert t.login_wait("alice", "10.0.0.5") == 0


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
    blocked = await browser.login("alice", "right password")  # even the right password waits
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
