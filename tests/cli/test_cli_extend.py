"""`labhub extend NAME --hours H` (and ``Hub.extend``) against a running hub: within the maximum,
beyond it (the error says how much is left), bad input, someone else's instance, an ended one."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from typer.testing import CliRunner

from labhub.backends.fake import FakeBackend
from labhub.cli.main import app
from labhub.client import Hub, HubError

runner = CliRunner()
pytestmark = pytest.mark.asyncio


def client_extend(url: str, token: str, name_or_id: str) -> dict:
    with Hub(url, token) as client:
        return client.extend(name_or_id, 1)


async def test_extend_from_the_command_line(start_hub, sqlite_url, echo_upstream):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)})
    alice = await hub.user("alice")
    bob = await hub.user("bob")

    def cli(*args: str, token: str = alice.token):
        return asyncio.to_thread(runner.invoke, app, list(args), env={"LABHUB_URL": hub.url, "LABHUB_TOKEN": token},
                                 catch_exceptions=False)

    made = (await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws", "hours": 2}))
    inst = await hub.wait_status(alice, made.json()["id"], {"running"})

    done = await cli("extend", "ws", "--hours", "3")
    assert done.exit_code == 0, done.output
    now = (await alice.http.get(f"/api/v1/instances/{inst['id']}")).json()
    assert now["hours"] == 5
    assert done.output == f"ws: 5 h in all, expires at {now['expires_at']}\n"
    created = dt.datetime.fromisoformat(inst["created_at"].replace("Z", "+00:00"))
    assert dt.datetime.fromisoformat(now["expires_at"].replace("Z", "+00:00")) == created + dt.timedelta(hours=5)

    over = await cli("extend", "ws", "--hours", "20")
    assert over.exit_code == 1
    assert "error (422): beyond the maximum" in over.output
    assert "hours: at most 19 h more (JupyterLab runs at most 24 h in all; it has 5 h)" in over.output
    zero = await cli("extend", "ws", "--hours", "0")
    assert zero.exit_code == 1 and "hours: must be more than 0" in zero.output
    assert (await cli("extend", "ws", "--hours", "soon")).exit_code == 2  # not a number: typer's usage error
    assert (await cli("extend", "ws")).exit_code == 2  # --hours is required

    # by id too; someone else's instance is not found by name, and refused by id
    by_id = await asyncio.to_thread(client_extend, hub.url, alice.token, inst["id"])
    assert by_id["hours"] == 6
    not_bobs = await cli("extend", "ws", "--hours", "1", token=bob.token)
    assert not_bobs.exit_code == 1 and "you have no instance named 'ws'" in not_bobs.output
    with pytest.raises(HubError) as refused:
        await asyncio.to_thread(client_extend, hub.url, bob.token, inst["id"])
    assert refused.value.status == 403

    await alice.http.delete(f"/api/v1/instances/{inst['id']}")
    await hub.wait_status(alice, inst["id"], {"stopped"})
    ended = await cli("extend", "ws", "--hours", "1")
    assert ended.exit_code == 1 and "error (409): ws cannot be extended: it has ended" in ended.output
    assert (await alice.http.get(f"/api/v1/instances/{inst['id']}")).json()["hours"] == 6



async def test_restart_with_a_new_size_from_the_command_line(start_hub, sqlite_url, echo_upstream):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)})
    alice = await hub.user("alice")

    def cli(*args: str):
        env = {"LABHUB_URL": hub.url, "LABHUB_TOKEN": alice.token}
        return asyncio.to_thread(runner.invoke, app, list(args), env=env, catch_exceptions=False)

    made = await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws", "size": "small"})
    await hub.wait_status(alice, made.json()["id"], {"running"})
    assert (await cli("restart", "ws")).exit_code == 2  # no size given
    bad = await cli("restart", "ws", "--size", "huge")
    assert bad.exit_code == 1 and "size: must be one of" in bad.output
    done = await cli("restart", "ws", "--size", "medium")
    assert done.exit_code == 0, done.output
    new_id = done.output.rsplit("(", 1)[1].split(")")[0]
    assert done.output.startswith("ws: requested with size medium (")
    assert (await hub.wait_status(alice, new_id, {"running"}))["resources"]["cpus"] == 2
    assert (await hub.wait_status(alice, made.json()["id"], {"stopped"}))["reason"] == "restart"
