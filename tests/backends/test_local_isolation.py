"""The local backend as root: per-user accounts, cgroup v1 limits and out-of-memory kills; GPU assignment."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from labhub.backends import procinfo
from labhub.backends.base import BackendError, Capability, Phase
from labhub.backends.gpus import Gpu
from labhub.backends.local import LocalBackend
from labhub.backends.local_isolation import Cgroups, account_name
from tests.backends.local_support import (
    IS_ROOT,
    SLEEP,
    cleanup_backend,
    exists,
    make_spec,
    owner_uid,
    read_environ,
    read_text,
    root_only,
    wait_phase,
    wait_until,
)

# -- description, health, GPUs ------------------------------------------------------------


@pytest.mark.asyncio
async def test_health_and_description(local_backend: LocalBackend, local_state_dir: Path):
    await local_backend.health()
    assert Capability.LOGS in local_backend.capabilities
    text = local_backend.describe_isolation()
    assert ("system accounts" in text) == (IS_ROOT and local_backend.isolation == "auto")
    with pytest.raises(ValueError):
        LocalBackend(state_dir=local_state_dir / "bad", isolation="strict")


@pytest.mark.asyncio
async def test_user_code_never_runs_as_root(local_state_dir: Path, local_py: str, local_owner: str):
    """Fail closed: whatever keeps per-user accounts from working refuses launches, saying why and what to do."""
    spec = make_spec([local_py, "-c", SLEEP], owner=local_owner)
    if IS_ROOT:
        none = LocalBackend(state_dir=local_state_dir / "none", isolation="none")
        assert "runs as root" in none.unsupported(spec)["backend"]
        assert none.describe_isolation().startswith("launches refused")
        with pytest.raises(BackendError, match="root"):
            await none.submit(spec)
        # The hub's Python or data directory out of the accounts' reach (a venv under /root): refused, not root.
        private = local_state_dir / "private"
        private.mkdir(mode=0o700)
        hidden = LocalBackend(state_dir=private / "data" / "instances", private_root=private / "data")
        reason = hidden.unsupported(spec)["backend"]
        assert str(private) in reason and "not accessible to the per-user accounts" in reason
        with pytest.raises(BackendError):
            await hidden.submit(spec)
        assert await hidden.list_owned() == []
    else:
        auto = LocalBackend(state_dir=local_state_dir / "auto", isolation="auto")
        assert "LABHUB_ISOLATION=none" in auto.unsupported(spec)["backend"]
        none = LocalBackend(state_dir=local_state_dir / "none", isolation="none")
        assert none.unsupported(spec) == {}
        assert none.describe_isolation().startswith("processes run as the hub's own user")


def test_default_account_names():
    """Without an account from the hub: ``prefix + owner``, and never a shortened (shared) name."""
    assert account_name("labhub-", "alice") == "labhub-alice"
    with pytest.raises(BackendError, match="too long"):
        account_name("labhub-", "a" * 30 + "-one")
    with pytest.raises(BackendError):
        account_name("labhub-", "Robert'); DROP")


@pytest.mark.asyncio
async def test_gpu_assignment(local_state_dir: Path, local_py: str, local_owner: str):
    backend = LocalBackend(state_dir=local_state_dir / "gpu", hub_id="gpu-hub", gpus=2)
    try:
        assert Capability.GPUS in backend.capabilities
        assert backend.unsupported(make_spec([local_py], owner=local_owner, gpus=2)) == {}
        assert "size" in backend.unsupported(make_spec([local_py], owner=local_owner, gpus=3))
        a = await backend.submit(make_spec([local_py, "-c", SLEEP], owner=local_owner, gpus=1))
        b = await backend.submit(make_spec([local_py, "-c", SLEEP], owner=local_owner, gpus=1))
        c = await backend.submit(make_spec([local_py, "-c", SLEEP], owner=local_owner, gpus=0))
        assigned = {read_environ(h["pid"])["CUDA_VISIBLE_DEVICES"] for h in (a, b)}
        assert assigned == {"0", "1"}
        assert read_environ(c["pid"])["CUDA_VISIBLE_DEVICES"] == ""
        with pytest.raises(BackendError, match="only 0 are free"):
            await backend.submit(make_spec([local_py, "-c", SLEEP], owner=local_owner, gpus=1))
        await backend.terminate(a, grace=0.5)
        d = await backend.submit(make_spec([local_py, "-c", SLEEP], owner=local_owner, gpus=1))
        assert d["gpus"] == a["gpus"]
    finally:
        await cleanup_backend(backend)
    no_gpu = LocalBackend(state_dir=local_state_dir / "nogpu", gpus=0)
    assert Capability.GPUS not in no_gpu.capabilities
    assert "size" in no_gpu.unsupported(make_spec([local_py], owner=local_owner, gpus=1))


# -- isolation (root) -----------------------------------------------------------------------


def _cgroups_writable() -> bool:
    return IS_ROOT and Cgroups(Path("/sys/fs/cgroup")).available


cgroups_only = pytest.mark.skipif(not _cgroups_writable(), reason="cgroup v1 memory controller not writable")


@root_only
@pytest.mark.asyncio
async def test_runs_as_owner_account(
    local_isolated_backend: LocalBackend, local_py: str, local_owner: str, local_state_dir: Path
):
    home = local_state_dir / "homes" / local_owner
    handle = await local_isolated_backend.submit(
        make_spec([local_py, "-c", SLEEP], owner=local_owner, home=home)
    )
    pw = pwd.getpwnam(f"labhub-{local_owner}")
    assert pw.pw_uid != 0 and handle["uid"] == pw.pw_uid and handle["user"] == pw.pw_name
    assert procinfo.status_uids(handle["pid"]) == (pw.pw_uid,) * 4
    status = read_text(f"/proc/{handle['pid']}/status")
    gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
    assert gid_line.split()[1:] == [str(pw.pw_gid)] * 4
    groups_line = next(line for line in status.splitlines() if line.startswith("Groups:"))
    # root's supplementary groups are dropped; only the group that may traverse the hub's data directory
    assert groups_line.split()[1:] == [str(local_isolated_backend.data_dir_group)]
    assert owner_uid(home) == pw.pw_uid
    assert owner_uid(handle["log"]) == pw.pw_uid
    assert read_environ(handle["pid"])["USER"] == pw.pw_name
    # The hub's files stay the hub's: the account cannot forge a handle.
    assert owner_uid(local_isolated_backend.state_dir / handle["instance_id"] / "handle.json") == 0
    assert owner_uid(local_isolated_backend.state_dir / handle["instance_id"]) == 0


@root_only
@cgroups_only
@pytest.mark.asyncio
async def test_cgroup_limits(local_isolated_backend: LocalBackend, local_py: str, local_owner: str):
    # The grandchild leaves the process group; the cgroup still holds it.
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        "time.sleep(60)\n"
    )
    spec = make_spec([local_py, "-c", code], owner=local_owner, memory_mb=200, cpus=0.5)
    handle = await local_isolated_backend.submit(spec)
    mem = Path(handle["cgroup"])
    cpu = Path("/sys/fs/cgroup/cpu/labhub") / spec.instance_id
    assert mem == Path("/sys/fs/cgroup/memory/labhub") / spec.instance_id
    assert int(read_text(mem / "memory.limit_in_bytes")) == 200 * 1024 * 1024
    assert handle["pid"] in Cgroups.pids([mem])
    if exists(cpu):
        assert int(read_text(cpu / "cpu.cfs_quota_us")) == 50_000
        assert int(read_text(cpu / "cpu.cfs_period_us")) == 100_000
        assert handle["pid"] in Cgroups.pids([cpu])
    pids_dir = Path("/sys/fs/cgroup/pids/labhub") / spec.instance_id
    if exists(pids_dir):
        assert read_text(pids_dir / "pids.max").strip() == "4096"
    await wait_until(lambda: len(Cgroups.pids([mem])) == 2, what="grandchild in the cgroup")
    escaped = (Cgroups.pids([mem]) - {handle["pid"]}).pop()
    assert procinfo.read_stat(escaped).pgrp != handle["pgid"]

    assert await local_isolated_backend.terminate(handle, grace=2.0) is True
    assert procinfo.read_stat(escaped) is None or procinfo.read_stat(escaped).dead
    assert not exists(mem) and not exists(cpu) and not exists(pids_dir)


@root_only
@cgroups_only
@pytest.mark.asyncio
async def test_out_of_memory_is_reported(
    local_isolated_backend: LocalBackend, local_py: str, local_owner: str
):
    code = "import time; b = b'x' * (400 * 1024 * 1024); time.sleep(30)"
    handle = await local_isolated_backend.submit(
        make_spec([local_py, "-c", code], owner=local_owner, memory_mb=64)
    )
    obs = await wait_phase(local_isolated_backend, handle, Phase.FAILED)
    assert obs.reason == "OOM"
    assert obs.message == "killed: out of memory (limit 64 MiB)"
    assert obs.exit_code == 137
    # A restarted hub, no longer the parent, still learns it from the cgroup.
    restarted = LocalBackend(state_dir=local_isolated_backend.state_dir, hub_id=local_isolated_backend.hub_id)
    assert (await restarted.observe(handle["instance_id"], handle)).reason == "OOM"
    assert await local_isolated_backend.terminate(handle) is True
    assert not exists(handle["cgroup"])


async def test_a_gpu_that_disappears_makes_its_instance_unknown_not_failed(local_state_dir: Path, local_py: str,
                                                                          local_owner: str):
    now = [1000.0]
    found = [Gpu(0, found_by="nvml"), Gpu(1, found_by="nvml")]
    backend = LocalBackend(state_dir=local_state_dir / "lost", hub_id="lost-hub", clock=lambda: now[0],
                           gpu_inventory=lambda: list(found))
    assert backend.describe_capacity().startswith("2 GPU(s), each to one instance at a time (found by nvml); "
                                                  "CPUs not limited (this machine has ")
    try:
        a = await backend.submit(make_spec([local_py, "-c", SLEEP], owner=local_owner, gpus=1))
        b = await backend.submit(make_spec([local_py, "-c", SLEEP], owner=local_owner, gpus=1))
        seen = await backend.observe_many({"a": a, "b": b})
        assert {o.phase for o in seen.values()} == {Phase.RUNNING}
        found[:] = [g for g in found if g.index != a["gpus"][0]]  # a's GPU falls off the bus
        assert (await backend.observe_many({"a": a}))["a"].phase == Phase.RUNNING  # not looked for again yet
        now[0] += 31
        seen = await backend.observe_many({"a": a, "b": b})
        assert seen["a"].phase == Phase.UNKNOWN and seen["a"].reason == "gpu_lost"
        assert f"GPU {a['gpus'][0]} is no longer found" in seen["a"].message
        assert seen["b"].phase == Phase.RUNNING
        assert Path(f"/proc/{a['pid']}").exists()  # left running
    finally:
        await cleanup_backend(backend)
