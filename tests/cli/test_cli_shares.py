"""`labhub share` / `labhub unshare` against a running hub: share with a user and a group, list, revoke
(both ways), the refusals (someone else's instance, an unknown user, an owner opening it to anyone),
an admin opening someone's workspace (OWNER/NAME), and the Python client's methods underneath."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from labhub.backends.fake import FakeBackend
from labhub.cli.main import app
from labhub.client import Hub, HubError

runner = CliRunner()
pytestmark = pytest.mark.asyncio


async def test_share_list_and_revoke_from_the_command_line(start_hub, sqlite_url, echo_upstream):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)})
    alice, bob = await hub.user("alice"), await hub.user("bob")
    root = await hub.user("root", admin=True)
    assert (await root.http.post("/api/v1/groups", json={"name": "physics"})).status_code == 201
    assert (await root.http.put("/api/v1/groups/physics/members/alice")).status_code in (200, 201)
    made = await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws"})
    inst = await hub.wait_status(alice, made.json()["id"], {"running"})

    def cli(caller, *args: str):
        env = {"LABHUB_URL": hub.url, "LABHUB_TOKEN": caller.token}
        return asyncio.to_thread(runner.invoke, app, list(args), env=env, catch_exceptions=False)

    listed = await cli(alice, "share", "ws")
    assert listed.exit_code == 0 and "alice/ws is not shared: only alice and admins may open it" in listed.output

    shared = await cli(alice, "share", "ws", "--user", "bob", "--group", "physics")
    assert shared.exit_code == 0, shared.output
    lines = shared.output.splitlines()
    assert lines[0].split() == ["ID", "WITH", "SHARED", "BY", "SINCE"]
    assert lines[1].split()[1:3] == ["bob", "alice"] and lines[2].split()[1:4] == ["group", "physics", "alice"]
    assert lines[-1] == f"open it at {inst['url']}"
    assert (await hub.instance_client(bob, inst).get("/api/status")).status_code == 200

    as_json = json.loads((await cli(alice, "share", "ws", "--json")).output)
    assert as_json["open_to"] == "" and [s["user"] or s["group"] for s in as_json["shares"]] == ["bob", "physics"]

    # refusals: exit 1 and the reason, field by field
    unknown = await cli(alice, "share", "ws", "--user", "nobody")
    assert unknown.exit_code == 1 and "user: no active user named 'nobody'" in unknown.output
    theirs = await cli(bob, "share", "alice/ws", "--user", "bob")
    assert theirs.exit_code == 1 and "error (403)" in theirs.output
    opened = await cli(alice, "share", "ws", "--open-to", "anyone")
    assert opened.exit_code == 1 and "only admins" in opened.output
    bad = await cli(root, "share", "alice/ws", "--open-to", "everyone")
    assert bad.exit_code == 2 and "expected users, anyone or none" in bad.output
    nothing = await cli(alice, "unshare", "ws")
    assert nothing.exit_code == 2 and "name a --user or a --group" in nothing.output
    missing = await cli(alice, "unshare", "ws", "--user", "carol")
    assert missing.exit_code == 1 and "it is not shared with carol" in missing.output

    # revoke: `unshare`, and `share --revoke`
    gone = await cli(alice, "unshare", "ws", "--user", "bob")
    assert gone.exit_code == 0 and "ws: no longer shared with bob" in gone.output
    assert (await hub.instance_client(bob, inst).get("/api/status")).status_code == 403
    gone = await cli(alice, "share", "ws", "--revoke", "--group", "physics")
    assert gone.exit_code == 0 and "ws: no longer shared with group physics" in gone.output
    assert "is not shared" in gone.output

    # an admin opens someone's workspace by OWNER/NAME, and closes it
    anonymous = hub.instance_client(None, inst, headers={"Accept": "application/json"})
    opened = await cli(root, "share", "alice/ws", "--open-to", "anyone")
    assert opened.exit_code == 0 and "alice/ws: open to anyone, without logging in" in opened.output
    assert (await anonymous.get("/api/status")).status_code == 200
    closed = await cli(root, "share", "alice/ws", "--open-to", "none")
    assert closed.exit_code == 0 and "is not shared" in closed.output
    assert (await anonymous.get("/api/status")).status_code == 401
    missing = await cli(root, "share", "alice/nope")
    assert missing.exit_code == 1 and "alice has no instance named 'nope'" in missing.output

    # the client underneath
    def client_calls() -> None:
        with Hub(hub.url, alice.token) as client:
            share = client.share(inst["id"], user="bob")
            assert share["user"] == "bob" and client.shares(inst["id"]) == [share]
            assert client.share(inst["id"], user="bob")["id"] == share["id"]  # idempotent
            assert client.access(inst["id"])["shares"] == [share]
            assert client.unshare(inst["id"], share_id=share["id"])["id"] == share["id"]
            with pytest.raises(HubError) as refused:
                client.set_access(inst["id"], "users")
            assert refused.value.status == 403

    await asyncio.to_thread(client_calls)
