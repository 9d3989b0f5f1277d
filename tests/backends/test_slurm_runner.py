"""The command-runner seam: local subprocesses, and SSH to a login node.

The SSH tests run a real SSH server (asyncssh) that hands each command line
to ``/bin/sh -c``, as OpenSSH's sshd does, so quoting mistakes would show.
The last test drives the real Slurm cluster through it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
import pytest_asyncio

from labhub.backends.base import BackendUnavailable, LaunchSpec, Phase, Resources
from labhub.backends.commands import LocalRunner, SSHRunner
from labhub.backends.slurm import SlurmBackend
from tests.backends.conftest import CallHomeReceiver, system_python

HOSTILE = ["'; echo pwned #", "$(id)", "`id`", "a b\nc", '"\\', "*", "~", "", "ü ✓", "-n"]
SHOW = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ.get('SLURM_CONF'), sys.stdin.read()]))"


class ShellServer:
    """An SSH server on loopback that runs each command with ``/bin/sh -c`` (like sshd)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.key_file = root / "id_ed25519"
        self.client_key.write_private_key(str(self.key_file))
        (root / "authorized_keys").write_bytes(self.client_key.export_public_key())
        self.server: asyncssh.SSHAcceptor | None = None
        self.port = 0
        self.commands: list[str] = []

    async def start(self) -> None:
        self.server = await asyncssh.create_server(
            asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[self.host_key],
            authorized_client_keys=str(self.root / "authorized_keys"), process_factory=self._run)
        self.port = self.server.sockets[0].getsockname()[1]
        (self.root / "known_hosts").write_bytes(
            f"[127.0.0.1]:{self.port} ".encode() + self.host_key.export_public_key())

    async def _run(self, process: asyncssh.SSHServerProcess) -> None:
        self.commands.append(process.command)
        data = await process.stdin.read()
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", process.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(data.encode())
        process.stdout.write(out.decode())
        process.stderr.write(err.decode())
        process.exit(proc.returncode or 0)

    def runner(self, **kwargs) -> SSHRunner:
        kwargs.setdefault("known_hosts", self.root / "known_hosts")
        return SSHRunner("127.0.0.1", port=self.port, user="labhub", key=self.key_file, **kwargs)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest_asyncio.fixture
async def ssh_server(tmp_path: Path) -> AsyncIterator[ShellServer]:
    server = ShellServer(tmp_path)
    await server.start()
    yield server
    await server.close()


async def test_local_runner_passes_argv_and_stdin_exactly():
    runner = LocalRunner({"SLURM_CONF": "/etc/slurm conf"})
    result = await runner.run([sys.executable, "-c", SHOW, *HOSTILE], stdin="to stdin\n")
    assert result.ok, result.stderr
    assert json.loads(result.stdout) == [HOSTILE, "/etc/slurm conf", "to stdin\n"]
    assert (await runner.run(["sh", "-c", "echo err >&2; exit 7"])).returncode == 7
    with pytest.raises(BackendUnavailable, match="cannot run"):
        await runner.run(["/nonexistent/sbatch"])
    with pytest.raises(BackendUnavailable, match="did not answer"):
        await runner.run(["sleep", "5"], limit_s=0.1)


async def test_local_runner_does_not_pass_on_the_hubs_environment(monkeypatch):
    monkeypatch.setenv("LABHUB_SECRET_SOMETHING", "hub secret")
    result = await LocalRunner().run(["env"])
    assert "LABHUB_SECRET_SOMETHING" not in result.stdout


async def test_ssh_runner_arguments_survive_the_remote_shell(ssh_server: ShellServer):
    runner = ssh_server.runner(env={"SLURM_CONF": "/etc/slurm/it's.conf"})
    try:
        result = await runner.run([sys.executable, "-c", SHOW, *HOSTILE], stdin="to stdin\n")
        assert result.ok, result.stderr
        assert json.loads(result.stdout) == [HOSTILE, "/etc/slurm/it's.conf", "to stdin\n"]
        failed = await runner.run(["sh", "-c", "echo complaint >&2; exit 7"])
        assert failed.returncode == 7 and failed.error_text() == "complaint"
        assert len(ssh_server.commands) == 2  # one connection, reused
    finally:
        await runner.close()


async def test_ssh_runner_checks_host_keys_and_reports_unreachable_hosts(ssh_server: ShellServer, tmp_path: Path):
    other = asyncssh.generate_private_key("ssh-ed25519")
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_bytes(f"[127.0.0.1]:{ssh_server.port} ".encode() + other.export_public_key())
    runner = ssh_server.runner(known_hosts=wrong)
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await runner.run(["true"])
    await ssh_server.close()
    closed = ssh_server.runner()
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await closed.run(["true"])


@pytest.mark.slurm
async def test_slurm_backend_over_ssh(ssh_server: ShellServer, slurm_cluster, callhome: CallHomeReceiver,
                                      shared_dir: Path):
    """What a remote site configures: the commands run on a login node over SSH."""
    env = {"SLURM_CONF": str(slurm_cluster.conf), "PATH": f"{os.path.dirname(system_python())}:/usr/bin:/bin"}
    backend = SlurmBackend(runner=ssh_server.runner(env=env), hub_url=callhome.url, state_dir=shared_dir,
                           hub_id="ssh-" + secrets.token_hex(3), poll_interval=0.1, kill_wait=20,
                           node_networks=["127.0.0.0/8"])  # this "remote" cluster's node is loopback
    callhome.backend = backend
    assert backend.run_as == "service" and "over SSH" in backend.describe_isolation()
    iid = "s" + secrets.token_hex(8)
    serve = "import http.server, sys; http.server.HTTPServer((sys.argv[2], int(sys.argv[1])), " \
            "http.server.SimpleHTTPRequestHandler).serve_forever()"
    spec = LaunchSpec(instance_id=iid, owner="remote", name="r", kind="workspace",
                      command=[system_python(), "-c", serve, "{port}", "{ip}"], env={}, resources=Resources(1, 256),
                      base_url="/user/remote/r/", token=secrets.token_hex(8), time_limit_s=600,
                      home=str(shared_dir / "home"))
    callhome.tokens[iid] = spec.token
    try:
        handle = await backend.submit(spec)
        callhome.handles[iid] = handle
        for _ in range(300):
            obs = await backend.observe(iid, handle)
            if obs.phase not in (Phase.PENDING, Phase.STARTING):
                break
            await asyncio.sleep(0.05)
        assert obs.phase == Phase.RUNNING and obs.url, obs
        assert [h["instance_id"] for h in await backend.list_owned()] == [iid]
        assert await backend.terminate(handle, grace=0.5)
        assert any(c.startswith("env SLURM_CONF=") and " sbatch --parsable" in c for c in ssh_server.commands)
    finally:
        for handle in await backend.list_owned():
            await backend.terminate(handle, grace=0)
        await backend.close()


@pytest.mark.slurm
async def test_a_job_over_ssh_runs_without_calling_home_and_its_log_is_read_there(
        ssh_server: ShellServer, slurm_cluster, shared_dir: Path):
    """A job needs no hub reachable from the node (the hub URL here goes nowhere); its log comes
    back over SSH with ``stat`` and ``dd`` at exact offsets."""
    env = {"SLURM_CONF": str(slurm_cluster.conf), "PATH": f"{os.path.dirname(system_python())}:/usr/bin:/bin"}
    backend = SlurmBackend(runner=ssh_server.runner(env=env), hub_url="http://192.0.2.1:9", state_dir=shared_dir,
                           hub_id="ssh-" + secrets.token_hex(3), poll_interval=0.1, kill_wait=20)
    iid = "j" + secrets.token_hex(8)
    home = shared_dir / "jobs" / iid
    show = "import os; print('out', os.path.isdir('output')); print('ünïcode ✓', flush=True)"
    spec = LaunchSpec(instance_id=iid, owner="remote", name="j", kind="job", command=[system_python(), "-c", show],
                      env={}, resources=Resources(1, 256), base_url="/user/remote/j/", token=secrets.token_hex(8),
                      time_limit_s=600, home=str(home), dirs=("output",))
    try:
        handle = await backend.submit(spec)
        for _ in range(300):
            obs = await backend.observe(iid, handle)
            if obs.phase in (Phase.SUCCEEDED, Phase.FAILED):
                break
            await asyncio.sleep(0.05)
        assert obs.phase == Phase.SUCCEEDED and obs.exit_code == 0, obs
        expected = "out True\nünïcode ✓\n".encode()
        assert await backend.read_log(handle, 0) == (expected, len(expected))
        assert await backend.read_log(handle, -len("✓\n".encode())) == ("✓\n".encode(), len(expected))
        assert [line async for line in backend.logs(handle)] == ["out True", "ünïcode ✓"]
        assert any(" LC_ALL=C dd if=" in c for c in ssh_server.commands)
    finally:
        for owned in await backend.list_owned():
            await backend.terminate(owned, grace=0)
        await backend.close()
