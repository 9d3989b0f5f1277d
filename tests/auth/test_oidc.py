"""OIDC login against a real provider (oidc-provider-mock on loopback): code + PKCE + state + nonce.

The browser is httpx: each redirect is followed by hand, so the tests can
tamper with exactly one thing at a time (the state, the nonce, the claims).
"""

from __future__ import annotations

import urllib.parse

import httpx
import pytest

pytestmark = [pytest.mark.asyncio,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # raised inside the mock provider's thread


def providers(provider, **strict):
    base = {"discovery_url": provider.discovery, "client_id": "labhub-test", "client_secret": "s3cret",
            "groups_claim": "groups"}
    return {"mock": {**base, "title": "Lab IdP", "sync_groups": True, "group_prefix": "lab:"},
            "strict": {**base, "title": "Strict IdP", "required_groups": ["lab:members"],
                       "approval_required": False}}


async def authorize(browser, provider_name, *, sub, next_url="/", tamper=None, deny=False):
    """Start at the hub, consent at the provider as ``sub``; returns the callback URL (a path on the hub)."""
    start = await browser.get(f"/oauth/{provider_name}/login?next={urllib.parse.quote(next_url)}")
    assert start.status_code == 303, start.text
    url = start.headers["location"]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["state"] and query["nonce"] and query["response_type"] == "code"
    if tamper:
        query.update(tamper)
        url = url.split("?")[0] + "?" + urllib.parse.urlencode(query)
    async with httpx.AsyncClient() as idp:
        form = await idp.get(url)
        assert form.status_code == 200, form.text
        consent = await idp.post(url, data={"action": "deny"} if deny else {"sub": sub})
    assert consent.status_code == 302, consent.text
    callback = consent.headers["location"]
    assert callback.startswith(browser.hub_base + f"/oauth/{provider_name}/callback?")
    return callback.removeprefix(browser.hub_base)


@pytest.fixture
async def hub(identity_hub, oidc_provider):
    harness = await identity_hub(oidc=providers(oidc_provider), approval_emails=["pi@lab.example"])
    harness.idp = oidc_provider

    def browser():
        b = harness.browser()
        b.hub_base = harness.base
        return b

    harness.oidc_browser = browser
    return harness


async def test_first_login_creates_a_pending_user_then_approval_lets_them_in(hub):
    hub.idp.set_user("alice-sub", {"preferred_username": "Alice.Smith@uni.example", "email": "alice@uni.example",
                                   "groups": ["lab:gpu-users", "lab:members", "other:x"]})
    page = await hub.browser().get("/login")
    assert 'href="/oauth/mock/login?next=/"' in page.text and "Lab IdP" in page.text and "Strict IdP" in page.text

    browser = hub.oidc_browser()
    browser.http.cookies.set("labhub_session", "planted-by-an-attacker", domain="127.0.0.1")
    callback = await authorize(browser, "mock", sub="alice-sub", next_url="/tokens")
    done = await browser.get(callback)
    assert done.status_code == 303 and done.headers["location"] == "/pending", done.text
    session = browser.http.cookies.get("labhub_session", domain="127.0.0.1")
    assert session and session != "planted-by-an-attacker"  # a fresh session id at login
    assert "labhub_oidc=" in done.headers.get("set-cookie", "")  # the flow cookie is dropped
    assert (await browser.api("GET", "/api/v1/me")).status_code == 403

    [ask] = hub.inbox.to("pi@lab.example")
    assert "alice-smith" in ask.subject and ask.link(hub.base) == "/approvals/alice-smith"

    admin = await hub.user("root", admin=True)
    detail = (await admin.http.get("/api/v1/users/alice-smith")).json()
    assert detail["status"] == "pending" and detail["email"] == "alice@uni.example"
    assert detail["identities"] == ["mock"] and detail["groups"] == ["gpu-users", "members"]
    assert (await admin.http.post("/api/v1/users/alice-smith/approve")).json()["notified"] is True
    me = await browser.api("GET", "/api/v1/me")
    assert me.status_code == 200 and me.json()["name"] == "alice-smith"

    # the next login finds the same user through (provider, subject) and lands on `next`
    hub.idp.set_user("alice-sub", {"preferred_username": "someone-else", "groups": ["lab:members"]})
    again = hub.oidc_browser()
    second = await again.get(await authorize(again, "mock", sub="alice-sub", next_url="/tokens"))
    assert (second.status_code, second.headers["location"]) == (303, "/tokens")
    assert (await again.api("GET", "/api/v1/me")).json()["name"] == "alice-smith"
    groups = (await admin.http.get("/api/v1/users/alice-smith")).json()["groups"]
    assert groups == ["members"]  # the claim's groups follow the provider; gpu-users left with the claim
    events = (await admin.http.get("/api/v1/audit", params={"target": "alice-smith"})).json()["events"]
    assert {"user.signup", "user.approve", "login.ok", "group.sync"} <= {e["action"] for e in events}


async def test_name_collisions_get_a_suffix(hub):
    await hub.user("bob")
    hub.idp.set_user("bob-sub", {"preferred_username": "bob", "email": "bob@elsewhere.example"})
    browser = hub.oidc_browser()
    await browser.get(await authorize(browser, "mock", sub="bob-sub"))
    hub.idp.set_user("eve-sub", {"preferred_username": "eve"})
    evil = hub.oidc_browser()
    landed = await evil.get(await authorize(evil, "strict", sub="x", next_url="//evil.example/x"))
    assert landed.status_code == 403  # (not in the group) -- and with the group, no open redirect:
    hub.idp.set_user("eve-sub", {"preferred_username": "eve", "groups": ["lab:members"]})
    landed = await evil.get(await authorize(evil, "strict", sub="eve-sub", next_url="//evil.example/x"))
    assert landed.headers["location"] == "/"  # a trusted provider: active at once, and never sent off-site
    admin = await hub.user("root", admin=True)
    pending = (await admin.http.get("/api/v1/users", params={"status": "pending"})).json()["users"]
    assert [u["name"] for u in pending] == ["bob-2"]  # never the existing bob


async def test_a_state_from_elsewhere_is_rejected(hub):
    hub.idp.set_user("mallory", {"preferred_username": "mallory"})
    attacker = hub.oidc_browser()
    victim = hub.oidc_browser()
    planted = await authorize(attacker, "mock", sub="mallory")  # the attacker's own code and state
    await victim.get("/oauth/mock/login")  # the victim has a flow of their own
    resp = await victim.get(planted)  # login CSRF: the attacker's callback in the victim's browser
    assert resp.status_code == 400 and "state" in resp.text
    assert "labhub_session" not in resp.headers.get("set-cookie", "")
    no_cookie = await hub.oidc_browser().get(planted)
    assert no_cookie.status_code == 400
    forged = planted.replace("state=", "state=x")
    assert (await attacker.get(forged)).status_code == 400
    admin = await hub.user("root", admin=True)
    reasons = [e["detail"]["reason"] for e in (await admin.http.get(
        "/api/v1/audit", params={"action": "login.oidc_failed"})).json()["events"]]
    assert reasons == ["bad_state"] * 3
    assert (await admin.http.get("/api/v1/users", params={"q": "mallory"})).json()["users"] == []


async def test_a_bad_nonce_is_rejected(hub):
    hub.idp.set_user("eve", {"preferred_username": "eve"})
    browser = hub.oidc_browser()
    callback = await authorize(browser, "mock", sub="eve", tamper={"nonce": "not-the-nonce-labhub-sent"})
    resp = await browser.get(callback)
    assert resp.status_code == 400 and "nonce" in resp.text
    assert "labhub_session" not in resp.headers.get("set-cookie", "")
    admin = await hub.user("root", admin=True)
    events = (await admin.http.get("/api/v1/audit", params={"action": "login.oidc_failed"})).json()["events"]
    assert [e["detail"]["reason"] for e in events] == ["bad_nonce"]


async def test_a_user_missing_the_required_group_is_refused(hub):
    hub.idp.set_user("outsider", {"preferred_username": "outsider", "groups": ["lab:visitors"]})
    browser = hub.oidc_browser()
    resp = await browser.get(await authorize(browser, "strict", sub="outsider"))
    assert resp.status_code == 403 and "lab:members" in resp.text
    hub.idp.set_user("insider", {"preferred_username": "insider", "groups": ["lab:members"]})
    ok = await browser.get(await authorize(browser, "strict", sub="insider"))
    assert ok.status_code == 303
    admin = await hub.user("root", admin=True)
    names = [u["name"] for u in (await admin.http.get("/api/v1/users")).json()["users"]]
    assert "insider" in names and "outsider" not in names


async def test_a_denied_consent_and_unknown_providers(hub):
    browser = hub.oidc_browser()
    resp = await browser.get(await authorize(browser, "mock", sub="x", deny=True))
    assert resp.status_code == 403 and "did not log you in" in resp.text
    assert (await browser.get("/oauth/nope/login")).status_code == 404
    assert (await browser.get("/oauth/nope/callback?code=x&state=y")).status_code == 404


async def test_disabled_accounts_cannot_log_in_with_oidc(hub):
    hub.idp.set_user("gone", {"preferred_username": "gone"})
    browser = hub.oidc_browser()
    await browser.get(await authorize(browser, "mock", sub="gone"))
    admin = await hub.user("root", admin=True)
    assert (await admin.http.post("/api/v1/users/gone/reject")).status_code == 200
    resp = await browser.get(await authorize(browser, "mock", sub="gone"))
    assert resp.status_code == 403 and "disabled" in resp.text
