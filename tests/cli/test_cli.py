"""The `labhub` command: admin commands on a data dir, and the client against a running hub."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from labhub.backends.fake import FakeBackend
from labhub.cli.main import app

runner = CliRunner()


def invoke(*args: str, env: dict[str, str], stdin: str | None = None):
    return runner.invoke(app, list(args), env=env, input=stdin, catch_exceptions=False)


@pytest.fixture
def data_env(tmp_path) -> dict[str, str]:
    return {"LABHUB_DATA_DIR": str(tmp_path / "data"), "LABHUB_URL": "", "LABHUB_TOKEN": ""}


def test_admin_commands_on_the_data_dir(data_env):
    assert "newest revision" in invoke("db", "upgrade", env=data_env).output
    out = invoke("user", "add", "alice", "--admin", "--password-stdin", env=data_env, stdin="long enough pw\n")
    assert out.exit_code == 0 and "added admin alice" in out.output and "password" not in out.output
    generated = invoke("user", "add", "bob", env=data_env)
    assert generated.exit_code == 0 and "password: " in generated.output
    dup = invoke("user", "add", "bob", env=data_env)
    assert dup.exit_code == 1 and "already exists" in dup.output
    bad = invoke("user", "add", "Bob_1", env=data_env)
    assert bad.exit_code == 1 and "name:" in bad.output
    listed = json.loads(invoke("user", "ls", "--json", env=data_env).output)
    assert [(u["name"], u["role"]) for u in listed] == [("alice", "admin"), ("bob", "user")]
    token = invoke("token", "issue", "alice", env=data_env).output.strip()
    assert token.startswith("lh_") and len(token) > 40
    assert invoke("token", "issue", "nobody", env=data_env).exit_code == 1


def test_bad_configuration_names_the_key(data_env):
    out = runner.invoke(app, ["serve"], env={**data_env, "LABHUB_BIND": "nope"})
    assert out.exit_code == 2 and "LABHUB_BIND" in out.output


async def test_client_commands_against_a_running_hub(start_hub, sqlite_url, echo_upstream):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)})
    alice = await hub.user("alice")
    env = {"LABHUB_URL": hub.url, "LABHUB_TOKEN": alice.token}

    def cli(*args: str):
        return asyncio.to_thread(runner.invoke, app, list(args), env=env, catch_exceptions=False)

    launched = await cli("launch", "jupyterlab", "--name", "ws1", "--size", "small", "--hours", "1", "--wait")
    assert launched.exit_code == 0, launched.output
    assert "ws1: running at http://ws1--alice.localhost:" in launched.output
    listing = await cli("ls")
    assert "ws1" in listing.output and "running" in listing.output
    bad = await cli("launch", "jupyterlab", "--name", "Bad_Name")
    assert bad.exit_code == 1 and "name:" in bad.output
    events = await cli("events", "ws1")
    assert "requested" in events.output and "ready after" in events.output
    assert (await cli("logs", "ws1")).exit_code == 0
    stopped = await cli("stop", "ws1")
    assert stopped.exit_code == 0 and "stopping" in stopped.output
    followed = await cli("events", "ws1", "--follow")  # ends once the instance has ended
    assert "stopped by the owner" in followed.output
    missing = await cli("stop", "nope")
    assert missing.exit_code == 1 and "no instance named 'nope'" in missing.output


def test_client_without_credentials_says_how_to_log_in(data_env, tmp_path):
    out = runner.invoke(app, ["ls"], env={**data_env, "XDG_CONFIG_HOME": str(tmp_path)})
    assert out.exit_code == 2 and "labhub login" in out.output
