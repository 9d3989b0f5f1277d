"""Fixtures for backend tests: the real Slurm cluster, a call-home receiver, a scripted command runner."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from labhub.backends.base import Backend, BackendError, Handle
from labhub.backends.commands import CommandResult, CommandRunner
from labhub.backends.local import LocalBackend
from tests import slurmcluster
from tests.backends.local_support import IS_ROOT, SESSION_TAG, cleanup_backend

USERDEL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[slurmcluster.SlurmCluster]:
    """A real single-node Slurm for the whole session (started once, however many modules ask)."""
    try:
        cluster = slurmcluster.acquire()
    except slurmcluster.ClusterError as exc:
        if os.environ.get("LABHUB_TEST_SLURM") == "skip":
            pytest.skip(str(exc))
        pytest.fail(f"{exc}\n(`make test` installs slurm-wlm and munge as root; "
                    "set LABHUB_TEST_SLURM=skip to skip the Slurm tests)", pytrace=False)
    try:
        yield cluster
    finally:
        slurmcluster.release()


@pytest.fixture(scope="session")
def account_cleanup() -> Iterator[Callable[[str], str]]:
    """``register(owner)``: owner names whose ``labhub-<owner>`` accounts are deleted at the end."""
    owners: list[str] = []

    def register(owner: str) -> str:
        owners.append(owner)
        return owner

    yield register
    userdel = shutil.which("userdel", path=USERDEL_PATH)
    if not IS_ROOT or userdel is None:
        return
    for owner in owners:
        name = "labhub-" + owner
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        subprocess.run([userdel, name], check=False, capture_output=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory job accounts can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="labhub-backend-test-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def system_python() -> str:
    """A Python every account can execute (the venv's may live under /root)."""
    if not IS_ROOT:
        import sys

        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no system-wide python3 for the instance accounts")


class CallHomeReceiver:
    """The hub's call-home endpoint, alone: ``POST .../instances/{id}/callhome`` -> ``backend.called_home``.

    Answers 409 until the test has recorded the instance's handle (as the hub
    does before it stored the handle), so the launcher's retry is exercised.
    """

    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.handles: dict[str, Handle] = {}
        self.tokens: dict[str, str] = {}
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.refusals = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = self._handle(head[0].split(" ")[1], headers.get("authorization", ""), body)
        except (asyncio.IncompleteReadError, ValueError, IndexError):
            status = 400
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    def _handle(self, path: str, authorization: str, body: bytes) -> int:
        parts = path.strip("/").split("/")  # api v1 instances ID callhome
        if len(parts) != 5 or parts[-1] != "callhome":
            return 404
        iid = parts[3]
        if iid not in self.tokens or authorization != f"token {self.tokens[iid]}":
            return 403
        if iid not in self.handles:
            self.refusals += 1
            return 409
        report = json.loads(body)
        assert self.backend is not None
        try:
            self.handles[iid] = self.backend.called_home(iid, self.handles[iid], report)
        except BackendError:
            return 422
        self.reports.append((iid, report))
        return 204


@pytest_asyncio.fixture
async def callhome() -> AsyncIterator[CallHomeReceiver]:
    receiver = CallHomeReceiver()
    await receiver.start()
    yield receiver
    await receiver.close()


class ScriptedRunner(CommandRunner):
    """A runner that answers from a script instead of running anything, and records what it was asked.

    ``responses`` maps a command name (``squeue``) to a list of results or
    callables ``argv -> result``; the last entry repeats.
    """

    def __init__(self, responses: Mapping[str, Sequence[Any]] | None = None) -> None:
        self.responses = {k: list(v) for k, v in (responses or {}).items()}
        self.calls: list[tuple[list[str], str | None]] = []

    def on(self, command: str, *results: Any) -> ScriptedRunner:
        self.responses[command] = list(results)
        return self

    def called(self, command: str) -> list[list[str]]:
        return [argv for argv, _ in self.calls if os.path.basename(argv[0]) == command]

    async def run(self, argv: Sequence[str], *, stdin: str | None = None, limit_s: float = 30) -> CommandResult:
        argv = list(argv)
        self.calls.append((argv, stdin))
        queue = self.responses.get(os.path.basename(argv[0]))
        if not queue:
            return CommandResult(tuple(argv), 0, "", "")
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if callable(item):
            item = item(argv)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, str):
            return CommandResult(tuple(argv), 0, item, "")
        code, out, err = item
        return CommandResult(tuple(argv), code, out, err)


# -- the local backend's fixtures (helpers in local_support.py) ---------------------


@pytest.fixture(scope="session")
def local_accounts_cleanup() -> Iterator[str]:
    """The owner-name prefix of this run; deletes its system accounts at the end."""
    yield SESSION_TAG
    if not IS_ROOT:
        return
    userdel = shutil.which("userdel", path="/usr/sbin:/usr/bin:/sbin:/bin")
    for pw in pwd.getpwall():
        if pw.pw_name.startswith("labhub-" + SESSION_TAG) and userdel:
            subprocess.run([userdel, pw.pw_name], check=False, capture_output=True)


@pytest.fixture
def local_owner(local_accounts_cleanup: str) -> str:
    return local_accounts_cleanup


@pytest.fixture
def local_py() -> str:
    """A Python the instance accounts can execute.

    As root, instances run as system accounts, which cannot read the hub's own
    interpreter when it lives under /root (as pyenv's does here).
    """
    if not IS_ROOT:
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no system-wide python3 for the instance accounts")


@pytest.fixture
def local_state_dir() -> Iterator[Path]:
    """A state dir the instance accounts can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="labhub-local-test-", dir="/tmp"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest_asyncio.fixture(params=["auto"] if IS_ROOT else ["none"])
async def local_backend(local_state_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[LocalBackend]:
    """Every behaviour with the isolation this machine can run: per-user accounts as root, none otherwise.

    (As root, ``none`` refuses every launch, and as another user ``auto`` does:
    user code never runs as root; test_local_isolation checks both refusals.)
    """
    backend = LocalBackend(
        state_dir=local_state_dir / "state", hub_id="test-" + secrets.token_hex(3), isolation=request.param
    )
    yield backend
    await cleanup_backend(backend)


@pytest_asyncio.fixture
async def local_isolated_backend(local_state_dir: Path) -> AsyncIterator[LocalBackend]:
    """The backend with the isolation this machine allows (``isolation="auto"``)."""
    backend = LocalBackend(state_dir=local_state_dir / "state", hub_id="test-" + secrets.token_hex(3))
    yield backend
    await cleanup_backend(backend)
