"""Isolation for the local backend: system accounts, cgroup v1 limits, rlimits.

What is used depends on the machine (``isolation="auto"``):

* running as root: each owner's instances run as an unprivileged system
  account ``<prefix><owner>``, created on first use with ``useradd``;
* cgroup v1 controllers writable: every instance gets its own memory, cpu and
  pids cgroup (``<root>/<controller>/labhub/<instance_id>``), joined by the
  child itself before it execs, so nothing it starts escapes the limits;
* otherwise core dumps are disabled with an rlimit.  There is deliberately no
  ``RLIMIT_AS``: JupyterLab and numerical libraries reserve far more virtual
  memory than they use, so an address-space limit breaks them long before it
  protects anyone.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import re
import resource
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labhub.backends.base import BackendError

log = logging.getLogger(__name__)

USERNAME_MAX = 32  # useradd refuses longer names
OWNER_RE = re.compile(r"^[a-z0-9-]{1,63}$")
CGROUP_PARENT = "labhub"
PIDS_MAX = 4096
CFS_PERIOD_US = 100_000
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def account_name(prefix: str, owner: str) -> str:
    """The default system account for ``owner`` when the hub assigned none: ``prefix + owner``.

    The hub assigns every user an account of its own and stores it (names that
    do not fit are shortened there, never here, so that two users can never
    share one); this default is for specs built without the hub.
    """
    if not OWNER_RE.match(owner):
        raise BackendError(f"invalid owner name for a system account: {owner!r}")
    name = prefix + owner
    if len(name) > USERNAME_MAX:
        raise BackendError(f"no system account assigned to {owner!r}, and {name!r} is too long for one")
    return name


def group_name(prefix: str) -> str:
    """The group whose members (the instance accounts) may traverse the hub's data directory.

    It cannot be an account's name: accounts are ``prefix`` plus a user name,
    and user names have no ``_``.
    """
    return prefix.rstrip("-_") + "_instances"


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups the instance runs with


class Accounts:
    """Creates and looks up per-owner system accounts (hub must be root).

    Every account is a member of :func:`group_name`'s group, which lets it
    traverse (not read) the hub's data directory down to its own home.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.group = group_name(prefix)
        self._gid: int | None = None
        self._lock: asyncio.Lock | None = None

    def ensure_group_now(self) -> int:
        """The shared group's gid, created with ``groupadd`` if missing (blocking: once, at start)."""
        if self._gid is not None:
            return self._gid
        try:
            self._gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            groupadd = shutil.which("groupadd", path=SYSTEM_PATH)
            if groupadd is None:
                raise BackendError("cannot create the instance accounts' group: groupadd not found") from None
            done = subprocess.run([groupadd, "--system", self.group], capture_output=True, text=True,
                                  env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}, check=False)
            if done.returncode not in (0, 9):  # 9: it exists (another hub made it meanwhile)
                raise BackendError(f"groupadd {self.group} failed: {done.stdout}{done.stderr}".strip()) from None
            self._gid = grp.getgrnam(self.group).gr_gid
            log.info("created group %s", self.group)
        return self._gid

    async def ensure(self, name: str, home: Path) -> Account:
        """The account ``name`` (one the hub assigned), created with ``useradd`` if missing."""
        if not ACCOUNT_RE.match(name) or not name.startswith(self.prefix):
            raise BackendError(f"refusing to run instances as {name!r}: not a {self.prefix}* account")
        gid = self.ensure_group_now()
        if self._lock is None:
            self._lock = asyncio.Lock()
        found = _lookup(name)
        if found is None or not _member(name, self.group):
            async with self._lock:  # useradd/usermod take /etc/passwd's lock; one at a time
                found = _lookup(name)
                if found is None:
                    # Exit status 9: the name exists (another hub process created it meanwhile).
                    await _run_admin_tool("useradd", [
                        "--system", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
                        "--groups", self.group, name], tolerate=(9,))
                    log.info("created system account %s", name)
                    found = _lookup(name)
                elif not _member(name, self.group):
                    await _run_admin_tool("usermod", ["--append", "--groups", self.group, name])
        if found is None:
            raise BackendError(f"system account {name} could not be created")
        return Account(found.name, found.uid, found.gid, (gid,))


def _member(name: str, group: str) -> bool:
    try:
        return name in grp.getgrnam(group).gr_mem
    except KeyError:
        return False


def _lookup(name: str) -> Account | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise BackendError(f"refusing to run instances as {name}: it is a root account")
    return Account(name, pw.pw_uid, pw.pw_gid)


async def _run_admin_tool(tool: str, args: list[str], *, tolerate: tuple[int, ...] = ()) -> None:
    path = shutil.which(tool, path=SYSTEM_PATH)
    if path is None:
        raise BackendError(f"cannot manage system accounts: {tool} not found")
    proc = await asyncio.create_subprocess_exec(
        path, *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
    )
    out, _ = await proc.communicate()
    if proc.returncode not in (0, *tolerate):
        text = out.decode(errors="replace").strip()[-2000:]
        raise BackendError(f"{tool} {' '.join(args)} failed (exit {proc.returncode}): {text}")


class Cgroups:
    """Per-instance cgroup v1 directories under ``<root>/<controller>/labhub``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # controller -> parent directory, for each controller we can write to
        self.parents: dict[str, Path] = {}
        for controller, marker in (
            ("memory", "memory.limit_in_bytes"),
            ("cpu", "cpu.cfs_quota_us"),
            ("pids", None),
        ):
            base = root / controller
            if not (base / "cgroup.procs").exists():
                continue
            if marker is not None and not (base / marker).exists():
                continue
            if _probe(base / CGROUP_PARENT):
                self.parents[controller] = base / CGROUP_PARENT

    @property
    def available(self) -> bool:
        return "memory" in self.parents

    def dirs(self, instance_id: str) -> list[Path]:
        """This instance's cgroup directories (whether or not they exist)."""
        return [parent / instance_id for parent in self.parents.values()]

    def memory_dir(self, instance_id: str) -> Path | None:
        parent = self.parents.get("memory")
        return None if parent is None else parent / instance_id

    def create(self, instance_id: str, *, memory_mb: int, cpus: float, uid: int | None) -> list[Path]:
        """Create the instance's cgroups with its limits; return their dirs.

        When the instance runs as another ``uid``, that account is given its
        cgroups' ``cgroup.procs`` (and nothing else): Python drops privileges
        before calling ``preexec_fn``, and cgroup v1 lets an unprivileged
        process move itself only into a cgroup whose ``cgroup.procs`` it may
        write.  Moving more of its own processes in only confines it further.
        """
        made: list[Path] = []
        try:
            for controller, parent in self.parents.items():
                d = parent / instance_id
                if d.exists():
                    _rmdir(d)
                d.mkdir()
                made.append(d)
                if controller == "memory" and memory_mb > 0:
                    limit = str(memory_mb * 1024 * 1024)
                    (d / "memory.limit_in_bytes").write_text(limit)
                    try:  # swap included, where the kernel accounts for it
                        (d / "memory.memsw.limit_in_bytes").write_text(limit)
                    except OSError:
                        pass
                elif controller == "cpu" and cpus > 0:
                    (d / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                    quota = max(1000, int(cpus * CFS_PERIOD_US))
                    (d / "cpu.cfs_quota_us").write_text(str(quota))
                elif controller == "pids" and (d / "pids.max").exists():
                    (d / "pids.max").write_text(str(PIDS_MAX))
                if uid is not None:
                    os.chown(d / "cgroup.procs", uid, -1)
        except OSError as exc:
            self.remove(made)
            raise BackendError(f"cannot set up cgroups for {instance_id}: {exc}") from exc
        return made

    @staticmethod
    def pids(dirs: Sequence[Path]) -> set[int]:
        """Every process in the given cgroups."""
        found: set[int] = set()
        for d in dirs:
            try:
                text = (d / "cgroup.procs").read_text()
            except OSError:
                continue
            found.update(int(x) for x in text.split())
        return found

    @staticmethod
    def remove(dirs: Sequence[Path], *, quiet: bool = False) -> bool:
        """Remove cgroup directories (empty ones only); True if all are gone."""
        ok = True
        for d in dirs:
            ok = _rmdir(d, quiet=quiet) and ok
        return ok

    @staticmethod
    def oom_killed(memory_dir: Path | None) -> bool:
        """True if the kernel OOM-killed a process in this memory cgroup."""
        if memory_dir is None:
            return False
        try:
            text = (memory_dir / "memory.oom_control").read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return value.strip() not in ("", "0")
        # Kernels before 4.13 have no oom_kill counter: a hit limit is a hint.
        try:
            return int((memory_dir / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False


def _probe(parent: Path) -> bool:
    """True if cgroup directories can be made (and removed) under ``parent``."""
    probe = parent / f".probe-{os.getpid()}"
    try:
        parent.mkdir(exist_ok=True)
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError:
        return False
    return True


def _rmdir(d: Path, *, quiet: bool = False) -> bool:
    try:
        d.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if not quiet:
            log.warning("cannot remove cgroup %s: %s", d, exc)
        return False
    return True


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_fd: int,
    account: Account | None,
    cgroup_dirs: Sequence[Path],
    rlimits: bool,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (``argv[0]`` an absolute path) detached and confined.

    Its own session and process group, stdin from /dev/null, stdout and
    stderr to ``log_fd`` (a file: nothing ties the process to the hub), the
    account's uid and gid with only the account's own supplementary groups,
    inside its cgroups before it execs, with umask 022.  An argument vector,
    never a shell.
    """
    ids: dict[str, Any] = {}
    if account is not None:
        ids = {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}
    preexec = make_preexec([str(d / "cgroup.procs") for d in cgroup_dirs], rlimits=rlimits)
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            umask=0o022,  # the user's files, whatever the hub's own umask
            preexec_fn=preexec,
            close_fds=True,
            **ids,
        )
    except PermissionError as exc:
        who = account.name if account is not None else "the hub's user"
        raise BackendError(f"cannot start {argv[0]} as {who}: {exc.strerror} ({exc.filename})") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendError(f"cannot start {argv[0]}: {exc}") from exc


def make_preexec(procs_files: Sequence[str], *, rlimits: bool) -> Callable[[], None] | None:
    """The function the child runs between fork and exec.

    It only writes its own pid to each ``cgroup.procs`` (so it is inside its
    limits before the instance's program starts) and, when there are no
    cgroups, sets rlimits.  It must stay tiny: it runs in a forked copy of a
    threaded process.
    """
    files = [os.fsencode(p) for p in procs_files]
    if not files and not rlimits:
        return None

    def preexec() -> None:
        pid = str(os.getpid()).encode()
        for path in files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        if rlimits:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec
