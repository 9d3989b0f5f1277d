"""`labhub quota show|set`, `labhub group policy` and `labhub launch --for/--custom` against a running hub:
a user's and a group's quota set (merged with what was stored, keys cleared) and shown, the warning
when running instances are over, refusals for non-admins, field errors for bad values, a queued
launch's place, and the Python client's methods underneath."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from labhub.backends.base import Capacity
from labhub.backends.fake import FakeBackend
from labhub.cli.main import app
from labhub.client import Hub, HubError

runner = CliRunner()
pytestmark = pytest.mark.asyncio

SIZES = {"small": {"cpus": 1, "memory_mb": 512}, "gpu": {"cpus": 1, "memory_mb": 512, "gpus": 1}}


@pytest.fixture
async def hub(start_hub, sqlite_url, echo_upstream):
    fake = FakeBackend(url=echo_upstream.url, gpus=True, capacity=Capacity(gpus=2))
    return await start_hub(sqlite_url, backends={"fake": fake}, sizes=SIZES, quota={"instances": 5})


def runner_for(hub):
    def cli(caller, *args: str):
        env = {"LABHUB_URL": hub.url, "LABHUB_TOKEN": caller.token}
        return asyncio.to_thread(runner.invoke, app, list(args), env=env, catch_exceptions=False)

    return cli


def lines_of(output: str) -> dict[str, str]:
    """``key  rest`` lines of `quota show` by their first word."""
    return {line.split()[0]: " ".join(line.split()[1:]) for line in output.splitlines() if line.strip()}


async def test_user_quota_set_show_and_the_over_warning(hub):
    alice = await hub.user("alice")
    root = await hub.user("root", admin=True)
    cli = runner_for(hub)
    for n in range(3):
        made = await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": f"ws{n}",
                                                                 "size": "small", "hours": 1})
        await hub.wait_status(alice, made.json()["id"], {"running"})

    shown = await cli(alice, "quota", "show", "alice")
    assert shown.exit_code == 0, shown.output
    rows = lines_of(shown.output)
    assert rows["instances"] == "3 of 5 (site)"
    assert rows["cpus"] == "3 no limit" and rows["gpus"] == "0 no limit" and rows["gpu_hours"] == "0 no limit"
    assert rows["period:"].startswith("month, ") and "(UTC)" in rows["period:"]
    as_json = json.loads((await cli(alice, "quota", "show", "alice", "--json")).output)
    assert as_json["limits"]["instances"] == 5 and as_json["usage"]["instances"] == 3

    # set: the given values merged with what is stored; lowering below what runs warns, stops nothing
    first = await cli(root, "quota", "set", "--user", "alice", "--gpus", "2", "--cpus", "8")
    assert first.exit_code == 0, first.output
    assert first.output.strip() == "alice's own quota: cpus 8, gpus 2"
    lowered = await cli(root, "quota", "set", "--user", "alice", "--instances", "1")
    assert lowered.exit_code == 0, lowered.output
    assert "alice's own quota: instances 1, cpus 8, gpus 2" in lowered.output
    assert "warning: running instances are over the new limits; they keep running" in lowered.output
    assert "  instances: 3 in use, the limit is now 1" in lowered.output
    listed = (await alice.http.get("/api/v1/instances", params={"active": "true"})).json()
    assert {i["status"] for i in listed} == {"running"} and len(listed) == 3
    rows = lines_of((await cli(alice, "quota", "show", "alice")).output)
    assert rows["instances"] == "3 of 1 (user)" and rows["gpus"] == "0 of 2 (user)" and rows["cpus"] == "3 of 8 (user)"

    # a launch over the quota waits, and says for what and where it stands
    queued = await cli(alice, "launch", "jupyterlab", "--name", "next", "--size", "small", "--hours", "1")
    assert queued.exit_code == 0, queued.output
    assert queued.output.splitlines()[0].startswith("next: queued (")
    assert queued.output.splitlines()[1] == ("queued: waiting for your quota: 3 of 1 instance in use; "
                                             "you are 1st in the queue")

    cleared = await cli(root, "quota", "set", "--user", "alice", "--clear", "instances", "--clear", "cpus")
    assert cleared.exit_code == 0 and cleared.output.strip() == "alice's own quota: gpus 2"
    assert "warning" not in cleared.output
    rows = lines_of((await cli(root, "quota", "show", "alice")).output)
    assert rows["instances"].endswith("of 5 (site)") and rows["cpus"].endswith("no limit")
    every = await cli(root, "quota", "set", "--user", "alice", "--clear", "gpus")
    assert every.output.strip() == "alice's own quota: no limits set (they come from their groups and the site)"

    # refusals: not an admin, someone else's, bad values field by field, bad usage
    bob = await hub.user("bob")
    refused = await cli(alice, "quota", "set", "--user", "alice", "--instances", "50")
    assert refused.exit_code == 1 and "error (403)" in refused.output
    theirs = await cli(bob, "quota", "show", "alice")
    assert theirs.exit_code == 1 and "error (403): only admins may see other users' quotas" in theirs.output
    bad = await cli(root, "quota", "set", "--user", "alice", "--instances", "-1", "--gpu-hours", "-2")
    assert bad.exit_code == 1 and "error (422)" in bad.output
    assert "  instances: Input should be greater than or equal to 0" in bad.output
    assert "  gpu_hours: Input should be greater than or equal to 0" in bad.output
    nobody = await cli(root, "quota", "set", "--user", "nobody", "--gpus", "1")
    assert nobody.exit_code == 1 and "error (404)" in nobody.output
    for args, said in ((["--instances", "2"], "exactly one of --user and --group"),
                       (["--user", "alice", "--group", "vip", "--gpus", "1"], "exactly one of --user and --group"),
                       (["--user", "alice"], "nothing to change"),
                       (["--user", "alice", "--clear", "disk"], "expected one of instances, cpus, memory-mb"),
                       (["--user", "alice", "--gpus", "1", "--clear", "gpus"], "choose one")):
        usage = await cli(root, "quota", "set", *args)
        assert usage.exit_code == 2 and said in usage.output, usage.output
    assert (await cli(root, "quota", "set", "--user", "alice", "--gpus", "two")).exit_code == 2  # typer's check


async def test_group_quota_and_policy(hub):
    root = await hub.user("root", admin=True)
    bob, carol = await hub.user("bob"), await hub.user("carol")
    assert (await root.http.post("/api/v1/groups", json={"name": "vip"})).status_code == 201
    await root.http.put("/api/v1/groups/vip/members/bob")
    cli = runner_for(hub)

    put = await cli(root, "quota", "set", "--group", "vip", "--gpus", "2", "--gpu-hours", "3")
    assert put.exit_code == 0 and put.output.strip() == "group vip's quota: gpus 2, gpu_hours 3"
    merged = await cli(root, "quota", "set", "--group", "vip", "--memory-mb", "4096")
    assert merged.output.strip() == "group vip's quota: memory_mb 4096, gpus 2, gpu_hours 3"
    shown = await cli(root, "quota", "show", "vip", "--group")
    assert shown.exit_code == 0, shown.output
    rows = lines_of(shown.output)
    assert rows["gpus"] == "2" and rows["gpu_hours"] == "3 per period" and rows["instances"] == "not set"
    assert rows["priority"] == "0, self-service on"
    assert rows["policy:"] == "the templates' durations and sizes"
    rows = lines_of((await cli(bob, "quota", "show", "bob")).output)
    assert rows["gpus"] == "0 of 2 (group:vip)" and rows["gpu_hours"] == "0 of 3 (group:vip)"
    assert rows["instances"] == "0 of 5 (site)"
    assert (await cli(bob, "quota", "show", "vip", "--group")).exit_code == 0  # a member reads it
    hidden = await cli(carol, "quota", "show", "vip", "--group")
    assert hidden.exit_code == 1 and "no group named 'vip'" in hidden.output

    # the over warning names the member
    made = await bob.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "g", "size": "gpu",
                                                           "hours": 1})
    await hub.wait_status(bob, made.json()["id"], {"running"})
    over = await cli(root, "quota", "set", "--group", "vip", "--gpus", "0")
    assert over.exit_code == 0 and "  bob: GPUs: 1 in use, the limit is now 0" in over.output

    # policy: each change keeps the rest
    policy = await cli(root, "group", "policy", "vip", "--priority", "10", "--max-hours", "1")
    assert policy.exit_code == 0, policy.output
    assert policy.output.splitlines() == ["group vip:", "priority 10, self-service on", "policy: max_hours 1"]
    more = await cli(root, "group", "policy", "vip", "--single-instance", "--no-self-service",
                     "--custom-size", "cpus=2,memory_mb=2048")
    assert more.exit_code == 0, more.output
    assert more.output.splitlines()[1:] == ["priority 10, self-service off",
                                            "policy: max_hours 1, single_instance on, "
                                            "custom_size up to cpus=2,memory_mb=2048,gpus=0"]
    fewer = await cli(root, "group", "policy", "vip", "--clear", "max-hours", "--no-single-instance",
                      "--self-service")
    assert fewer.output.splitlines()[1:] == ["priority 10, self-service on",
                                             "policy: custom_size up to cpus=2,memory_mb=2048,gpus=0"]
    same = await cli(bob, "group", "policy", "vip")  # no options: shown, nothing changed
    assert same.exit_code == 0 and same.output == fewer.output
    refused = await cli(bob, "group", "policy", "vip", "--priority", "99")
    assert refused.exit_code == 1 and "error (403)" in refused.output
    bad = await cli(root, "group", "policy", "vip", "--max-hours", "-1", "--custom-size", "cpus=0,memory_mb=x")
    assert bad.exit_code == 1 and "error (422)" in bad.output
    assert "  max_hours: Input should be greater than 0" in bad.output
    assert "  custom_size.cpus: Input should be greater than 0" in bad.output
    assert "  custom_size.memory_mb:" in bad.output
    usage = await cli(root, "group", "policy", "vip", "--custom-size", "lots")
    assert usage.exit_code == 2 and "expected cpus=N,memory_mb=N,gpus=N" in usage.output
    usage = await cli(root, "group", "policy", "vip", "--clear", "priority")
    assert usage.exit_code == 2 and "expected one of max-hours, default-hours, custom-size" in usage.output

    # a custom size within the group's maximum, from the command line
    custom = await cli(bob, "launch", "jupyterlab", "--name", "custom", "--custom", "cpus=1.5,memory_mb=1024",
                       "--hours", "1")
    assert custom.exit_code == 0, custom.output
    listed = {i["name"]: i for i in (await bob.http.get("/api/v1/instances")).json()}
    assert listed["custom"]["size"] == "custom"
    assert listed["custom"]["resources"] == {"cpus": 1.5, "memory_mb": 1024, "gpus": 0}
    big = await cli(bob, "launch", "jupyterlab", "--name", "big", "--custom", "cpus=3,memory_mb=1024")
    assert big.exit_code == 1 and "  custom.cpus: must be 0.1 to 2" in big.output


async def test_launch_for_a_user(hub):
    root = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    cli = runner_for(hub)

    done = await cli(root, "launch", "jupyterlab", "--name", "for-alice", "--for", "alice", "--size", "small",
                     "--hours", "1", "--wait")
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[0].startswith("alice/for-alice: requested (")
    assert "alice/for-alice: running at " in done.output
    theirs = (await alice.http.get("/api/v1/instances", params={"name": "for-alice"})).json()
    assert [(i["owner"], i["status"]) for i in theirs] == [("alice", "running")]
    assert (await root.http.get("/api/v1/instances", params={"name": "for-alice"})).json() == []  # not root's

    # on alice's quota: it waits for hers, and says so
    assert (await cli(root, "quota", "set", "--user", "alice", "--instances", "1")).exit_code == 0
    queued = await cli(root, "launch", "jupyterlab", "--name", "second", "--for", "alice", "--size", "small")
    assert queued.exit_code == 0, queued.output
    assert queued.output.splitlines()[1] == ("queued: waiting for your quota: 1 of 1 instance in use; "
                                             "it is 1st in the queue")

    refused = await cli(alice, "launch", "jupyterlab", "--name", "x", "--for", "root")
    assert refused.exit_code == 1 and "error (403): only admins may launch for another user" in refused.output
    nobody = await cli(root, "launch", "jupyterlab", "--name", "x", "--for", "nobody")
    assert nobody.exit_code == 1 and "  owner: no user named 'nobody'" in nobody.output
    no_custom = await cli(root, "launch", "jupyterlab", "--name", "x", "--custom", "cpus=1,memory_mb=512")
    assert no_custom.exit_code == 1 and "  size: this template takes no custom size" in no_custom.output


async def test_the_client_underneath(hub):
    root = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    assert (await root.http.post("/api/v1/groups", json={"name": "lab"})).status_code == 201

    def calls() -> None:
        with Hub(hub.url, root.token) as client:
            assert client.set_quota("alice", {"gpus": 1}) == {"quota": {"gpus": 1}, "over": []}
            report = client.quota("alice")
            assert report["limits"]["gpus"] == 1 and report["source"]["gpus"] == "user"
            assert client.set_group_quota("lab", {"cpu_hours": 10})["quota"] == {"cpu_hours": 10}
            group = client.set_group_policy("lab", priority=3, max_hours=2)
            assert group["priority"] == 3 and group["policy"] == {"max_hours": 2}
            assert client.group_quota("lab") == group
            inst = client.launch("jupyterlab", "ws", size="small", hours=1, owner="alice")
            assert inst["owner"] == "alice"
            with pytest.raises(HubError) as bad:
                client.set_quota("alice", {"gpus": -1})
            assert bad.value.status == 422 and "gpus" in bad.value.fields
        with Hub(hub.url, alice.token) as client, pytest.raises(HubError) as refused:
            client.set_group_policy("lab", priority=1)
        assert refused.value.status == 403

    await asyncio.to_thread(calls)
