"""Path mode: instances under /user/<owner>/<name>/ on the hub's own origin (the explicit, riskier setting).

There a page in an instance runs with the session of whoever views it, so a
browser session opens only its owner's instances: an admin's browser never runs
another user's pages with the admin's session (an admin uses an API token).
"""

from __future__ import annotations

import pytest

from labhub.backends.fake import FakeBackend
from tests.conftest import page_csrf

pytestmark = pytest.mark.asyncio
PASSWORD = "correct horse battery"  # noqa: S105


async def session_client(hub, name: str, *, admin: bool = False):
    caller = await hub.user(name, password=PASSWORD, admin=admin)
    browser = hub.client()
    done = await browser.post("/login", data={"username": name, "password": PASSWORD,
                                              "csrf_token": await page_csrf(browser)})
    assert done.status_code == 303
    return caller, browser


async def test_path_mode_keeps_admins_browsers_out_of_other_users_instances(start_hub, sqlite_url, echo_upstream):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)}, origins="path")
    alice, alice_browser = await session_client(hub, "alice")
    root, root_browser = await session_client(hub, "root", admin=True)
    inst = (await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws1"})).json()
    assert inst["url"] == f"{hub.url}/user/alice/ws1/"
    await hub.wait_status(alice, inst["id"], {"running"})

    assert (await alice_browser.get("/user/alice/ws1/api")).status_code == 200  # the owner's own session
    seen = (await alice.http.get("/user/alice/ws1/api?x=1")).json()
    assert seen["path"] == "/user/alice/ws1/api?x=1"  # the prefix stays: the instance is served under it
    refused = await root_browser.get("/user/alice/ws1/api", headers={"Accept": "application/json"})
    assert refused.status_code == 403 and "API token" in refused.json()["detail"]
    assert (await root.http.get("/user/alice/ws1/api")).status_code == 200  # the admin's token does
    # a cookie-authenticated write from another origin (a page on another port) is refused
    forged = await alice_browser.post("/user/alice/ws1/api/contents", headers={"Origin": "http://127.0.0.1:1"})
    assert forged.status_code == 403
