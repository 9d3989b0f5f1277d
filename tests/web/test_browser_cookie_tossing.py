"""Cookie tossing, in a real Chromium: a page elsewhere plants cookies and posts the admin's forms.

Cookies ignore ports, so a page on another port of the hub's host can set
cookies the hub receives, and the form post it makes is same-site (it carries
the admin's ``SameSite=Lax`` session).  A sibling origin (an instance's) can
try the same from ``*.localhost``.  With a double-submit CSRF cookie both used
to work; now the token is bound to the session and the hub checks ``Origin``.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from labhub.models import User
from tests.web.conftest import PASSWORD

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]

FORGE = """<!DOCTYPE html><html><body>
<form id="f" method="post" action="%(hub)s/admin/users/alice/role">
  <input type="hidden" name="make_admin" value="1">
  <input type="hidden" name="csrf_token" value="tossed">
  <input type="hidden" name="next" value="/admin/users">
</form>
<script>
  document.cookie = "labhub_csrf=tossed; path=/";            // cookies ignore ports
  document.cookie = "labhub_csrf=tossed; path=/; domain=localhost";
  document.getElementById("f").submit();
</script></body></html>"""


class EvilSite:
    """A page on another port of the same host."""

    def __init__(self, page: str) -> None:
        self.page = page.encode()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(self.page), self.page))
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def alice_is_admin(hub) -> bool:
    async with hub.hub.sessions() as session:
        return (await session.execute(select(User.role).where(User.name == "alice"))).scalar() == "admin"


async def test_a_page_on_another_port_cannot_post_the_admins_forms(start_hub, sqlite_url, browser):
    hub = await start_hub(sqlite_url)
    await hub.user("alice", password=PASSWORD)
    await hub.user("root", password=PASSWORD, admin=True)
    evil = EvilSite(FORGE % {"hub": hub.url})
    await evil.start()
    try:
        admin = await browser.user(hub.url)
        page = await admin.login("root")
        async with page.expect_response(f"{hub.url}/admin/users/alice/role") as answer:
            await page.goto(f"http://127.0.0.1:{evil.port}/")
        response = await answer.value
        assert response.status == 403  # the session came along (same site), the post was refused
        await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
        sent = (await response.request.all_headers()).get("cookie", "")
        assert "labhub_session=" in sent  # same site: the admin's session did come along with the forgery
        assert not await alice_is_admin(hub)

        # The hub's own form still works for the admin (the tossed cookie does not get in the way).
        await page.goto(f"{hub.url}/admin/users?q=alice")
        await page.get_by_role("button", name="Make admin alice").click()
        await expect(page.get_by_text("alice is now an admin.")).to_be_visible()
        assert await alice_is_admin(hub)
    finally:
        await evil.close()


@pytest.mark.jupyter
@pytest.mark.skipif(os.geteuid() != 0, reason="per-user accounts need root")
async def test_a_sibling_origin_cannot_post_the_admins_forms(start_hub, sqlite_url, shared_tmp, browser):
    site = shared_tmp / "templates"
    site.mkdir()
    serve = ("import http.server, os, sys; os.chdir(sys.argv[2]); "
             "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
             ".serve_forever()")
    command = json.dumps(["/usr/bin/python3", "-c", serve, "{port}", "{home}"])
    (site / "pages.yaml").write_text(f"title: Pages\nready_path: ''\ncommand: {command}\n")
    data = shared_tmp / "data"
    hub = await start_hub(sqlite_url, data_dir=data, templates_dir=site)
    bob = await hub.user("bob", password=PASSWORD)
    await hub.user("alice", password=PASSWORD)
    await hub.user("root", password=PASSWORD, admin=True)
    inst = (await bob.http.post("/api/v1/instances", json={"template": "pages", "name": "www"})).json()
    await hub.wait_status(bob, inst["id"], {"running"}, timeout=30)
    home = data / "homes" / "bob"
    (home / "evil.html").write_text(FORGE % {"hub": hub.url})
    os.chown(home / "evil.html", home.stat().st_uid, home.stat().st_gid)

    admin = await browser.user(hub.url)
    page = await admin.login("root")
    async with page.expect_response(f"{hub.url}/admin/users/alice/role", timeout=30_000) as answer:
        await page.goto(f"{hub.url}/user/bob/www/evil.html")  # the admin opens bob's page (on bob's origin)
    forged = await answer.value
    assert forged.request.headers.get("origin", "").endswith(".localhost:" + hub.url.rsplit(":", 1)[1])
    assert forged.status in (303, 403)  # cross-site: no session came along (303: to log in), or refused
    assert not await alice_is_admin(hub)
    hub_cookies = {c["name"]: c["value"] for c in await admin.context.cookies(hub.url)}
    assert hub_cookies.get("labhub_csrf") != "tossed"  # nothing tossed onto the hub's host
