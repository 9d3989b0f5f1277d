"""Tests for the local backend with real processes (no mocks of subprocess).

Run as root (as on our machines) they also check the per-user system accounts
and the cgroup v1 limits; those tests are skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path

import httpx
import pytest

from labhub.backends import procinfo
from labhub.backends.base import BackendError, Phase
from labhub.backends.local import LocalBackend
from tests.backends.local_support import (
    SLEEP,
    cleanup_backend,
    cmdline,
    exists,
    group_members,
    http_server,
    log_lines,
    make_spec,
    read_environ,
    read_text,
    wait_phase,
    wait_until,
    wait_url,
    write_log,
)

# -- lifecycle --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_submit_runs_and_answers_http(local_backend: LocalBackend, local_py: str, local_owner: str):
    spec = make_spec(http_server(local_py), owner=local_owner)
    handle = await local_backend.submit(spec)
    assert handle["host"] == "127.0.0.1" and handle["pid"] == handle["pgid"]
    assert handle["start_ticks"] == procinfo.start_ticks(handle["pid"])
    assert json.loads(read_text(local_backend.state_dir / spec.instance_id / "handle.json")) == handle

    obs = await local_backend.observe(spec.instance_id, handle)
    assert obs.phase == Phase.RUNNING  # alive; its URL only once its own process listens there
    obs = await wait_url(local_backend, handle)
    assert obs.url == f"http://127.0.0.1:{handle['port']}"

    async with httpx.AsyncClient() as client:

        async def answers():
            try:
                return (await client.get(obs.url + "/", timeout=1.0)).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(answers, what="HTTP answer")


@pytest.mark.asyncio
async def test_submit_is_idempotent(local_backend: LocalBackend, local_py: str, local_owner: str):
    spec = make_spec([local_py, "-c", SLEEP], owner=local_owner)
    first = await local_backend.submit(spec)
    second = await local_backend.submit(spec)
    assert second["pid"] == first["pid"]
    assert len(group_members(first["pgid"])) == 1

    # A new backend object (hub restarted) also returns the same process.
    other = LocalBackend(state_dir=local_backend.state_dir, hub_id=local_backend.hub_id)
    assert (await other.submit(spec))["pid"] == first["pid"]


@pytest.mark.asyncio
async def test_resubmit_after_exit_starts_anew(local_backend: LocalBackend, local_py: str, local_owner: str):
    spec = make_spec([local_py, "-c", "print('run')"], owner=local_owner)
    first = await local_backend.submit(spec)
    await wait_phase(local_backend, first, Phase.SUCCEEDED)
    second = await local_backend.submit(spec)
    assert second["pid"] != first["pid"]
    await wait_phase(local_backend, second, Phase.SUCCEEDED)
    assert (await log_lines(local_backend, second)).count("run") == 2  # the log is appended to


@pytest.mark.asyncio
async def test_env_is_minimal_and_explicit(
    local_backend: LocalBackend, local_py: str, local_owner: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("LABHUB_SECRET_KEY", "hub-secret-value")
    spec = make_spec([local_py, "-c", SLEEP], owner=local_owner, env={"FOO": "bar", "LANG": "de_DE.UTF-8"})
    handle = await local_backend.submit(spec)
    env = read_environ(handle["pid"])
    assert "LABHUB_SECRET_KEY" not in env
    assert "hub-secret-value" not in "".join(env.values())
    assert env["FOO"] == "bar"
    assert env["LANG"] == "de_DE.UTF-8"  # spec.env wins over the defaults
    assert env["LC_ALL"] == "C.UTF-8"
    assert env["SHELL"] == "/bin/bash"
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert env["USER"] == env["LOGNAME"]
    assert exists(env["HOME"])
    assert os.readlink(f"/proc/{handle['pid']}/cwd") == env["HOME"]
    assert env["JUPYTER_TOKEN"] == spec.token
    assert set(env) <= {"PATH", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "SHELL", "FOO",
                        "LABHUB_TOKEN", "JUPYTER_TOKEN", "CUDA_VISIBLE_DEVICES"}  # fmt: skip


@pytest.mark.asyncio
async def test_placeholders_filled_and_token_not_on_command_line(
    local_backend: LocalBackend, local_py: str, local_owner: str, local_state_dir: Path
):
    home = local_state_dir / "homes" / local_owner
    command = [local_py, "-c", SLEEP, "{port}", "{ip}", "{base_url}", "{home}", "{other}", "{}", "x{port}y"]
    spec = make_spec(command, owner=local_owner, home=home)
    handle = await local_backend.submit(spec)
    args = cmdline(handle["pid"])
    port = str(handle["port"])
    assert args[3:] == [port, "127.0.0.1", spec.base_url, str(home), "{other}", "{}", f"x{port}y"]
    assert spec.token not in " ".join(args)
    assert home.is_dir() and (home.stat().st_mode & 0o777) == 0o700
    assert os.readlink(f"/proc/{handle['pid']}/cwd") == str(home)


@pytest.mark.asyncio
async def test_exit_code_is_failed_with_logs(local_backend: LocalBackend, local_py: str, local_owner: str):
    spec = make_spec([local_py, "-c", "import sys; print('boom'); sys.exit(3)"], owner=local_owner)
    handle = await local_backend.submit(spec)
    obs = await wait_phase(local_backend, handle, Phase.FAILED)
    assert obs.exit_code == 3
    assert "exited with code 3" in obs.message
    assert "boom" in await log_lines(local_backend, handle)
    assert not group_members(handle["pid"])  # reaped: no zombie left behind


@pytest.mark.asyncio
async def test_exit_zero_succeeds(local_backend: LocalBackend, local_py: str, local_owner: str):
    handle = await local_backend.submit(make_spec([local_py, "-c", "pass"], owner=local_owner))
    obs = await wait_phase(local_backend, handle, Phase.SUCCEEDED)
    assert obs.exit_code == 0


@pytest.mark.asyncio
async def test_restarted_hub_learns_how_a_reaped_child_ended(
    local_backend: LocalBackend, local_py: str, local_owner: str
):
    handle = await local_backend.submit(make_spec([local_py, "-c", "raise SystemExit(5)"], owner=local_owner))
    await wait_phase(local_backend, handle, Phase.FAILED)
    restarted = LocalBackend(state_dir=local_backend.state_dir, hub_id=local_backend.hub_id)
    obs = await restarted.observe(handle["instance_id"], handle)
    assert (obs.phase, obs.exit_code, obs.message) == (Phase.FAILED, 5, "exited with code 5")
    assert await restarted.list_owned() == []
    assert await restarted.terminate(handle) is True
    assert (await restarted.observe(handle["instance_id"], handle)).phase == Phase.GONE
    if local_backend._cgroups is not None:  # an exited instance leaves no cgroup behind
        assert not any(exists(d) for d in local_backend._cgroups.dirs(handle["instance_id"]))


@pytest.mark.asyncio
async def test_killed_by_signal(local_backend: LocalBackend, local_py: str, local_owner: str):
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    handle = await local_backend.submit(make_spec([local_py, "-c", code], owner=local_owner))
    obs = await wait_phase(local_backend, handle, Phase.FAILED)
    assert obs.message == "killed by signal 9 (SIGKILL)"
    assert obs.reason is None


@pytest.mark.asyncio
async def test_command_not_found(local_backend: LocalBackend, local_owner: str):
    with pytest.raises(BackendError, match="command not found: no-such-command-xyz"):
        await local_backend.submit(make_spec(["no-such-command-xyz", "{port}"], owner=local_owner))


@pytest.mark.asyncio
async def test_invalid_instance_id(local_backend: LocalBackend, local_py: str, local_owner: str):
    with pytest.raises(BackendError, match="invalid instance id"):
        await local_backend.submit(make_spec([local_py], owner=local_owner, instance_id="../evil"))


# -- terminate ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_terminate_kills_the_process_group(
    local_backend: LocalBackend, local_py: str, local_owner: str
):
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    handle = await local_backend.submit(make_spec([local_py, "-c", code], owner=local_owner))
    await wait_until(lambda: len(group_members(handle["pgid"])) == 2, what="two processes in the group")
    t0 = time.monotonic()
    assert await local_backend.terminate(handle, grace=5.0) is True
    assert time.monotonic() - t0 < 3  # both exit on SIGTERM, no waiting for the grace period
    assert group_members(handle["pgid"]) == []
    assert await local_backend.terminate(handle) is True  # idempotent
    assert (await local_backend.observe(handle["instance_id"], handle)).phase == Phase.GONE
    assert exists(handle["log"])  # logs of stopped instances stay
    assert not exists(local_backend.state_dir / handle["instance_id"] / "handle.json")


@pytest.mark.asyncio
async def test_sigterm_ignored_then_sigkill(local_backend: LocalBackend, local_py: str, local_owner: str):
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    handle = await local_backend.submit(make_spec([local_py, "-c", code], owner=local_owner))

    async def ready():
        return "ready" in await log_lines(local_backend, handle)

    await wait_until(ready, what="SIGTERM handler installed")
    t0 = time.monotonic()
    assert await local_backend.terminate(handle, grace=0.5) is True
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 4
    assert not procinfo.is_alive(handle["pid"], handle["start_ticks"])


@pytest.mark.asyncio
async def test_unknown_handles_are_gone(local_backend: LocalBackend):
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    handles = {
        "empty": {},
        "no-pid": {"instance_id": "nope"},
        "dead": {"instance_id": "dead", "pid": dead.pid, "start_ticks": 1, "port": 1},
    }
    observed = await local_backend.observe_many(handles)
    assert set(observed) == set(handles)
    for obs in observed.values():
        assert obs.phase == Phase.GONE
        assert obs.message == "process no longer exists"
    for h in handles.values():
        assert await local_backend.terminate(h) is True


@pytest.mark.asyncio
async def test_reused_pid_is_gone_and_never_killed(local_backend: LocalBackend):
    stranger = await asyncio.create_subprocess_exec(sys.executable, "-c", SLEEP, start_new_session=True)
    try:
        ticks = procinfo.start_ticks(stranger.pid)
        assert ticks is not None
        handles = {
            "stranger": {"instance_id": "stranger", "pid": stranger.pid, "pgid": stranger.pid,
                         "start_ticks": ticks - 1, "port": 1, "uid": os.geteuid()},
            "self": {"instance_id": "self", "pid": os.getpid(), "pgid": os.getpgid(0),
                     "start_ticks": procinfo.start_ticks(os.getpid()) - 1, "port": 1, "uid": os.geteuid()},
        }  # fmt: skip
        observed = await local_backend.observe_many(handles)
        assert {k: o.phase for k, o in observed.items()} == {"stranger": Phase.GONE, "self": Phase.GONE}
        for h in handles.values():
            assert await local_backend.terminate(h, grace=0.2) is True
        await asyncio.sleep(0.2)
        assert stranger.returncode is None
        assert procinfo.is_alive(stranger.pid, ticks)
    finally:
        stranger.kill()
        await stranger.wait()


# -- restart, ownership, logs ------------------------------------------------------------


@pytest.mark.asyncio
async def test_new_backend_readopts_running_process(
    local_backend: LocalBackend, local_py: str, local_owner: str
):
    handle = await local_backend.submit(make_spec(http_server(local_py), owner=local_owner))
    restarted = LocalBackend(state_dir=local_backend.state_dir, hub_id=local_backend.hub_id)
    obs = await wait_url(restarted, handle)
    assert obs.phase == Phase.RUNNING and obs.url == f"http://127.0.0.1:{handle['port']}"
    assert [h["pid"] for h in await restarted.list_owned()] == [handle["pid"]]
    assert await restarted.terminate(handle, grace=2.0) is True
    assert group_members(handle["pgid"]) == []
    assert (await restarted.observe(handle["instance_id"], handle)).phase == Phase.GONE
    assert await restarted.list_owned() == []


HUB_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from labhub.backends.base import LaunchSpec, Resources
from labhub.backends.local import LocalBackend

async def main():
    backend = LocalBackend(state_dir=Path(sys.argv[1]), hub_id=sys.argv[2])
    spec = LaunchSpec(instance_id=sys.argv[3], owner=sys.argv[4], name="ws", kind="workspace",
                      command=[sys.argv[5], "-m", "http.server", "--bind", "{ip}", "{port}"], env={},
                      resources=Resources(cpus=1, memory_mb=256), base_url="/", token="t",
                      time_limit_s=60)
    print(json.dumps(await backend.submit(spec)))

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_instance_survives_hub_exit(local_backend: LocalBackend, local_py: str, local_owner: str):
    """A hub process that exits normally (garbage-collecting everything) leaves instances running."""
    iid = "i" + secrets.token_hex(6)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HUB_SCRIPT, str(local_backend.state_dir), local_backend.hub_id, iid,
        local_owner, local_py, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 8)
    assert proc.returncode == 0
    handle = json.loads(out)
    await asyncio.sleep(0.2)
    obs = await local_backend.observe(iid, handle)
    assert obs.phase == Phase.RUNNING
    assert await local_backend.terminate(handle, grace=2.0) is True
    assert not procinfo.is_alive(handle["pid"], handle["start_ticks"])


@pytest.mark.asyncio
async def test_list_owned_filters_hub_and_dead(local_backend: LocalBackend, local_py: str, local_owner: str):
    mine = await local_backend.submit(make_spec([local_py, "-c", SLEEP], owner=local_owner))
    finished = await local_backend.submit(make_spec([local_py, "-c", "pass"], owner=local_owner))
    other_hub = LocalBackend(state_dir=local_backend.state_dir, hub_id="another-hub")
    theirs = await other_hub.submit(make_spec([local_py, "-c", SLEEP], owner=local_owner))
    try:
        await wait_phase(local_backend, finished, Phase.SUCCEEDED)
        assert [h["instance_id"] for h in await local_backend.list_owned()] == [mine["instance_id"]]
        assert [h["instance_id"] for h in await other_hub.list_owned()] == [theirs["instance_id"]]
    finally:
        await cleanup_backend(other_hub)


@pytest.mark.asyncio
async def test_logs_tail_of_a_large_file(local_backend: LocalBackend):
    iid = "logs-only"
    write_log(
        local_backend.state_dir / iid / "output.log", [f"line {i} " + "x" * (i % 97) for i in range(10_000)]
    )
    handle = {"instance_id": iid}
    for n in (1, 7, 100, 2500):
        lines = await log_lines(local_backend, handle, tail=n)
        assert len(lines) == n
        assert lines[0].startswith(f"line {10_000 - n} ")
        assert lines[-1].startswith("line 9999 ")
    everything = await log_lines(local_backend, handle, tail=20_000)  # ~590 KB: only the last 256 KiB are read
    assert everything[0].startswith(procinfo.LINE_CUT) and everything[-1].startswith("line 9999 ")
    assert sum(len(line) + 1 for line in everything) <= procinfo.MAX_TAIL_BYTES + len(procinfo.LINE_CUT)
    assert await log_lines(local_backend, handle, tail=0) == []
    assert await log_lines(local_backend, {"instance_id": "missing"}) == []


def test_tail_lines_block_boundaries(tmp_path: Path):
    f = tmp_path / "f.log"
    lines = [f"{i}" + "y" * (i % 13) for i in range(300)]
    for ending in ("\n", ""):
        f.write_text("\n".join(lines) + ending)
        for n in (1, 2, 5, 50, 299, 300, 301):
            for block in (1, 3, 16, 4096):
                assert procinfo.tail_lines(f, n, block=block) == lines[-n:], (n, block, ending)
    f.write_text("")
    assert procinfo.tail_lines(f, 5) == []
