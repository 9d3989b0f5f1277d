"""The first-admin setup link dies the moment any admin exists, however that admin was made."""

from __future__ import annotations

import asyncio
import re

import pytest
from typer.testing import CliRunner

from labhub.backends.fake import FakeBackend
from labhub.cli.main import app
from labhub.services import users

pytestmark = pytest.mark.asyncio
HTML = {"Accept": "text/html"}
PASSWORD = "long enough pw"  # noqa: S105 - test accounts
SETUP_HINT = "No admin exists yet"


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


async def cli(hub, *args: str, stdin: str | None = None) -> None:
    """``labhub ARGS`` on the hub's data dir and database, as another process would run it."""
    env = {"LABHUB_DATA_DIR": str(hub.hub.settings.data_dir), "LABHUB_DATABASE_URL": hub.hub.settings.database_url,
           "LABHUB_URL": "", "LABHUB_TOKEN": ""}
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env, input=stdin,
                                     catch_exceptions=False)
    assert result.exit_code == 0, result.output


async def add_admin_with_the_cli(hub) -> None:
    await cli(hub, "user", "add", "boss", "--admin", "--password-stdin", stdin=PASSWORD + "\n")


async def promote_with_the_cli(hub) -> None:
    await hub.user("carol")
    await cli(hub, "user", "admin", "carol")


async def add_admin_in_the_database(hub) -> None:  # what the API, OIDC or a restore would leave behind
    async with hub.hub.tx() as session:
        await users.create_user(session, name="dora", password=PASSWORD, admin=True)


async def admins(hub) -> list[str]:
    async with hub.hub.sessions() as session:
        return sorted(u.name for u in await users.list_users(session) if u.is_admin)


@pytest.mark.parametrize("make_admin", [add_admin_with_the_cli, promote_with_the_cli, add_admin_in_the_database])
async def test_the_printed_link_stops_working_once_an_admin_exists(start_hub, sqlite_url, make_admin):
    """The attack: whoever saw the printed link (a log, a screen) makes themselves admin after the real one."""
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend()})
    token = hub.hub.setup_token
    assert token
    attacker = hub.client(headers=HTML)
    form = await attacker.get(f"/setup?token={token}")
    assert form.status_code == 200  # the link works while no admin exists
    assert SETUP_HINT in (await attacker.get("/login")).text
    csrf = csrf_of(form.text)

    await make_admin(hub)
    (admin,) = await admins(hub)

    again = await attacker.get(f"/setup?token={token}")
    assert again.status_code == 404 and "not valid" in again.text
    posted = await attacker.post("/setup", data={"token": token, "username": "mallory",
                                                 "password": PASSWORD, "csrf_token": csrf})
    assert posted.status_code == 404 and "not valid" in posted.text
    assert "labhub_session" not in posted.headers.get("set-cookie", "")
    assert await admins(hub) == [admin]  # no second admin
    assert hub.hub.setup_token is None
    assert SETUP_HINT not in (await attacker.get("/login")).text


async def test_the_login_page_hint_follows_the_database(start_hub, sqlite_url):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend()})
    assert SETUP_HINT in (await hub.client(headers=HTML).get("/login")).text
    await add_admin_with_the_cli(hub)
    assert SETUP_HINT not in (await hub.client(headers=HTML).get("/login")).text  # before anyone used the link
    assert hub.hub.setup_token is None


async def test_a_wrong_token_never_works_and_the_right_one_works_once(start_hub, sqlite_url):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend()})
    token = hub.hub.setup_token
    client = hub.client(headers=HTML)
    assert (await client.get(f"/setup?token={token[:-1]}x")).status_code == 404
    csrf = csrf_of((await client.get(f"/setup?token={token}")).text)
    wrong = await client.post("/setup", data={"token": "x" * len(token), "username": "mallory",
                                              "password": PASSWORD, "csrf_token": csrf})
    assert wrong.status_code == 404 and await admins(hub) == []
    weak = await client.post("/setup", data={"token": token, "username": "boss", "password": "short",
                                             "csrf_token": csrf})
    assert weak.status_code == 422 and hub.hub.setup_token == token  # a refused form does not use the link up
    done = await client.post("/setup", data={"token": token, "username": "boss", "password": PASSWORD,
                                             "csrf_token": csrf})
    assert done.status_code == 303 and await admins(hub) == ["boss"]
    second = await hub.client(headers=HTML).post("/setup", data={"token": token, "username": "eve",
                                                                 "password": PASSWORD, "csrf_token": csrf})
    assert second.status_code in (403, 404) and await admins(hub) == ["boss"]


async def test_two_posts_at_once_make_one_admin(start_hub, sqlite_url):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend()})
    token = hub.hub.setup_token
    clients = [hub.client(headers=HTML) for _ in range(2)]
    csrfs = [csrf_of((await c.get(f"/setup?token={token}")).text) for c in clients]
    answers = await asyncio.gather(*(
        c.post("/setup", data={"token": token, "username": name, "password": PASSWORD, "csrf_token": csrf})
        for c, csrf, name in zip(clients, csrfs, ("first", "second"), strict=True)))
    assert sorted(a.status_code for a in answers) == [303, 404]
    assert len(await admins(hub)) == 1
