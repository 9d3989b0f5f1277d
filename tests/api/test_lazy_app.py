"""`labhub serve` builds the hot API at start and the rest on first use: the same application either way."""

from __future__ import annotations

import pytest

from labhub.api.app import HOT_PATHS, MountOnFirstUse, create_app
from labhub.backends.fake import FakeBackend
from tests.api.test_access_matrix import route_table

pytestmark = pytest.mark.asyncio


async def test_the_rest_is_built_on_first_use_and_then_matches_the_eager_app(start_hub, sqlite_url):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend()})
    app = hub.running.server.config.app
    eager = create_app(hub.hub)
    assert [m.cls for m in app.user_middleware if m.cls is not MountOnFirstUse] == [
        m.cls for m in eager.user_middleware]
    assert app.user_middleware[-1].cls is MountOnFirstUse  # innermost: only what reaches the routes builds
    hot = set(route_table(app))
    assert hot < set(route_table(eager))
    docs = {"/api/openapi.json", "/api/docs", "/docs/oauth2-redirect"}  # FastAPI's own (they build the rest)
    assert all(path.startswith(HOT_PATHS) or path in docs or path == "PROXY" for _, path in hot)

    alice = await hub.user("alice")
    for path in ("/api/v1/health", "/api/v1/me", "/api/v1/templates", "/api/v1/tokens", "/api/v1/instances",
                 "/api/v1/instances/nothing"):
        await alice.http.get(path)
    assert set(route_table(app)) == hot  # the hot API alone does not build the rest

    page = await hub.client().get("/login", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "csrf-token" in page.text
    assert route_table(app) == route_table(eager)  # everything, in the same order
    assert app.state.signup_url == eager.state.signup_url
    assert app.state.login_providers == eager.state.login_providers


@pytest.mark.parametrize("first", ["/api/openapi.json", "/api/v1/users", "/api/v1/groups", "/nowhere"])
async def test_any_other_first_request_finds_everything(start_hub, sqlite_url, first):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend()})
    admin = await hub.user("root", admin=True)
    resp = await admin.http.get(first)
    assert resp.status_code == (404 if first == "/nowhere" else 200), resp.text
    if first == "/api/openapi.json":
        assert "/api/v1/users:bulk" in resp.json()["paths"] and "/api/v1/groups" in resp.json()["paths"]
    assert route_table(hub.running.server.config.app) == route_table(create_app(hub.hub))


async def test_an_unexpected_error_is_json_for_the_api_and_a_friendly_page_for_browsers(start_hub, sqlite_url,
                                                                                       monkeypatch):
    from labhub.services import users

    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend()})
    alice = await hub.user("alice")

    async def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("boom")

    monkeypatch.setattr(hub.hub, "active_user", broken)
    api = await alice.http.get("/api/v1/tokens")  # a hot route (the pages are not built yet)
    assert api.status_code == 500 and api.json() == {"detail": "internal server error"}
    monkeypatch.setattr(users, "count_admins", broken)
    hub.hub.setup_token = "pending"  # noqa: S105 - the login page then asks whether an admin exists
    page = await hub.client().get("/login", headers={"Accept": "text/html"})
    assert page.status_code == 500 and "Something unexpected went wrong" in page.text
