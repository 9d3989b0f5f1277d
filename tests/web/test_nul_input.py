"""NUL characters in searches and form fields: a clear 422, not a database error (PostgreSQL refuses them)."""

from __future__ import annotations

import pytest

from labhub.backends.fake import FakeBackend
from tests.conftest import page_csrf

pytestmark = pytest.mark.asyncio
PASSWORD = "correct horse battery"  # noqa: S105


async def test_nul_in_queries_and_forms_is_refused(start_hub, database_url):
    hub = await start_hub(database_url, backends={"fake": FakeBackend()})
    await hub.user("root", password=PASSWORD, admin=True)
    browser = hub.client(headers={"Accept": "text/html"})
    bad_login = await browser.post("/login", data={"username": "ro\x00ot", "password": PASSWORD,
                                                   "csrf_token": await page_csrf(browser)})
    assert bad_login.status_code == 422
    done = await browser.post("/login", data={"username": "root", "password": PASSWORD,
                                              "csrf_token": await page_csrf(browser)})
    assert done.status_code == 303
    assert (await browser.get("/admin/users?q=%00")).status_code == 422
    added = await browser.post("/admin/users", data={"username": "x\x00y", "password": PASSWORD,
                                                     "csrf_token": await page_csrf(browser, "/")})
    assert added.status_code == 422
    assert (await browser.get("/admin/users?q=root")).status_code == 200  # nothing broke
