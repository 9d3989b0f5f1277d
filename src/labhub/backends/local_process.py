"""The local backend's per-process pieces: the child watcher, exit statuses, placeholders, handle files.

Pure or nearly so (a few ``/proc`` and file reads); :mod:`labhub.backends.local`
puts them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labhub.backends.base import Handle, Observation, Phase

log = logging.getLogger("labhub.backends.local")

HOST = "127.0.0.1"
PLACEHOLDER_RE = re.compile(r"\{(port|ip|socket|base_url|home)\}")


class Child:
    """A process this backend object started: its exit status is ours to collect.

    The event loop watches a pidfd, so the child is reaped as soon as it exits
    (no zombie waits for the next reconcile tick); ``on_exit`` then runs once
    and says whether it was an OOM kill.
    """

    __slots__ = ("popen", "loop", "pidfd", "on_exit", "oom")

    def __init__(
        self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop, on_exit: Callable[[int], bool]
    ) -> None:
        self.popen = popen
        self.loop = loop
        self.on_exit = on_exit
        self.oom = False
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(popen.pid)
            loop.add_reader(self.pidfd, self.reap)
        except (OSError, AttributeError, NotImplementedError):  # old kernel: reaped when observed
            self.close()

    def reap(self) -> int | None:
        """The exit status, collected if the process has exited; never blocks."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        rc = self.popen.poll()
        if rc is not None:
            self.close()
            try:
                self.oom = self.on_exit(rc)
            except Exception:  # a failed bookkeeping write must not lose the status
                log.exception("recording the exit of pid %s failed", self.popen.pid)
        return rc

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None


def pid_ticks(handle: Handle) -> tuple[int | None, int | None]:
    try:
        pid = int(handle["pid"])
        ticks = int(handle["start_ticks"])
    except (KeyError, TypeError, ValueError):
        return None, None
    return (pid, ticks) if pid > 0 else (None, None)


def exited(handle: Handle, rc: int, *, oom: bool) -> Observation:
    """``rc`` as Popen reports it: negative for a signal (exit_code 128 + signal)."""
    if rc == 0:
        return Observation(Phase.SUCCEEDED, exit_code=0, message="exited with code 0")
    if rc > 0:
        return Observation(Phase.FAILED, exit_code=rc, message=f"exited with code {rc}")
    sig = -rc
    if sig == signal.SIGKILL and oom:
        message = f"killed: out of memory (limit {handle.get('memory_mb')} MiB)"
        return Observation(Phase.FAILED, exit_code=128 + sig, message=message, reason="OOM")
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = "unknown"
    return Observation(Phase.FAILED, exit_code=128 + sig, message=f"killed by signal {sig} ({name})")


def fill(command: list[str], *, port: int | None, socket_path: Path | None, base_url: str, home: str) -> list[str]:
    """Fill ``{port}``, ``{ip}``, ``{socket}``, ``{base_url}`` and ``{home}``; other braces stay.

    One pass per argument, so a value that happens to contain a placeholder
    (a home directory named ``{port}``) is not expanded again.
    """
    values = {"port": str(port), "ip": HOST, "socket": str(socket_path), "base_url": base_url, "home": home}
    return [PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], arg) for arg in command]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, readable by the hub only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def first_private_dir(paths: list[Path]) -> Path | None:
    """The first directory on the way to any of ``paths`` that others cannot traverse."""
    for path in paths:
        path = path.resolve()
        for directory in [*reversed(path.parents), path]:
            try:
                mode = directory.stat().st_mode
            except OSError:
                continue
            if not mode & 0o001:
                return directory
    return None


def grant_read(path: Path, gid: int) -> None:
    """Let group ``gid`` (one instance account's own group) read the hub's directory ``path``, and
    traverse its parent; nobody else gains anything.  ``path`` is the hub's (no one else can have
    planted links in it), so a plain walk that follows no links is safe."""
    os.chown(path.parent, -1, gid, follow_symlinks=False)
    os.chmod(path.parent, 0o710)
    for top, dirs, files in os.walk(path, followlinks=False):
        os.chown(top, -1, gid, follow_symlinks=False)
        os.chmod(top, 0o750)
        for name in files:
            file = os.path.join(top, name)
            if not os.path.islink(file):
                os.chown(file, -1, gid, follow_symlinks=False)
                os.chmod(file, 0o640)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
