"""Sign-up with admin approval, by e-mail over a real SMTP server; approve and reject by page, API and CLI."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from labhub.cli.main import app as cli

pytestmark = pytest.mark.asyncio
ADMIN_PASSWORD = "admin password"  # noqa: S105


async def admin_with_email(hub, name="boss", email="boss@lab.example"):
    from labhub.services import credentials, users

    async with hub.hub.tx() as session:
        user = await users.create_user(session, name=name, password=ADMIN_PASSWORD, admin=True, email=email)
        _, token = await credentials.issue_token(session, user=user)
    return hub.client(headers={"Authorization": f"Bearer {token}"})


async def test_signup_mails_approvers_pending_user_waits_then_approval_takes_effect_without_logout(identity_hub):
    hub = await identity_hub(signup="open", approval_emails=["pi@lab.example"])
    admin_api = await admin_with_email(hub)
    page = await hub.browser().get("/login")
    assert 'href="/signup"' in page.text

    carol = hub.browser()
    form = await carol.get("/signup")
    assert form.status_code == 200 and 'name="csrf_token"' in form.text
    done = await carol.post_form("/signup", {"username": "carol", "email": "carol@uni.example",
                                             "password": "carol's password"})
    assert done.status_code == 200 and "Request received" in done.text

    # the approvers (configured address + admins with an address) get one mail with a working link
    [request] = hub.inbox.to("pi@lab.example")
    assert set(request.to) == {"pi@lab.example", "boss@lab.example"}
    assert "carol" in request.subject and request.mail_from == "hub@lab.example"
    link = request.link(hub.base)
    assert link == "/approvals/carol"
    [received] = hub.inbox.to("carol@uni.example")
    assert "received" in received.body and received.link(hub.base) == "/login"

    # the pending user can log in, but sees only the waiting page; the API says why
    login = await carol.login("carol", "carol's password", next_url="/launch")
    assert login.status_code == 303
    for path in ("/", "/launch", "/tokens", "/admin/users", "/approvals"):
        resp = await carol.get(path)
        assert (resp.status_code, resp.headers.get("location")) == (303, "/pending"), path
    assert (await carol.get("/pending")).status_code == 200
    me = await carol.api("GET", "/api/v1/me")
    assert me.status_code == 403 and me.json() == {"detail": "your account is waiting for approval"}
    assert (await carol.api("POST", "/api/v1/tokens", json={})).status_code == 403
    assert (await hub.client().get("/api/v1/users/carol", headers={"Accept": "application/json"})).status_code == 401

    # an admin follows the mailed link (log in first), and approves on that page
    boss = hub.browser()
    follow = await boss.get(link)
    assert follow.status_code == 303 and follow.headers["location"].startswith("/login?next=")
    assert (await boss.login("boss", "admin password", next_url=link)).headers["location"] == link
    approval_page = await boss.get(link)
    assert approval_page.status_code == 200 and 'action="/approvals/carol/approve"' in approval_page.text
    assert (await boss.post_form("/approvals/carol/approve", csrf=False)).status_code == 403  # CSRF
    decided = await boss.post_form("/approvals/carol/approve")
    assert decided.status_code == 303 and decided.headers["location"].startswith("/approvals?done=approved")

    # the same session works on the next request: no log-out needed
    me = await carol.api("GET", "/api/v1/me")
    assert me.status_code == 200 and me.json()["status"] == "active"
    assert (await carol.get("/")).status_code == 200
    [decision] = [m for m in hub.inbox.to("carol@uni.example") if "approved" in m.subject]
    assert decision.link(hub.base) == "/login"
    assert (await hub.client().get(decision.link(hub.base))).status_code == 200

    # deciding again is a conflict, in the API and on the page
    again = await admin_api.post("/api/v1/users/carol/approve")
    assert again.status_code == 409 and "not waiting for approval" in again.json()["detail"]
    log = (await admin_api.get("/api/v1/audit", params={"target": "carol"})).json()["events"]
    assert {"user.signup", "user.approve"} <= {e["action"] for e in log}
    assert next(e for e in log if e["action"] == "user.approve")["actor"] == "boss"


async def test_api_reject_mails_the_reason_and_ends_the_session(identity_hub):
    hub = await identity_hub(signup="open")
    admin_api = await admin_with_email(hub)
    dave = hub.browser()
    await dave.post_form("/signup", {"username": "dave", "email": "dave@uni.example", "password": "dave password"})
    assert (await dave.login("dave", "dave password")).status_code == 303
    hub.inbox.clear()

    bob = await hub.user("bob")
    assert (await bob.http.post("/api/v1/users/dave/reject")).status_code == 403  # admins only
    assert (await hub.client().post("/api/v1/users/dave/reject")).status_code == 401
    resp = await admin_api.post("/api/v1/users/dave/reject", json={"reason": "not in our group"})
    assert resp.status_code == 200
    assert resp.json() == {"name": "dave", "status": "disabled", "decided_by": "boss", "notified": True}
    [mail] = hub.inbox.to("dave@uni.example")
    assert "declined" in mail.subject and "not in our group" in mail.body
    assert hub.base not in mail.body  # nothing to link to
    assert (await dave.api("GET", "/api/v1/me")).status_code == 401  # logged out for good
    assert (await dave.login("dave", "dave password")).status_code == 401  # same answer as a wrong password
    assert (await admin_api.post("/api/v1/users/dave/approve")).status_code == 409
    assert (await admin_api.post("/api/v1/users/nobody/approve")).status_code == 404
    listed = (await admin_api.get("/api/v1/users", params={"status": "disabled"})).json()["users"]
    assert [(u["name"], u["status_reason"]) for u in listed] == [("dave", "rejected by boss: not in our group")]


async def test_signup_does_not_reveal_which_names_or_addresses_exist(identity_hub):
    hub = await identity_hub(signup="open")
    await hub.user("alice")
    first = await hub.browser().post_form("/signup", {"username": "alice", "email": "x@uni.example",
                                                      "password": "some password"})
    second = await hub.browser().post_form("/signup", {"username": "newname", "email": "y@uni.example",
                                                       "password": "some password"})
    assert first.status_code == second.status_code == 200
    def page(resp, address):  # the page without the per-browser CSRF token
        return re.sub(r'content="[^"]+">', "", resp.text.replace(address, "E"))

    assert page(first, "x@uni.example") == page(second, "y@uni.example")
    [mail] = hub.inbox.to("x@uni.example")
    assert "already in use" in mail.body  # only the mailbox owner learns it
    bad = await hub.browser().post_form("/signup", {"username": "Bad Name", "email": "nope", "password": "short"})
    assert bad.status_code == 422
    assert bad.text.count('aria-invalid="true"') == 3  # each field says what is wrong
    # the login page gives one answer for unknown names, wrong passwords and pending accounts' wrong passwords
    texts = set()
    for name in ("alice", "ghost", "newname"):
        resp = await hub.browser().login(name, "wrong password")
        texts.add((resp.status_code, "Wrong user name or password" in resp.text))
    assert texts == {(401, True)}


async def test_closed_signup_and_no_approval_settings(identity_hub):
    hub = await identity_hub()  # sign-up closed by default
    browser = hub.browser()
    assert "/signup" not in (await browser.get("/login")).text
    assert (await browser.get("/signup")).status_code == 404
    assert (await browser.post_form("/signup", {"username": "x", "email": "x@y.org", "password": "password1"})
            ).status_code == 404

    open_hub = await identity_hub(signup="open", approval_required=False)
    erin = open_hub.browser()
    await erin.post_form("/signup", {"username": "erin", "email": "erin@uni.example", "password": "erin password"})
    assert (await erin.login("erin", "erin password")).status_code == 303
    assert (await erin.api("GET", "/api/v1/me")).json()["status"] == "active"
    assert [m.subject for m in open_hub.inbox.to("erin@uni.example")] == ["[LabHub] About your sign-up"]


async def test_signups_are_throttled_per_address(identity_hub):
    hub = await identity_hub(signup="open", login_throttle={"signups_per_hour": 2})
    browser = hub.browser()
    for i in range(2):
        ok = await browser.post_form("/signup", {"username": f"u{i}", "email": f"u{i}@x.org", "password": "password1"})
        assert ok.status_code == 200
    third = await browser.post_form("/signup", {"username": "u3", "email": "u3@x.org", "password": "password1"})
    assert third.status_code == 429 and int(third.headers["retry-after"]) > 0


async def test_cli_approves_lists_pending_and_mails(identity_hub, monkeypatch):
    hub = await identity_hub(signup="open")
    await hub.browser().post_form("/signup", {"username": "fred", "email": "fred@uni.example",
                                              "password": "fred password"})
    settings = hub.hub.settings
    env = {"LABHUB_DATA_DIR": str(settings.data_dir), "LABHUB_DATABASE_URL": settings.effective_database_url,
           "LABHUB_SMTP__HOST": "127.0.0.1", "LABHUB_SMTP__PORT": str(settings.smtp.port),
           "LABHUB_SMTP__SECURITY": "none", "LABHUB_BIND": settings.bind}
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)

    import asyncio
    import json

    listed = await asyncio.to_thread(run, "user", "ls", "--status", "pending", "--json")
    assert [u["name"] for u in json.loads(listed.output)] == ["fred"]
    done = await asyncio.to_thread(run, "user", "approve", "fred")
    assert done.exit_code == 0 and "approved fred; mailed them" in done.output
    again = await asyncio.to_thread(run, "user", "approve", "fred")
    assert again.exit_code == 1 and "not waiting for approval" in again.output
    assert any("approved" in m.subject for m in hub.inbox.to("fred@uni.example"))
    fred = hub.browser()
    assert (await fred.login("fred", "fred password")).status_code == 303
    assert (await fred.api("GET", "/api/v1/me")).json()["status"] == "active"
