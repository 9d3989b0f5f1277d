"""`labhub user ...` and `labhub group ...` on the data dir."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from labhub.cli.main import app

runner = CliRunner()


@pytest.fixture
def run(tmp_path):
    env = {"LABHUB_DATA_DIR": str(tmp_path / "data"), "LABHUB_URL": "", "LABHUB_TOKEN": "",
           "LABHUB_OIDC": '{"lab": {"discovery_url": "https://idp.example/.well-known/openid-configuration", '
                          '"client_id": "x"}}'}

    def invoke(*args: str, stdin: str | None = None):
        return runner.invoke(app, list(args), env=env, input=stdin, catch_exceptions=False)

    return invoke


def test_user_management_commands(run):
    assert run("user", "add", "root", "--admin", "--password-stdin", stdin="long enough pw\n").exit_code == 0
    assert run("user", "add", "alice").exit_code == 0
    assert run("user", "add", "bob").exit_code == 0
    listed = json.loads(run("user", "ls", "--json", "--status", "active").output)
    assert [u["name"] for u in listed] == ["alice", "bob", "root"]
    assert run("user", "ls", "--status", "nonsense").exit_code == 1

    off = run("user", "disable", "bob", "--reason", "left")
    assert off.exit_code == 0 and "disabled bob; stopping 0 instance(s)" in off.output
    disabled = json.loads(run("user", "ls", "--json", "--status", "disabled").output)
    assert [(u["name"], u["status_reason"]) for u in disabled] == [("bob", f"disabled by {disabled_actor(run)}: left")]
    assert run("user", "approve", "bob").exit_code == 1  # not pending: already decided
    assert run("user", "enable", "bob").exit_code == 0
    assert "now an admin" in run("user", "admin", "alice").output
    assert "no longer an admin" in run("user", "admin", "alice", "--remove").output
    assert run("user", "link", "alice", "--provider", "lab", "--subject", "abc-123").exit_code == 0
    assert run("user", "link", "bob", "--provider", "lab", "--subject", "abc-123").exit_code == 1  # taken
    assert run("user", "link", "bob", "--provider", "nope", "--subject", "x").exit_code == 1
    assert run("user", "delete", "bob").output.strip() == "deleted bob"
    assert run("user", "delete", "bob").exit_code == 1


def disabled_actor(run) -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def test_group_commands(run):
    run("user", "add", "alice")
    assert run("group", "add", "lab", "--description", "the lab").exit_code == 0
    assert run("group", "add", "lab").exit_code == 1
    assert run("group", "add", "Bad Name").exit_code == 1
    assert "added to lab" in run("group", "add-member", "lab", "alice").output
    assert "already in lab" in run("group", "add-member", "lab", "alice").output
    assert run("group", "members", "lab").output.split() == ["alice", "admin"]
    assert json.loads(run("group", "ls", "--json").output) == [{"name": "lab", "description": "the lab",
                                                                 "members": 1}]
    assert run("group", "remove-member", "lab", "alice").exit_code == 0
    assert run("group", "remove-member", "lab", "alice").exit_code == 1
    assert run("group", "rm", "lab").exit_code == 0
