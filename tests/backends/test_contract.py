"""The backend contract (DESIGN.md, ``backends/base.py``), one suite for every backend.

Each test runs against the fault-injecting fake (plain and slow), the local
backend (real processes) and the Slurm backend on a real single-node cluster.
A *kit* adapts a backend to the suite: it builds specs for a few behaviours
(serve HTTP, print lines, exit with a code, never become ready), knows what an
unknown handle looks like, and, where the engine allows, makes it unreachable.
Kits drive real backends only through their public methods.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from labhub.backends.base import Backend, BackendError, Capability, Handle, LaunchSpec, Observation, Phase, Resources
from labhub.backends.commands import LocalRunner
from labhub.backends.fake import FakeBackend
from labhub.backends.local import LocalBackend
from labhub.backends.slurm import SlurmBackend
from tests.backends.conftest import CallHomeReceiver, system_python

ALIVE = {Phase.PENDING, Phase.STARTING, Phase.RUNNING}
ENDED = {Phase.SUCCEEDED, Phase.FAILED, Phase.GONE}
PROGRAM = """\
import http.server, os, sys, time
for i in range(int(os.environ.get("LINES_OUT", "0"))):
    print("line %d" % (i + 1))
print("CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "-"), flush=True)
if "EXIT" in os.environ:
    sys.exit(int(os.environ["EXIT"]))
if "NEVER" in os.environ:
    time.sleep(3600)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"contract ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[2], int(sys.argv[1])), H).serve_forever()
"""


class Kit:
    """A backend under the contract, plus what the suite needs to know about it."""

    name = ""
    real = True  # runs real processes that answer HTTP and write logs
    fail_code = 3  # exit code a failing instance reports

    def __init__(self, backend: Backend, owner: str) -> None:
        self.backend = backend
        self.owner = owner
        self.handles: dict[str, Handle] = {}
        self.behaviour: dict[str, str] = {}

    def spec(self, behaviour: str = "serve", *, gpus: int = 0, lines: int = 0, iid: str | None = None) -> LaunchSpec:
        iid = iid or "c" + secrets.token_hex(8)
        env = {"LABHUB_TOKEN": "tok-" + iid, "LINES_OUT": str(lines)}
        if behaviour == "exit0":
            env["EXIT"] = "0"
        elif behaviour == "fail":
            env["EXIT"] = str(self.fail_code)
        elif behaviour == "never":
            env["NEVER"] = "1"
        self.behaviour[iid] = behaviour
        return LaunchSpec(instance_id=iid, owner=self.owner, name="c", kind="workspace",
                          command=[system_python(), "-c", PROGRAM, "{port}", "{ip}"], env=env,
                          resources=Resources(cpus=1, memory_mb=200, gpus=gpus), base_url=f"/user/{self.owner}/c/",
                          token="tok-" + iid, time_limit_s=600, options=self.options(behaviour))

    def options(self, behaviour: str) -> dict[str, Any]:
        return {}

    def unknown_handle(self, iid: str) -> Handle:
        raise NotImplementedError

    async def submit(self, spec: LaunchSpec) -> Handle:
        handle = await self.backend.submit(spec)
        self.handles[spec.instance_id] = handle
        return handle

    async def observe(self, iid: str) -> Observation:
        return await self.backend.observe(iid, self.handles[iid])

    async def until(self, iid: str, phases: set[Phase], within: float = 30) -> Observation:
        deadline = time.monotonic() + within
        while True:
            obs = await self.observe(iid)
            if obs.phase in phases:
                return obs
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {iid} is {obs}, not {phases}")
            await asyncio.sleep(0.05)

    async def until_url(self, iid: str, within: float = 30) -> Observation:
        """RUNNING with a URL (a backend gives the URL only once the listener is proven the instance's), or ended."""
        deadline = time.monotonic() + within
        while True:
            obs = await self.observe(iid)
            if (obs.phase == Phase.RUNNING and obs.url) or obs.phase in ENDED:
                return obs
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {iid} is {obs}, not running with a URL")
            await asyncio.sleep(0.05)

    async def unreachable(self) -> Backend | None:
        """The same engine seen through a connection that cannot reach it (None: cannot be done)."""
        return None

    async def foreign(self) -> Callable[[], None] | None:
        """Start something on the engine that this backend did not create; return its clean-up."""
        return None

    def other_hub(self) -> Backend | None:
        """A second backend of the same kind for another hub, on the same engine."""
        return None

    async def cleanup(self) -> None:
        for handle in list(self.handles.values()):
            await self.backend.terminate(handle, grace=0.2)
        await self.backend.close()


class FakeKit(Kit):
    real = False
    fail_code = 1

    def __init__(self, owner: str, url: str, *, mode: str = "ok") -> None:
        super().__init__(FakeBackend(url=url, mode=mode, delay=0.05), owner)
        self.name = f"fake-{mode}"

    def options(self, behaviour: str) -> dict[str, Any]:
        return {"fake_mode": {"fail": "fail", "never": "never"}.get(behaviour, self.backend.mode)}  # type: ignore[attr-defined]

    def unknown_handle(self, iid: str) -> Handle:
        return {"instance_id": iid, "fake": True}

    async def submit(self, spec: LaunchSpec) -> Handle:
        handle = await super().submit(spec)
        job = self.backend.jobs[spec.instance_id]  # type: ignore[attr-defined]
        lines = int(spec.env.get("LINES_OUT", "0"))
        if lines and len(job.log) == 1:  # the fake prints what the program would
            job.log.extend(f"line {i + 1}" for i in range(lines))
        return handle

    async def observe(self, iid: str) -> Observation:
        obs = await super().observe(iid)
        if obs.phase == Phase.RUNNING and self.behaviour.get(iid) == "exit0":
            self.backend.finish(iid, 0)  # type: ignore[attr-defined]
        return obs

    async def unreachable(self) -> Backend | None:
        twin = FakeBackend()
        twin.jobs = self.backend.jobs  # type: ignore[attr-defined]
        twin.unreachable = True
        return twin

    def other_hub(self) -> Backend | None:
        return FakeBackend()


class LocalKit(Kit):
    name = "local"

    def __init__(self, owner: str, state_dir: Path) -> None:
        self.state_dir = state_dir
        super().__init__(LocalBackend(state_dir=state_dir, hub_id="c-" + secrets.token_hex(3)), owner)

    def unknown_handle(self, iid: str) -> Handle:
        return {"instance_id": iid, "pid": 4_194_000, "start_ticks": 1}

    async def foreign(self) -> Callable[[], None] | None:
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)  # noqa: ASYNC220 - returns at once
        return lambda: (proc.kill(), proc.wait())  # type: ignore[func-returns-value]

    def other_hub(self) -> Backend | None:
        return LocalBackend(state_dir=self.state_dir, hub_id="other-" + secrets.token_hex(3))


class SlurmKit(Kit):
    name = "slurm"

    def __init__(self, owner: str, cluster: Any, callhome: CallHomeReceiver, state_dir: Path) -> None:
        self.cluster = cluster
        self.callhome = callhome
        self.state_dir = state_dir
        super().__init__(self.make(cluster.conf), owner)
        callhome.backend = self.backend

    def make(self, conf: Path, hub_id: str | None = None) -> SlurmBackend:
        env = {"SLURM_CONF": str(conf), "PATH": f"{os.path.dirname(system_python())}:/usr/bin:/bin"}
        return SlurmBackend(runner=LocalRunner(env), hub_url=self.callhome.url, state_dir=self.state_dir,
                            hub_id=hub_id or "c-" + secrets.token_hex(3), max_gpus=self.cluster.gpus,
                            poll_interval=0.1, kill_wait=20)

    def options(self, behaviour: str) -> dict[str, Any]:
        # A job that never starts: Slurm holds it until its begin time.
        return {"slurm": {"sbatch": ["--begin=now+3600"]}} if behaviour == "never" else {}

    def spec(self, behaviour: str = "serve", **kwargs: Any) -> LaunchSpec:
        spec = super().spec(behaviour, **kwargs)
        self.callhome.tokens[spec.instance_id] = spec.token
        return spec

    async def submit(self, spec: LaunchSpec) -> Handle:
        handle = await super().submit(spec)
        known = self.callhome.handles.get(spec.instance_id)
        if known is None or known.get("job_id") != handle.get("job_id"):
            self.callhome.handles[spec.instance_id] = handle
        return handle

    def unknown_handle(self, iid: str) -> Handle:
        return {"instance_id": iid, "job_id": "9999999"}

    async def unreachable(self) -> Backend | None:
        conf = self.state_dir / "unreachable.conf"
        text = self.cluster.conf.read_text().replace(f"SlurmctldPort={self.cluster.ctld_port}",
                                                     f"SlurmctldPort={_closed_port()}")
        conf.write_text(text)
        return self.make(conf, hub_id=self.backend.hub_id)  # type: ignore[attr-defined]

    async def foreign(self) -> Callable[[], None] | None:
        job = self.cluster.run("sbatch", "--parsable", "--job-name=labhub-notours", "-o", "/dev/null",
                               input="#!/bin/bash\nsleep 60\n").stdout.strip()
        return lambda: self.cluster.run("scancel", job, check=False)

    def other_hub(self) -> Backend | None:
        return self.make(self.cluster.conf)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture(params=["fake-ok", "fake-slow", "local", pytest.param("slurm", marks=pytest.mark.slurm)])
async def kit(request: pytest.FixtureRequest, echo_upstream, shared_dir: Path, account_cleanup,
              ) -> AsyncIterator[Kit]:
    owner = account_cleanup("c" + secrets.token_hex(3))
    if request.param.startswith("fake"):
        made: Kit = FakeKit(owner, echo_upstream.url, mode=request.param.removeprefix("fake-"))
    elif request.param == "local":
        made = LocalKit(owner, shared_dir / "state")
    else:
        cluster = request.getfixturevalue("slurm_cluster")
        receiver = CallHomeReceiver()
        await receiver.start()
        made = SlurmKit(owner, cluster, receiver, shared_dir)
    try:
        yield made
    finally:
        await made.cleanup()
        if isinstance(made, SlurmKit):
            await made.callhome.close()


# -- the contract --------------------------------------------------------------------------------


async def test_submit_is_idempotent_by_instance_id(kit: Kit):
    spec = kit.spec()
    first = await kit.submit(spec)
    second = await kit.backend.submit(spec)
    assert {k: second.get(k) for k in ("instance_id", "pid", "job_id")} == \
           {k: first.get(k) for k in ("instance_id", "pid", "job_id")}
    owned = [h for h in await kit.backend.list_owned() if h["instance_id"] == spec.instance_id]
    assert len(owned) == 1, owned


async def test_running_instance_reports_a_reachable_url(kit: Kit):
    spec = kit.spec()
    await kit.submit(spec)
    obs = await kit.until_url(spec.instance_id)
    assert obs.phase == Phase.RUNNING and obs.url and obs.url.startswith("http://"), obs
    if kit.real:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                try:
                    resp = await http.get(obs.url + "/")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            assert resp.text == "contract ok"


async def test_observe_reports_every_handle_and_unknown_ones_are_gone(kit: Kit):
    spec = kit.spec()
    handle = await kit.submit(spec)
    observed = await kit.backend.observe_many({spec.instance_id: handle, "nope": kit.unknown_handle("nope"),
                                               "empty": {}})
    assert set(observed) == {spec.instance_id, "nope", "empty"}
    assert observed["nope"].phase == Phase.GONE and observed["empty"].phase == Phase.GONE
    assert observed[spec.instance_id].phase in ALIVE


async def test_terminate_is_idempotent_and_returns_once_gone(kit: Kit):
    spec = kit.spec()
    handle = await kit.submit(spec)
    await kit.until(spec.instance_id, {Phase.RUNNING})
    assert await kit.backend.terminate(handle, grace=1.0) is True
    assert (await kit.backend.observe(spec.instance_id, handle)).phase in ENDED
    assert spec.instance_id not in {h["instance_id"] for h in await kit.backend.list_owned()}
    assert await kit.backend.terminate(handle, grace=1.0) is True  # again: nothing left, still True
    assert await kit.backend.terminate(kit.unknown_handle("nope"), grace=0) is True


async def test_resubmit_after_terminate_starts_anew(kit: Kit):
    spec = kit.spec()
    first = await kit.submit(spec)
    await kit.until(spec.instance_id, {Phase.RUNNING})
    assert await kit.backend.terminate(first, grace=0.5)
    second = await kit.submit(spec)
    assert await kit.until(spec.instance_id, {Phase.RUNNING})
    if kit.real:
        assert (second.get("pid"), second.get("job_id")) != (first.get("pid"), first.get("job_id"))


async def test_list_owned_finds_everything_it_created_and_nothing_else(kit: Kit):
    specs = [kit.spec(), kit.spec("never")]
    for spec in specs:
        await kit.submit(spec)
    other = kit.other_hub()
    other_spec = kit.spec()
    undo = await kit.foreign()
    try:
        if other is not None:
            other_handle = await other.submit(other_spec)
        owned = await kit.backend.list_owned()
        assert {h["instance_id"] for h in owned} == {s.instance_id for s in specs}
        assert all(isinstance(h, dict) for h in owned)
        for handle in owned:  # what list_owned returns is enough to terminate
            assert await kit.backend.terminate(handle, grace=0.2)
        assert await kit.backend.list_owned() == []
    finally:
        if other is not None:
            await other.terminate(other_handle, grace=0.2)
            await other.close()
        if undo is not None:
            undo()


async def test_logs_are_the_tail_of_the_output_oldest_first(kit: Kit):
    if Capability.LOGS not in kit.backend.capabilities:
        pytest.skip("no logs capability")
    spec = kit.spec(lines=30)
    handle = await kit.submit(spec)
    await kit.until(spec.instance_id, {Phase.RUNNING})
    lines: list[str] = []
    for _ in range(100):
        lines = [line async for line in kit.backend.logs(handle, tail=5)]
        if "line 30" in lines or not kit.real:
            break
        await asyncio.sleep(0.05)
    assert len(lines) <= 5
    assert "line 30" in lines and "line 25" not in lines
    assert lines.index("line 29") < lines.index("line 30")
    assert [line async for line in kit.backend.logs(kit.unknown_handle("nope"), tail=5)] == []


async def test_exit_zero_succeeds(kit: Kit):
    spec = kit.spec("exit0")
    await kit.submit(spec)
    obs = await kit.until(spec.instance_id, ENDED)
    assert obs.phase == Phase.SUCCEEDED and obs.exit_code == 0, obs


async def test_failure_reports_exit_code_and_output(kit: Kit):
    spec = kit.spec("fail")
    handle = await kit.submit(spec)
    obs = await kit.until(spec.instance_id, ENDED)
    assert obs.phase == Phase.FAILED and obs.exit_code == kit.fail_code, obs
    assert str(kit.fail_code) in obs.message
    logs = [line async for line in kit.backend.logs(handle, tail=20)]
    assert logs, "a failed instance's output is kept for the events"


async def test_an_instance_that_never_becomes_ready_can_be_stopped(kit: Kit):
    spec = kit.spec("never")
    handle = await kit.submit(spec)
    obs = await kit.until(spec.instance_id, ALIVE)
    assert obs.phase in ALIVE
    assert await kit.backend.terminate(handle, grace=0.5) is True
    assert (await kit.backend.observe(spec.instance_id, handle)).phase in ENDED


async def test_unreachable_engine_is_unknown_never_gone_and_recovers(kit: Kit):
    spec = kit.spec()
    handle = await kit.submit(spec)
    running = await kit.until(spec.instance_id, {Phase.RUNNING})
    cut_off = await kit.unreachable()
    if cut_off is None:
        pytest.skip(f"the {kit.name} backend has no engine to lose")
    try:
        observed = await cut_off.observe_many({spec.instance_id: handle, "nope": kit.unknown_handle("nope")})
        assert {o.phase for o in observed.values()} == {Phase.UNKNOWN}, observed
        assert observed[spec.instance_id].message
        assert await cut_off.terminate(handle, grace=0) is False  # not confirmed, so not claimed
        with pytest.raises(BackendError):
            await cut_off.list_owned()
        with pytest.raises(BackendError):
            await cut_off.submit(kit.spec())
    finally:
        await cut_off.close()
    again = await kit.until(spec.instance_id, {Phase.RUNNING} | ENDED)
    assert again.phase == Phase.RUNNING and again.url == running.url  # the instance was never touched


async def test_gpu_requests_match_the_gpu_capability(kit: Kit):
    spec = kit.spec(gpus=1)
    refused = kit.backend.unsupported(spec)
    if Capability.GPUS not in kit.backend.capabilities:
        assert "size" in refused and "GPU" in refused["size"], refused
        return
    assert refused == {}
    handle = await kit.submit(spec)
    await kit.until(spec.instance_id, {Phase.RUNNING})
    seen = ""
    for _ in range(100):
        seen = " ".join([line async for line in kit.backend.logs(handle, tail=50)])
        if "CUDA_VISIBLE_DEVICES=" in seen:
            break
        await asyncio.sleep(0.05)
    devices = seen.split("CUDA_VISIBLE_DEVICES=", 1)[1].split()[0]
    assert len(devices.split(",")) == 1 and devices != "-", seen


async def test_call_home_is_accepted_only_with_the_capability(kit: Kit):
    spec = kit.spec("never")
    handle = await kit.submit(spec)
    report = {"host": "127.0.0.1", "port": 4242, "job_id": handle.get("job_id", "")}
    if Capability.CALL_HOME not in kit.backend.capabilities:
        with pytest.raises(BackendError):
            kit.backend.called_home(spec.instance_id, handle, report)
        return
    updated = kit.backend.called_home(spec.instance_id, handle, report)
    assert updated["url"] == "http://127.0.0.1:4242" and updated["instance_id"] == spec.instance_id
    with pytest.raises(BackendError):  # a report from another job is stale
        kit.backend.called_home(spec.instance_id, handle, {**report, "job_id": "1" + str(report["job_id"])})
    with pytest.raises(BackendError):
        kit.backend.called_home(spec.instance_id, handle, {**report, "port": 70000})


def test_every_builtin_backend_is_in_the_suite():
    """A new built-in backend must get a kit here."""
    from labhub.backends import registry

    assert set(registry.BUILTIN) == {"local", "slurm"}
