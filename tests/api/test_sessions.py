"""Browser sessions: first-admin setup link, login with CSRF, rotation, revocation on logout."""

from __future__ import annotations

import re

import pytest

from labhub.backends.fake import FakeBackend
from tests.conftest import page_csrf

pytestmark = pytest.mark.asyncio


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


@pytest.fixture
async def hub(start_hub, sqlite_url):
    return await start_hub(sqlite_url, backends={"fake": FakeBackend()})


async def test_setup_link_creates_the_first_admin_once(hub):
    token = hub.hub.setup_token
    assert token
    browser = hub.client()
    assert (await browser.get("/setup?token=wrong")).status_code == 404
    page = await browser.get(f"/setup?token={token}")
    assert page.status_code == 200
    weak = await browser.post("/setup", data={"token": token, "username": "boss", "password": "short",
                                              "csrf_token": csrf_of(page.text)})
    assert weak.status_code == 422 and "at least 8" in weak.text
    done = await browser.post("/setup", data={"token": token, "username": "boss", "password": "long enough",
                                              "csrf_token": csrf_of(page.text)})
    assert done.status_code == 303 and "labhub_session" in done.headers["set-cookie"]
    assert (await browser.get("/api/v1/me")).json() == {**(await browser.get("/api/v1/me")).json(), "is_admin": True}
    assert hub.hub.setup_token is None
    again = await hub.client().get(f"/setup?token={token}")
    assert again.status_code == 404


async def test_login_needs_csrf_and_rotates_the_session(hub):
    await hub.user("alice", password="s3cret-password")
    browser = hub.client()
    page = await browser.get("/login")
    no_csrf = await browser.post("/login", data={"username": "alice", "password": "s3cret-password"})
    assert no_csrf.status_code == 403
    wrong = await browser.post("/login", data={"username": "alice", "password": "nope", "csrf_token": csrf_of(page.text)})
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    unknown = await browser.post("/login", data={"username": "ghost", "password": "nope", "csrf_token": csrf_of(page.text)})
    assert unknown.text.count("Wrong user name or password") == 1  # same answer: no user enumeration

    browser.cookies.set("labhub_session", "planted-by-an-attacker")
    page = await browser.get("/login")  # the form the victim then sees carries a token for that cookie
    ok = await browser.post("/login", data={"username": "alice", "password": "s3cret-password",
                                            "csrf_token": csrf_of(page.text), "next": "//evil.example/x"})
    assert ok.status_code == 303 and ok.headers["location"] == "/"  # no open redirect
    cookie = ok.cookies["labhub_session"]
    assert cookie != "planted-by-an-attacker"
    assert "httponly" in ok.headers["set-cookie"].lower() and "samesite=lax" in ok.headers["set-cookie"].lower()
    assert (await hub.client(cookies={"labhub_session": "planted-by-an-attacker"}).get("/api/v1/me")).status_code == 401
    browser.cookies.clear()
    browser.cookies.set("labhub_session", cookie)
    assert (await browser.get("/api/v1/me")).json()["name"] == "alice"
    csrf = await page_csrf(browser, "/")

    # cookie-authenticated API writes need the session's CSRF token, sent from the hub's own origin
    assert (await browser.post("/api/v1/tokens", json={})).status_code == 403
    browser.cookies.set("labhub_csrf", "planted")  # a double-submit cookie would be forgeable: not this
    assert (await browser.post("/api/v1/tokens", json={}, headers={"X-CSRF-Token": "planted"})).status_code == 403
    other = hub.client()
    await other.post("/login", data={"username": "alice", "password": "s3cret-password",
                                     "csrf_token": await page_csrf(other)})
    theirs = await page_csrf(other, "/")  # a valid token, of another session
    assert (await browser.post("/api/v1/tokens", json={}, headers={"X-CSRF-Token": theirs})).status_code == 403
    cross = {"X-CSRF-Token": csrf, "Origin": "http://127.0.0.1:1"}  # another port of the same host
    assert (await browser.post("/api/v1/tokens", json={}, headers=cross)).status_code == 403
    assert (await browser.post("/api/v1/tokens", json={}, headers={"X-CSRF-Token": csrf})).status_code == 201

    home = await browser.get("/")
    out = await browser.post("/logout", data={"csrf_token": csrf_of(home.text)})
    assert out.status_code == 303
    stale = hub.client(cookies={"labhub_session": cookie})
    assert (await stale.get("/api/v1/me")).status_code == 401  # revoked server-side, not just forgotten


async def test_pages_redirect_anonymous_browsers_to_login(hub):
    anon = hub.client()
    resp = await anon.get("/instances/abc", headers={"Accept": "text/html"})
    assert resp.status_code == 303 and resp.headers["location"] == "/login?next=%2Finstances%2Fabc"
