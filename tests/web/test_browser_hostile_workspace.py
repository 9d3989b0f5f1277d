"""Alice plants JavaScript in her workspace; the admin and bob open her instance in a real Chromium.

Where JupyterLab serves files without a sandbox (a federated labextension in her
home, and a raw HTML file among its static files), alice's script runs in
whoever's browser shows her instance.  It then tries what took over the hub
before instances had origins of their own: read a hub page (for its CSRF
token), make alice an admin (form post and API), and mint an API token.  All of
it must fail, and the workspace must still work for alice.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from playwright.async_api import expect
from sqlalchemy import func, select

from labhub.models import ApiToken, Instance, User
from tests.web.conftest import PASSWORD, screenshot

pytestmark = [pytest.mark.asyncio, pytest.mark.browser, pytest.mark.jupyter]

ATTACK = """
(async () => {
  const hub = %(hub)s;
  const r = {ran: location.origin, done: false};
  window.__labhubEvil = r;
  const attempt = async (key, work) => {
    try { r[key] = await work(); } catch (e) { r[key] = "refused: " + e.name; }
  };
  // 1. read a hub page, for its CSRF token
  await attempt("read_page", async () => {
    const page = await fetch(hub + "/tokens", {credentials: "include"});
    const text = await page.text();
    const m = text.match(/name="csrf-token" content="([^"]+)"/);
    if (m) { r.csrf = m[1]; }
    return "read " + page.status;
  });
  // 2. make alice an admin with the admin's session: the API ...
  await attempt("api_role", async () => (await fetch(hub + "/api/v1/users/alice", {
    method: "PATCH", credentials: "include", headers: {"Content-Type": "application/json",
    "X-CSRF-Token": r.csrf || "guess"}, body: JSON.stringify({admin: true})})).status);
  await attempt("api_role_simple", async () => (await fetch(hub + "/api/v1/users/alice", {
    method: "PATCH", credentials: "include", mode: "no-cors", headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({admin: true})})).type);
  // ... and the admin page's own form, posted from here into a hidden frame
  await attempt("form_role", async () => {
    const frame = document.createElement("iframe");
    frame.name = "sink"; frame.style.display = "none"; document.body.appendChild(frame);
    const form = document.createElement("form");
    form.method = "POST"; form.action = hub + "/admin/users/alice/role"; form.target = "sink";
    for (const [k, v] of [["make_admin", "1"], ["csrf_token", r.csrf || "guess"], ["next", "/"]]) {
      const input = document.createElement("input"); input.type = "hidden"; input.name = k; input.value = v;
      form.appendChild(input);
    }
    document.body.appendChild(form);
    await new Promise((resolve) => { frame.onload = resolve; form.submit(); setTimeout(resolve, 3000); });
    return "posted";
  });
  // 3. mint an API token (JSON needs CORS; a simple request cannot carry the session across sites)
  await attempt("api_token", async () => (await fetch(hub + "/api/v1/tokens", {
    method: "POST", credentials: "include", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({note: "stolen", scopes: ["admin"]})})).status);
  await attempt("api_token_simple", async () => (await fetch(hub + "/api/v1/tokens", {
    method: "POST", credentials: "include", mode: "no-cors", headers: {"Content-Type": "text/plain"},
    body: "{}"})).type);
  // 4. the hub's API on this origin is not the hub's
  await attempt("same_origin_api", async () => (await fetch("/api/v1/me", {credentials: "include"})).status);
  r.done = true;
  document.title = "done";
})();
"""

FEDERATED_STUB = """
window._JUPYTERLAB = window._JUPYTERLAB || {};
window._JUPYTERLAB["labhub-evil"] = {
  init: function () {},
  get: function () { return Promise.resolve(function () { return {__esModule: true, default: []}; }); },
};
"""


def plant(home: Path, hub_url: str, uid: int, gid: int) -> None:
    """What alice could write from her own JupyterLab: a labextension, and an HTML file next to it."""
    ext = home / ".local" / "share" / "jupyter" / "labextensions" / "labhub-evil"
    (ext / "static").mkdir(parents=True)
    (ext / "package.json").write_text(json.dumps({
        "name": "labhub-evil", "version": "0.1.0",
        "jupyterlab": {"_build": {"load": "static/remoteEntry.0123.js", "extension": "./extension"}}}))
    attack = ATTACK % {"hub": json.dumps(hub_url)}
    (ext / "static" / "remoteEntry.0123.js").write_text(FEDERATED_STUB + attack)
    (ext / "static" / "evil.html").write_text(f"<!DOCTYPE html><html><body><p>hello</p><script>{attack}</script>"
                                              "</body></html>")
    for path in home.rglob("*"):
        os.chown(path, uid, gid)


async def results(page) -> dict:  # noqa: ANN001
    await page.wait_for_function("window.__labhubEvil && window.__labhubEvil.done", timeout=60_000)
    return await page.evaluate("window.__labhubEvil")


def assert_refused(seen: dict, hub_url: str) -> None:
    assert seen["ran"].endswith(".localhost:" + hub_url.rsplit(":", 1)[1])  # it ran, on alice's origin
    assert seen["read_page"].startswith("refused") and "csrf" not in seen  # nothing of the hub was readable
    assert seen["api_role"] != 200 and seen["api_token"] != 201
    assert seen["same_origin_api"] != 200  # alice's JupyterLab answers there, not the hub


async def hub_state(hub) -> tuple:
    async with hub.hub.sessions() as session:
        admins = sorted((await session.execute(select(User.name).where(User.role == "admin"))).scalars())
        tokens = (await session.execute(select(func.count()).select_from(ApiToken))).scalar()
    return admins, tokens


@pytest.mark.skipif(os.geteuid() != 0, reason="per-user accounts need root")
async def test_a_hostile_workspace_cannot_act_as_its_visitors(start_hub, sqlite_url, shared_tmp, browser):
    data = shared_tmp / "data"
    hub = await start_hub(sqlite_url, data_dir=data)
    alice = await hub.user("alice", password=PASSWORD)
    await hub.user("bob", password=PASSWORD)
    await hub.user("root", password=PASSWORD, admin=True)
    inst = (await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws1"})).json()
    await hub.wait_status(alice, inst["id"], {"running"}, timeout=90)
    async with hub.hub.sessions() as session:
        handle = (await session.get(Instance, inst["id"])).handle
    home = data / "homes" / "alice"
    plant(home, hub.url, handle["uid"], home.stat().st_gid)
    before = await hub_state(hub)
    assert before[0] == ["root"]

    # The admin opens alice's workspace from the admin page, then the raw HTML file in it.
    admin = await browser.user(hub.url)
    page = await admin.login("root")
    await page.goto(f"{hub.url}/admin/instances?owner=alice")
    await page.locator(f'tr[data-instance="{inst["id"]}"]').get_by_role("link", name="Open ws1").click()
    await page.wait_for_url(re.compile(r"^http://ws1--alice\.localhost:\d+/lab"), timeout=60_000)
    assert_refused(await results(page), hub.url)
    await screenshot(page, "hostile-workspace-admin", full_page=False)
    html = await admin.page()
    await html.goto(inst["url"] + "lab/extensions/labhub-evil/static/evil.html")
    assert_refused(await results(html), hub.url)
    assert await hub_state(hub) == before  # not an admin, no token minted
    async with hub.hub.sessions() as session:
        assert (await session.execute(select(User.role).where(User.name == "alice"))).scalar() == "user"

    # Bob cannot even get to her pages: no grant, so her script never runs in his browser.
    bob = await browser.user(hub.url)
    bob_page = await bob.login("bob")
    for url in (f"{hub.url}/user/alice/ws1/", inst["url"] + "lab/extensions/labhub-evil/static/evil.html"):
        resp = await bob_page.goto(url)
        assert resp.status == 403 and bob_page.url.startswith(hub.url)
        assert await bob_page.evaluate("window.__labhubEvil === undefined")

    # And the workspace still works for alice (her own script runs for her too, to no effect).
    mine = await browser.user(hub.url)
    lab = await mine.login("alice")
    await lab.goto(f"{hub.url}/user/alice/ws1/")
    await lab.wait_for_url(re.compile(r"^http://ws1--alice\.localhost:\d+/lab"), timeout=60_000)
    assert_refused(await results(lab), hub.url)
    launcher = lab.locator('.jp-LauncherCard[data-category="Notebook"]').first
    await expect(launcher).to_be_visible(timeout=60_000)
    await launcher.click()
    await expect(lab.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
    news = lab.get_by_role("alert").filter(has_text="official Jupyter news")
    if await news.count():
        await news.get_by_role("button", name="No").click()
    await lab.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
    await lab.keyboard.type("6*7")
    await lab.keyboard.press("Shift+Enter")
    await expect(lab.locator(".jp-OutputArea-output").first).to_have_text("42", timeout=60_000)
    assert await hub_state(hub) == before
    assert admin.blocked == bob.blocked == mine.blocked == []
