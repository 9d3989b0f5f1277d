"""The one seam through which backends run scheduler commands.

A :class:`CommandRunner` runs an argument vector (never a shell string) and
returns its exit status and output.  :class:`LocalRunner` runs it on this
machine; :class:`SSHRunner` runs it on a login node over SSH (asyncssh).  SSH
servers hand the command line to the remote user's shell, so the SSH runner
quotes every argument with :func:`shlex.quote`: what arrives is exactly the
argument vector that was given, whatever characters it holds.

Tests replace the runner with a scripted one (``tests/backends/conftest.py``)
instead of patching ``subprocess``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import pwd
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labhub.backends.base import BackendError, BackendUnavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_text(self) -> str:
        """The command's own complaint, for messages."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " ".join(line.strip() for line in text[-3:]) or f"exit status {self.returncode}"


class CommandRunner(abc.ABC):
    """Runs argument vectors somewhere.  Raises :class:`BackendUnavailable` when it cannot run them at all."""

    @abc.abstractmethod
    async def run(self, argv: Sequence[str], *, stdin: str | None = None,
                  limit_s: float = DEFAULT_TIMEOUT_S) -> CommandResult:
        """Run ``argv`` with ``stdin`` for at most ``limit_s``; a non-zero exit status is a result."""

    def describe(self) -> str:
        return "this machine"

    async def make_dir(self, path: str, *, owner: str | None = None, limit_s: float = DEFAULT_TIMEOUT_S) -> None:
        """``mkdir -p`` (the last part private, 0700) and, as root, give it to ``owner``."""
        for argv in (["mkdir", "-p", "-m", "0700", "--", path], ["chown", "--", f"{owner}:", path]):
            if argv[0] == "chown" and not owner:
                break
            result = await self.run(argv, limit_s=limit_s)
            if not result.ok:
                raise BackendError(f"cannot prepare {path}: {result.error_text()}")

    async def close(self) -> None:  # noqa: B027 - most runners hold nothing
        """Release connections."""


def _check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a non-empty list of strings, not {argv!r}")
    if any("\x00" in a for a in argv):
        raise ValueError("arguments must not contain NUL characters")
    return tuple(argv)


class LocalRunner(CommandRunner):
    """Runs commands as child processes of the hub with a fixed, minimal environment.

    ``env`` replaces the hub's environment (whose secrets are never passed
    on); ``PATH`` defaults to the system path.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
                    **(env or {})}

    async def run(self, argv: Sequence[str], *, stdin: str | None = None,
                  limit_s: float = DEFAULT_TIMEOUT_S) -> CommandResult:
        args = _check_argv(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env,
                start_new_session=True,
            )
        except OSError as exc:  # not installed, not executable
            raise BackendUnavailable(f"cannot run {args[0]}: {exc.strerror or exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), limit_s)
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise BackendUnavailable(f"{args[0]} did not answer within {limit_s:g} s") from exc
        except BaseException:  # cancelled: do not leave the command behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        assert proc.returncode is not None
        return CommandResult(args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


    async def make_dir(self, path: str, *, owner: str | None = None, limit_s: float = DEFAULT_TIMEOUT_S) -> None:
        """In-process: no command needed on this machine."""
        await asyncio.to_thread(_make_dir, path, owner)


def _make_dir(path: str, owner: str | None) -> None:
    try:
        created = not os.path.isdir(path)
        os.makedirs(path, mode=0o700, exist_ok=True)
        if created:
            os.chmod(path, 0o700)
        if owner:
            pw = pwd.getpwnam(owner)
            os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    except (OSError, KeyError) as exc:
        raise BackendError(f"cannot prepare {path}: {exc}") from exc


class SSHRunner(CommandRunner):
    """Runs commands on a login node over one reused SSH connection.

    ``known_hosts=None`` uses ``~/.ssh/known_hosts``; host keys are always
    checked.  ``env`` is applied with ``env NAME=VALUE ...`` in front of the
    command, because SSH servers accept few variables.
    """

    def __init__(self, host: str, *, user: str | None = None, port: int = 22, key: Path | None = None,
                 known_hosts: Path | None = None, env: Mapping[str, str] | None = None,
                 connect_timeout: float = 10.0, options: Mapping[str, Any] | None = None) -> None:
        self.host = host
        self.user = user
        self.port = port
        self.key = key
        self.known_hosts = known_hosts
        self.env = dict(env or {})
        self.connect_timeout = connect_timeout
        self.options = dict(options or {})  # extra asyncssh.connect() arguments (tests)
        self._conn: Any = None
        self._lock: asyncio.Lock | None = None

    def describe(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host} over SSH"

    def command_line(self, argv: Sequence[str]) -> str:
        """The remote command line: every argument quoted, so the remote shell splits it back exactly."""
        args = _check_argv(argv)
        prefix = ["env", *(f"{k}={v}" for k, v in self.env.items())] if self.env else []
        return shlex.join([*prefix, *args])

    async def _connection(self) -> Any:
        import asyncssh

        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            kwargs: dict[str, Any] = {"port": self.port, "username": self.user,
                                      "connect_timeout": self.connect_timeout, **self.options}
            if self.key is not None:
                kwargs["client_keys"] = [str(self.key)]
            if self.known_hosts is not None:
                kwargs["known_hosts"] = str(self.known_hosts)
            try:
                self._conn = await asyncssh.connect(self.host, **kwargs)
            except (OSError, asyncssh.Error) as exc:
                raise BackendUnavailable(f"cannot connect to {self.describe()}: {exc}") from exc
            return self._conn

    async def run(self, argv: Sequence[str], *, stdin: str | None = None,
                  limit_s: float = DEFAULT_TIMEOUT_S) -> CommandResult:
        import asyncssh

        line = self.command_line(argv)
        conn = await self._connection()
        try:
            feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": asyncssh.DEVNULL}
            result = await asyncio.wait_for(conn.run(line, check=False, **feed), limit_s)
        except TimeoutError as exc:
            raise BackendUnavailable(f"{argv[0]} on {self.host} did not answer within {limit_s:g} s") from exc
        except (OSError, asyncssh.Error) as exc:
            await self.close()  # reconnect next time
            raise BackendUnavailable(f"{self.describe()}: {exc}") from exc
        status = result.exit_status if result.exit_status is not None else 255
        return CommandResult(tuple(argv), status, _text(result.stdout), _text(result.stderr))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
