"""The Slurm backend: its logic against a scripted command runner, then what only a real cluster shows."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import time
from pathlib import Path

import pytest

from labhub.backends.base import BackendError, Capability, LaunchSpec, Phase, Resources
from labhub.backends.commands import CommandRunner, LocalRunner
from labhub.backends.slurm import SlurmBackend
from tests.backends.conftest import IS_ROOT, CallHomeReceiver, ScriptedRunner, system_python

TOKEN = "to" + "k"
UNREACHABLE = (1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(iid: str = "i1", *, owner: str = "alice", gpus: int = 0, command: list[str] | None = None,
         options: dict | None = None, home: str = "/srv/homes/alice") -> LaunchSpec:
    return LaunchSpec(instance_id=iid, owner=owner, name="ws1", kind="workspace", command=command or ["prog"],
                      env={"LABHUB_TOKEN": TOKEN}, resources=Resources(1, 512, gpus), base_url="/user/a/ws1/",
                      token=TOKEN, time_limit_s=3600, home=home, options=options or {})


def job_spec(iid: str = "j1", *, command: list[str] | None = None, dirs: tuple[str, ...] = ("output",),
             ) -> LaunchSpec:
    return LaunchSpec(instance_id=iid, owner="alice", name="train-1", kind="job", command=command or ["python3"],
                      env={"LABHUB_TOKEN": TOKEN, "LABHUB_OUTPUT": f"/srv/labhub/jobs/{iid}/output"},
                      resources=Resources(1, 512), base_url="/user/a/train-1/", token=TOKEN, time_limit_s=3600,
                      home=f"/srv/labhub/jobs/{iid}", dirs=dirs, readable=("/srv/labhub/folders/1/in",))


def scripted(runner: ScriptedRunner, **kwargs) -> SlurmBackend:
    kwargs.setdefault("run_as", "service")
    return SlurmBackend(runner=runner, hub_url="http://hub:8000/", state_dir=Path("/srv/labhub/slurm"),
                        monotonic=kwargs.pop("clock", Clock()), **kwargs)


def row(job_id: str, state: str, iid: str, reason: str = "None", hub: str = "labhub") -> str:
    return f"{job_id}|{state}|{reason}|N/A|node1|svc|debug|labhub-{iid}|labhub:{hub}:{iid}\n"


# -- with a scripted runner: no cluster, no waiting ------------------------------------------------


async def test_submit_pipes_the_script_to_sbatch_with_only_fixed_arguments():
    runner = ScriptedRunner().on("squeue", "").on("sbatch", "77\n")
    backend = scripted(runner)
    handle = await backend.submit(spec(command=["prog", "$(id)", "; rm -rf /"]))
    assert handle == {"instance_id": "i1", "job_id": "77", "hub_id": "labhub", "user": None,
                      "output": "/srv/labhub/slurm/i1/slurm-77.out", "workdir": "/srv/homes/alice"}
    (argv, script), = [(a, s) for a, s in runner.calls if a[0] == "sbatch"]
    assert argv == ["sbatch", "--parsable"]
    assert "#SBATCH --job-name=labhub-i1" in script and "$(id)" not in script
    mkdirs = runner.called("mkdir")
    assert [a[-1] for a in mkdirs] == ["/srv/homes/alice", "/srv/labhub/slurm/i1"]
    assert runner.called("squeue")[0][:4] == ["squeue", "-h", "-a", "--name=labhub-i1"]


async def test_submit_finds_the_live_job_instead_of_submitting_again():
    runner = ScriptedRunner().on("squeue", row("55", "RUNNING", "i1")).on("sbatch", "77\n")
    handle = await scripted(runner).submit(spec())
    assert handle["job_id"] == "55" and runner.called("sbatch") == []


async def test_submit_ignores_another_hubs_job_of_the_same_name():
    runner = ScriptedRunner().on("squeue", row("55", "RUNNING", "i1", hub="other")).on("sbatch", "77\n")
    assert (await scripted(runner).submit(spec()))["job_id"] == "77"


async def test_submit_errors_say_what_slurm_said():
    runner = ScriptedRunner().on("squeue", "").on(
        "sbatch", (1, "", "sbatch: error: Batch job submission failed: Invalid account or account/partition\n"))
    with pytest.raises(BackendError, match="sbatch refused the job: .*Invalid account"):
        await scripted(runner).submit(spec())
    with pytest.raises(BackendError, match="unreachable"):
        await scripted(ScriptedRunner().on("squeue", UNREACHABLE)).submit(spec())


async def test_refusals_come_before_submit():
    backend = scripted(ScriptedRunner())
    assert "size" in backend.unsupported(spec(gpus=1))
    assert Capability.GPUS not in backend.capabilities
    gpu = scripted(ScriptedRunner(), max_gpus=2)
    assert gpu.unsupported(spec(gpus=2)) == {} and "size" in gpu.unsupported(spec(gpus=3))
    bad = spec(options={"slurm": {"sbatch": ["--uid=0"]}})
    assert "slurm.sbatch" in backend.unsupported(bad)
    with pytest.raises(BackendError, match="set by LabHub"):
        await backend.submit(bad)


async def test_a_job_runs_in_its_own_directory_and_never_calls_home():
    runner = ScriptedRunner().on("squeue", "").on("sbatch", "78\n")
    backend = scripted(runner, workdir="/scratch/{user}")  # the site's workdir is for workspaces
    handle = await backend.submit(job_spec())
    assert handle == {"instance_id": "j1", "job_id": "78", "hub_id": "labhub", "user": None, "kind": "job",
                      "output": "/srv/labhub/slurm/j1/slurm-78.out", "workdir": "/srv/labhub/jobs/j1"}
    (_, script), = [(a, s) for a, s in runner.calls if a[0] == "sbatch"]
    assert "#SBATCH --chdir=/srv/labhub/jobs/j1" in script and "#SBATCH --no-requeue" in script
    assert "callhome" not in script and "http" not in script.split("exec ", 1)[1]
    assert [a[-1] for a in runner.called("mkdir")] == ["/srv/labhub/jobs/j1", "/srv/labhub/slurm/j1"]
    assert "dirs" in backend.unsupported(job_spec(dirs=("../escape",)))
    assert backend.unsupported(job_spec(command=["prog", "{port}"])) == {}  # stays as it is: no value


async def test_a_job_is_running_without_a_url_then_ends_with_its_exit_code():
    clock = Clock()
    states = [row("9", "PENDING", "j", reason="Priority"), row("9", "RUNNING", "j"), row("9", "COMPLETING", "j"),
              row("9", "FAILED", "j", reason="NonZeroExitCode")]

    def squeue(argv: list[str]) -> str:
        return "" if "--states=PENDING" in argv else states.pop(0)  # (the queue-position query: empty)

    runner = (ScriptedRunner().on("squeue", squeue)
              .on("scontrol", "JobId=9 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0\n"))
    backend = scripted(runner, clock=clock, accounting="no")
    handle = {"instance_id": "j", "job_id": "9", "kind": "job"}
    seen = []
    for _ in range(4):
        seen.append(await backend.observe("j", handle))
        clock.now += 1
    assert [o.phase for o in seen] == [Phase.PENDING, Phase.RUNNING, Phase.RUNNING, Phase.FAILED]
    assert seen[1].url is None and seen[1].message == "job 9 running on node1"
    assert seen[3].exit_code == 1 and seen[3].message == "exited with code 1 (Slurm job 9 FAILED)"
    done = scripted(ScriptedRunner().on("squeue", row("10", "COMPLETED", "k"))
                    .on("scontrol", "JobId=10 JobState=COMPLETED Reason=None ExitCode=0:0\n"), accounting="no")
    obs = await done.observe("k", {"instance_id": "k", "job_id": "10", "kind": "job"})
    assert obs.phase == Phase.SUCCEEDED and obs.exit_code == 0


@pytest.mark.parametrize(("sacct", "reason", "code", "words"), [
    ("21|OUT_OF_MEMORY|0:125|OutOfMemory|n1", "OOM", 253, "ran out of memory"),
    ("21|TIMEOUT|0:15|TimeLimit|n1", "TIMEOUT", 143, "time limit"),
    ("21|CANCELLED by 0|0:15|None|n1", "CANCELLED", 143, "cancelled outside LabHub"),
    ("21|FAILED|2:0|NonZeroExitCode|n1", None, 2, "exited with code 2"),
])
async def test_a_finished_job_slurm_forgot_ends_as_accounting_says(sacct: str, reason: str | None, code: int,
                                                                  words: str):
    runner = ScriptedRunner().on("squeue", (1, "", "slurm_load_jobs error: Invalid job id specified\n"))
    backend = scripted(runner.on("sacct", sacct + "\n"), accounting="yes")
    obs = await backend.observe("j", {"instance_id": "j", "job_id": "21", "kind": "job"})
    assert obs.phase == Phase.FAILED and obs.reason == reason and obs.exit_code == code and words in obs.message


async def test_one_squeue_serves_all_observations_within_the_poll_interval():
    clock = Clock()
    squeue = row("1", "RUNNING", "a") + row("2", "PENDING", "b", reason="Resources")
    runner = ScriptedRunner().on("squeue", squeue)
    backend = scripted(runner, clock=clock, poll_interval=1.0)
    handles = {"a": {"instance_id": "a", "job_id": "1"}, "b": {"instance_id": "b", "job_id": "2"}}
    observed = await backend.observe_many(handles)
    assert observed["a"].phase == Phase.STARTING  # running, but it has not called home yet
    assert observed["b"].phase == Phase.PENDING and "Resources" in observed["b"].message
    main = [a for a in runner.called("squeue") if "--states=all" in a]
    assert len(main) == 1 and "--jobs=1,2" in main[0]
    await backend.observe("a", handles["a"])
    await backend.observe("b", handles["b"])
    assert len([a for a in runner.called("squeue") if "--states=all" in a]) == 1  # shared
    clock.now += 1.5
    await backend.observe("a", handles["a"])
    latest = [a for a in runner.called("squeue") if "--states=all" in a]
    assert len(latest) == 2 and "--jobs=1,2" in latest[-1]  # still asks for b: asked about recently


async def test_call_home_makes_it_running_and_survives_a_new_backend_object():
    runner = ScriptedRunner().on("squeue", row("5", "RUNNING", "a"))
    backend = scripted(runner)
    handle = {"instance_id": "a", "job_id": "5"}
    stored = backend.called_home("a", handle, {"host": "10.1.2.3", "port": 8888, "job_id": "5"})
    assert stored["url"] == "http://10.1.2.3:8888"
    obs = await backend.observe("a", handle)  # the hub's start watcher still holds the old handle
    assert obs.phase == Phase.RUNNING and obs.url == "http://10.1.2.3:8888"
    restarted = scripted(runner)
    assert (await restarted.observe("a", stored)).url == "http://10.1.2.3:8888"
    assert (await restarted.observe("a", handle)).phase == Phase.STARTING
    assert backend.called_home("a", handle, {"host": "fd00::7", "port": 1, "job_id": "5"})["url"] == \
           "http://[fd00::7]:1"
    for bad in ({"host": "evil host"}, {"host": "node1.example"}, {"job_id": "6"}, {"job_id": ""},
                {"port": 0}, {"port": "80"}, {"port": True}):
        with pytest.raises(BackendError):
            backend.called_home("a", handle, {"host": "10.1.2.3", "port": 8888, "job_id": "5", **bad})


async def test_call_home_addresses_are_checked_against_the_node_networks():
    handle = {"instance_id": "a", "job_id": "5"}
    report = {"port": 8888, "job_id": "5"}
    fenced = scripted(ScriptedRunner(), node_networks=["10.20.0.0/16"])
    assert fenced.called_home("a", handle, {**report, "host": "10.20.3.4"})["url"] == "http://10.20.3.4:8888"
    with pytest.raises(BackendError, match="node_networks"):
        fenced.called_home("a", handle, {**report, "host": "10.21.3.4"})
    remote = SlurmBackend(runner=ScriptedRunner(), hub_url="http://hub", state_dir=Path("/srv"), run_as="service")
    for host in ("127.0.0.1", "::1", "0.0.0.0", "169.254.1.1"):  # the hub's own machine, over SSH: no
        with pytest.raises(BackendError, match="cannot be a compute node"):
            remote.called_home("a", handle, {**report, "host": host})
    local = SlurmBackend(runner=LocalRunner(), hub_url="http://hub", state_dir=Path("/srv"), run_as="service")
    assert local.called_home("a", handle, {**report, "host": "127.0.0.1"})["url"]  # a single-machine cluster


async def test_unreachable_controller_makes_every_handle_unknown():
    backend = scripted(ScriptedRunner().on("squeue", UNREACHABLE).on("scancel", UNREACHABLE))
    handles = {"a": {"instance_id": "a", "job_id": "1"}, "b": {"instance_id": "b", "job_id": "2"}}
    observed = await backend.observe_many(handles)
    assert {o.phase for o in observed.values()} == {Phase.UNKNOWN}
    assert "connect failure" in observed["a"].message
    assert await backend.terminate(handles["a"]) is False
    with pytest.raises(BackendError):
        await backend.list_owned()


async def test_ended_jobs_get_exit_codes_from_scontrol_without_accounting():
    runner = (ScriptedRunner().on("squeue", row("9", "FAILED", "a", reason="NonZeroExitCode"))
              .on("sacct", (1, "", "sacct: error: Slurm accounting storage is disabled\n"))
              .on("scontrol", "JobId=9 JobName=labhub-a JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0\n"))
    backend = scripted(runner)
    obs = await backend.observe("a", {"instance_id": "a", "job_id": "9"})
    assert obs.phase == Phase.FAILED and obs.exit_code == 3
    await backend.observe("a", {"instance_id": "a", "job_id": "9"})
    assert len(runner.called("scontrol")) == 1 and len(runner.called("sacct")) == 1  # both remembered


async def test_jobs_slurm_forgot_come_from_sacct_when_accounting_exists():
    runner = (ScriptedRunner().on("squeue", (1, "", "slurm_load_jobs error: Invalid job id specified\n"))
              .on("sacct", "", "12|TIMEOUT|0:0|TimeLimit|node3\n"))
    backend = scripted(runner, accounting="auto")
    obs = await backend.observe("a", {"instance_id": "a", "job_id": "12"})
    assert obs.phase == Phase.FAILED and obs.reason == "TIMEOUT" and "time limit" in obs.message
    gone = await scripted(ScriptedRunner().on("squeue", (1, "", "Invalid job id specified")),
                          accounting="no").observe("a", {"instance_id": "a", "job_id": "12"})
    assert gone.phase == Phase.GONE


async def test_list_owned_reads_name_and_comment():
    squeue = row("1", "RUNNING", "a") + row("2", "PENDING", "b") + row("3", "RUNNING", "c", hub="other")
    squeue += "4|RUNNING|None|N/A|n|bob|debug|labhub-d|somebody else\n"
    squeue += "5|RUNNING|None|N/A|node1|svc|debug|labhub-e|labhub:labhub:e:job\n"
    backend = scripted(ScriptedRunner().on("squeue", squeue))
    owned = await backend.list_owned()
    assert [(h["instance_id"], h["job_id"]) for h in owned] == [("a", "1"), ("b", "2"), ("e", "5")]
    adopted = await backend.find("e")  # a replica died before recording it: the job is adopted as a job
    assert adopted is not None and adopted["kind"] == "job" and "kind" not in owned[0]
    assert (await backend.observe("e", adopted)).phase == Phase.RUNNING


async def test_logs_only_read_our_own_output_files():
    """Over SSH the file is read with ``stat`` (size and type, not following links) and ``dd``."""
    runner = ScriptedRunner().on("stat", "8 81a4\n").on("env", (0, "one\ntwo\n", "8 bytes copied, 0 s, 1 MB/s\n"))
    backend = scripted(runner)
    good = {"instance_id": "a", "job_id": "1", "output": "/srv/labhub/slurm/a/slurm-1.out"}
    assert [line async for line in backend.logs(good, tail=2)] == ["one", "two"]
    for output in ("/etc/shadow", "/srv/labhub/slurm/a/../../../etc/shadow", "relative/a/slurm-1.out"):
        assert [line async for line in backend.logs({**good, "output": output})] == []
        assert await backend.read_log({**good, "output": output}, 0) == (b"", 0)
    assert runner.called("stat") == [["stat", "-c", "%s %f", "--", "/srv/labhub/slurm/a/slurm-1.out"]]
    assert runner.called("env") == [["env", "LC_ALL=C", "dd", "if=/srv/labhub/slurm/a/slurm-1.out",
                                     "iflag=nofollow,nonblock,skip_bytes,count_bytes", "skip=0", "count=8",
                                     "bs=65536"]]


async def test_a_log_without_newlines_comes_back_bounded():
    """A job's 1 MiB line: the hub reads only the end of it, and says it cut it."""
    window = 256 * 1024 + 1
    runner = ScriptedRunner().on("stat", f"{1 << 20} 81a4\n").on("env", (0, "x" * window, f"{window} bytes\n"))
    backend = scripted(runner)
    good = {"instance_id": "a", "job_id": "1", "output": "/srv/labhub/slurm/a/slurm-1.out"}
    lines = [line async for line in backend.logs(good, tail=50)]
    assert len(lines) == 1 and lines[0].startswith("[… cut] ") and len(lines[0]) <= 16 * 1024 + 10
    assert runner.called("env")[0][5:7] == [f"skip={(1 << 20) - window}", f"count={window}"]


async def test_read_log_over_ssh_offsets_and_refusals():
    good = {"instance_id": "a", "job_id": "1", "output": "/srv/labhub/slurm/a/slurm-1.out"}

    def dd(argv: list[str]) -> tuple[int, str, str]:
        skip, count = (int(a.split("=")[1]) for a in argv[5:7])
        data = "0123456789"[skip:skip + count]
        return 0, data, f"{len(data)} bytes copied\n"

    runner = ScriptedRunner().on("stat", "10 81a4\n").on("env", dd)
    backend = scripted(runner)
    assert await backend.read_log(good, 0) == (b"0123456789", 10)
    assert await backend.read_log(good, 3, limit=4) == (b"3456", 7)
    assert await backend.read_log(good, -4) == (b"6789", 10)
    assert await backend.read_log(good, -40) == (b"0123456789", 10)
    assert await backend.read_log(good, 10) == (b"", 10) and await backend.read_log(good, 99) == (b"", 10)
    calls = len(runner.called("env"))
    for answer in ("10 a1ff\n", "0 11b6\n", (1, "", "stat: cannot statx: No such file or directory\n"), "junk"):
        runner.on("stat", answer)  # a link, a FIFO, nothing, nonsense: nothing read, no dd at all
        assert await backend.read_log(good, 0) == (b"", 0)
    assert len(runner.called("env")) == calls
    runner.on("stat", "10 81a4\n").on("env", (0, "\ufffd", "1 bytes copied\n"))  # not UTF-8: the offset stays exact
    assert await backend.read_log(good, 4) == ("\ufffd".encode(), 5)


class RunsHere(CommandRunner):
    """A runner that is not the LocalRunner but runs commands on this machine: the SSH code path, for real."""

    def __init__(self) -> None:
        self.local = LocalRunner()

    async def run(self, argv, *, stdin=None, limit_s=30.0):  # noqa: ANN001, ANN201
        return await self.local.run(argv, stdin=stdin, limit_s=limit_s)


@pytest.mark.parametrize("where", ["here", "login node"])
async def test_read_log_for_real_never_through_a_link_or_a_fifo(where: str, tmp_path: Path):
    backend = SlurmBackend(runner=LocalRunner() if where == "here" else RunsHere(), hub_url="http://hub",
                           state_dir=tmp_path, run_as="service")
    out = tmp_path / "a" / "slurm-1.out"
    out.parent.mkdir()
    data = "line one\nzwei: ü ✓\nthree".encode()
    out.write_bytes(data)
    handle = {"instance_id": "a", "job_id": "1", "output": str(out)}
    assert await backend.read_log(handle, 0) == (data, len(data))
    assert await backend.read_log(handle, 9, limit=6) == (data[9:15], 15)
    assert await backend.read_log(handle, -5) == (data[-5:], len(data))
    assert await backend.read_log(handle, len(data) + 7) == (b"", len(data))
    assert [line async for line in backend.logs(handle, tail=2)] == ["zwei: ü ✓", "three"]
    out.write_bytes(b"\xff\xfeok\n")
    chunk, offset = await backend.read_log(handle, 0)
    assert offset == 5 and chunk.endswith(b"ok\n")  # not UTF-8: exact offsets wherever it is read
    secret = tmp_path / "secret"
    secret.write_text("the hub's secret\n")
    out.unlink()
    out.symlink_to(secret)  # the job's account owns the directory: it may plant a link
    assert await backend.read_log(handle, 0) == (b"", 0)
    assert [line async for line in backend.logs(handle)] == []
    out.unlink()
    os.mkfifo(out)  # or a FIFO, to hang the reader
    async with asyncio.timeout(10):
        assert await backend.read_log(handle, 0) == (b"", 0)
        assert [line async for line in backend.logs(handle)] == []
    out.unlink()
    assert await backend.read_log(handle, 3) == (b"", 3)  # missing: nothing yet


async def test_describe_isolation_says_who_runs_the_jobs():
    assert "hub's service account" in scripted(ScriptedRunner()).describe_isolation()
    assert "same name" in scripted(ScriptedRunner(), run_as="owner").describe_isolation()
    with pytest.raises(ValueError, match="root"):
        scripted(ScriptedRunner(), run_as="accounts")  # a scripted runner is not the local one


def test_settings_alone_build_the_backend(tmp_path: Path, monkeypatch):
    from labhub.backends import registry
    from labhub.backends.commands import SSHRunner
    from labhub.settings import Settings

    monkeypatch.setenv("LABHUB_SLURM__PARTITION", "gpu")
    monkeypatch.setenv("LABHUB_SLURM__SSH_HOST", "login.cluster.example")
    monkeypatch.setenv("LABHUB_SLURM__SSH_USER", "labhub")
    monkeypatch.setenv("LABHUB_SLURM__MAX_GPUS", "4")
    settings = Settings(data_dir=tmp_path, backends=["local", "slurm"], public_url="https://hub.example.org")
    backends = registry.create(settings.backends, data_dir=settings.data_dir, isolation="none", settings=settings)
    slurm = backends["slurm"]
    assert isinstance(slurm, SlurmBackend) and isinstance(slurm.runner, SSHRunner)
    assert slurm.cluster.partition == "gpu" and slurm.hub_url == "https://hub.example.org"
    assert slurm.run_as == "service" and Capability.GPUS in slurm.capabilities
    assert "labhub@login.cluster.example over SSH" in slurm.describe_isolation()


# -- on the real cluster ----------------------------------------------------------------------------


@pytest.fixture
async def real(slurm_cluster, callhome: CallHomeReceiver, shared_dir: Path, account_cleanup):
    env = {"SLURM_CONF": str(slurm_cluster.conf), "PATH": f"{os.path.dirname(system_python())}:/usr/bin:/bin"}
    backend = SlurmBackend(runner=LocalRunner(env), hub_url=callhome.url, state_dir=shared_dir,
                           hub_id="b-" + secrets.token_hex(3), max_gpus=slurm_cluster.gpus, poll_interval=0.1,
                           kill_wait=20)
    callhome.backend = backend
    owner = account_cleanup("s" + secrets.token_hex(3))
    yield backend, callhome, owner, str(shared_dir / "home")
    for handle in await backend.list_owned():
        await backend.terminate(handle, grace=0)
    await backend.close()


async def wait_for(backend: SlurmBackend, iid: str, handle: dict, phases: set[Phase], within: float = 30):
    deadline = time.monotonic() + within
    while (obs := await backend.observe(iid, handle)).phase not in phases:
        assert time.monotonic() < deadline, obs
        await asyncio.sleep(0.05)
    return obs


@pytest.mark.slurm
async def test_pending_jobs_show_reason_and_queue_position(real, slurm_cluster):
    backend, callhome, owner, home = real
    blocker = slurm_cluster.run("sbatch", "--parsable", f"--cpus-per-task={slurm_cluster.cpus}", "-o", "/dev/null",
                                input="#!/bin/bash\nsleep 60\n").stdout.strip()
    try:
        for _ in range(600):
            if slurm_cluster.squeue_state(blocker) == "RUNNING":
                break
            await asyncio.sleep(0.05)
        s = spec("p" + secrets.token_hex(6), owner=owner, command=[system_python(), "-c", "pass"], home=home)
        handle = await backend.submit(s)
        obs = await wait_for(backend, s.instance_id, handle, {Phase.PENDING})
        for _ in range(50):  # the scheduler names the reason on its first pass over the job
            if "Resources" in obs.message:
                break
            await asyncio.sleep(0.1)
            obs = await backend.observe(s.instance_id, handle)
        assert obs.reason == "Resources" and "waiting for resources" in obs.message, obs
        assert "position 1 of 1 in partition debug" in obs.message
    finally:
        slurm_cluster.run("scancel", blocker, check=False)


@pytest.mark.slurm
async def test_jobs_run_as_the_owners_account_with_the_requested_limits(real, slurm_cluster):
    backend, callhome, owner, home = real
    show = "import os; print('ID', os.getuid(), os.environ['SLURM_CPUS_PER_TASK'], os.environ['SLURM_MEM_PER_NODE'])"
    s = spec("u" + secrets.token_hex(6), owner=owner, command=[system_python(), "-c", show], home=home)
    callhome.tokens[s.instance_id] = s.token
    handle = await backend.submit(s)
    callhome.handles[s.instance_id] = handle
    obs = await wait_for(backend, s.instance_id, handle, {Phase.SUCCEEDED, Phase.FAILED})
    assert obs.phase == Phase.SUCCEEDED, (obs, [line async for line in backend.logs(handle)])
    out = " ".join([line async for line in backend.logs(handle)])
    fields = out.split("ID ", 1)[1].split()
    if IS_ROOT:
        assert handle["user"] == "labhub-" + owner
        assert int(fields[0]) == pwd.getpwnam("labhub-" + owner).pw_uid
    else:
        assert int(fields[0]) == os.geteuid()
    assert fields[1:3] == ["1", "512"]
    limit = slurm_cluster.run("squeue", "-h", "-j", handle["job_id"], "--states=all", "-o", "%l").stdout.strip()
    assert limit == "1:02:00"  # the duration plus two minutes' slack: the hub stops it first


@pytest.mark.slurm
async def test_hostile_arguments_reach_the_program_unchanged(real, slurm_cluster):
    backend, callhome, owner, home = real
    hostile = [f"'; touch {home}/pwned #", "$(id)", "`id`", "a b\nc", '"\\', "{port}"]
    show = "import json, sys; print('ARGV', json.dumps(sys.argv[1:]))"
    s = spec("h" + secrets.token_hex(6), owner=owner, command=[system_python(), "-c", show, *hostile], home=home)
    callhome.tokens[s.instance_id] = s.token
    handle = await backend.submit(s)
    callhome.handles[s.instance_id] = handle
    await wait_for(backend, s.instance_id, handle, {Phase.SUCCEEDED, Phase.FAILED})
    import json

    out = "\n".join([line async for line in backend.logs(handle)])
    argv = json.loads(out.split("ARGV ", 1)[1])
    port = callhome.reports[-1][1]["port"]
    assert argv == [*hostile[:-1], str(port)]
    assert not await asyncio.to_thread(os.path.exists, f"{home}/pwned")
