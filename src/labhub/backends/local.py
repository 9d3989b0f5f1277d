"""The local backend: instances are child processes on the hub's machine.

Each instance gets ``state_dir/<instance_id>/`` with ``handle.json`` (what is
needed to find the process again after a hub restart), ``output.log`` (its
stdout and stderr) and, once it has exited, ``exit.json`` (its status).
Processes run in their own session and process group and write to a file, not
a pipe, so they outlive the hub; a new hub re-adopts them from their handles.
A process is identified by pid *and* start time (field 22 of
``/proc/<pid>/stat``), so a reused pid is never mistaken for an instance.

Processes are started with :class:`subprocess.Popen` and reaped through a
pidfd watched by the event loop, not with ``asyncio.create_subprocess_exec``:
asyncio's subprocess transport SIGKILLs a still-running child when it is
closed or garbage-collected (so a graceful hub shutdown would kill every
instance), and uvloop's refuses ``user=``/``group=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from labhub.backends import netinfo, procinfo
from labhub.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Capability,
    Capacity,
    Handle,
    LaunchSpec,
    Observation,
    Phase,
)
from labhub.backends.gpus import Gpu, describe_capacity
from labhub.backends.gpus import inventory as gpu_inventory
from labhub.backends.local_isolation import Account, Accounts, Cgroups, account_name, spawn
from labhub.backends.local_process import (
    HOST,
    Child,
    exited,
    fill,
    first_private_dir,
    free_port,
    grant_read,
    pid_ticks,
    user_name,
    write_json,
)

log = logging.getLogger(__name__)

INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SOCKET_NAME = "server.sock"
SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 108 bytes
POLL_S = 0.05  # how often terminate looks whether the processes are gone
KILL_WAIT_S = 5.0  # after SIGKILL, how long the kernel gets to finish them
GONE = Observation(Phase.GONE, message="process no longer exists")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # what jobs and runtimes find besides their own environment
NOT_LISTENING = Observation(Phase.RUNNING, message="not listening yet")


GPU_RECHECK_S = 30.0  # how often the GPUs are looked for again while instances hold some


class LocalBackend(Backend):
    """Instances as child processes of the hub, isolated as far as the machine allows.

    User code never runs as root.  ``isolation="auto"`` needs a hub running as
    root that can start per-user system accounts (with the hub's Python and the
    data directory reachable by them); otherwise every launch is refused with
    the reason.  ``isolation="none"`` runs instances as the hub's own user, and
    is refused when that user is root.
    """

    name = "local"
    capabilities = frozenset({Capability.LOGS, Capability.UNIX_SOCKET})

    def __init__(
        self,
        *,
        state_dir: Path,
        hub_id: str = "labhub",
        isolation: str = "auto",
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        account_prefix: str = "labhub-",
        clock: Callable[[], float] = time.time,
        gpus: int | None = None,
        private_root: Path | None = None,
        cpus: float | None = None,
        memory_mb: int | None = None,
        gpu_inventory: Callable[[], list[Gpu]] = gpu_inventory,
    ) -> None:
        """``gpus``: how many GPUs to hand out; ``None``: the GPUs found (:mod:`labhub.backends.gpus`).
        ``cpus``, ``memory_mb``: what the admission queue may hand out at once (``None``: not limited).
        ``gpu_inventory``: how the GPUs are found, at start and again (every :data:`GPU_RECHECK_S`) while
        instances hold some: one that is gone makes its instances ``unknown``, not failed.

        ``private_root`` is the hub's data directory, whose permissions the hub
        keeps (traversable by :attr:`data_dir_group` only); what lies above it
        must be traversable by other accounts.
        """
        if isolation not in ("auto", "none"):
            raise ValueError(f"isolation must be 'auto' or 'none', not {isolation!r}")
        self.state_dir = Path(state_dir)
        self.hub_id = hub_id
        self.isolation = isolation
        self.clock = clock
        auto = isolation == "auto"
        root = os.geteuid() == 0
        self._accounts = Accounts(account_prefix) if auto and root else None
        self._account_prefix = account_prefix
        #: why launches are refused ("" when they are not)
        self.refusal = ""
        if auto and not root:
            self.refusal = (f"per-user system accounts need the hub to run as root (it runs as "
                            f"{user_name(os.geteuid())}); to run instances as that user, with no isolation between "
                            f"users, set LABHUB_ISOLATION=none")
        elif not auto and root:
            self.refusal = ("isolation is 'none' and the hub runs as root: user code never runs as root; run the hub "
                            "as an unprivileged user, or set LABHUB_ISOLATION=auto for per-user accounts")
        elif self._accounts is not None:
            above = (private_root or self.state_dir).resolve().parent
            blocked = first_private_dir([Path(sys.prefix), Path(os.path.realpath(sys.executable)).parent, above])
            if blocked is not None:
                self.refusal = (f"{blocked} is not accessible to the per-user accounts instances run as, so they "
                                f"could not run the instance environment or reach their homes; install LabHub (or "
                                f"the instance environment) and put the data directory where other accounts can "
                                f"traverse, e.g. under /opt and /srv rather than /root")
                self._accounts = None
        if self.refusal:
            log.error("local backend: launches are refused: %s", self.refusal)
        self.data_dir_group = self._accounts.ensure_group_now() if self._accounts is not None else None
        # The state dir is traversable by the instance accounts' group only (to their sockets).
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.data_dir_group is not None:
            os.chown(self.state_dir, -1, self.data_dir_group)
            self.state_dir.chmod(0o710)
        self._socket_root: Path | None = None
        cgroups = Cgroups(Path(cgroup_root)) if auto and not self.refusal else None
        self._cgroups = cgroups if cgroups is not None and cgroups.available else None
        self._inventory = gpu_inventory if gpus is None else None
        self.gpus = gpu_inventory() if gpus is None else [Gpu(index=i, found_by="settings") for i in range(gpus)]
        self._gpus_seen_at = clock()
        self._found_now: set[int] | None = None  # the indices the last re-read found
        self._gpu_count = len(self.gpus)
        self._capacity = Capacity(cpus=cpus, memory_mb=memory_mb, gpus=self._gpu_count)
        if self._gpu_count > 0:
            self.capabilities = frozenset({*self.capabilities, Capability.GPUS})
        self._children: dict[str, Child] = {}
        self._submit_lock: asyncio.Lock | None = None
        self._listeners: dict[str, frozenset[int]] = {}  # instance -> listener inodes proven to be its own

    def describe_isolation(self) -> str:
        if self.refusal:
            return f"launches refused: {self.refusal}"
        if self._accounts is not None:
            who = f"processes run as per-user system accounts ({self._accounts.prefix}<user>)"
        else:
            who = f"processes run as the hub's own user ({user_name(os.geteuid())}), not isolated from each other"
        if self._cgroups is not None:
            limits = f"{', '.join(self._cgroups.parents)} limited by cgroup v1"
        elif self.isolation == "none":
            limits = "no resource limits (isolation disabled)"
        else:
            limits = "no memory or CPU limits (cgroups not writable); core dumps off via rlimit"
        text = f"{who}; {limits}"
        if self._gpu_count:
            text += f"; {self._gpu_count} GPU(s) assigned via CUDA_VISIBLE_DEVICES (not enforced)"
        return text

    def capacity(self) -> Capacity:
        return self._capacity

    def describe_capacity(self) -> str:
        cap = self._capacity
        return describe_capacity(self.gpus, cpus=cap.cpus, memory_mb=cap.memory_mb,
                                 machine_cpus=os.cpu_count(), machine_memory_mb=procinfo.memory_mb())

    def unsupported(self, spec: LaunchSpec) -> dict[str, str]:
        reasons = super().unsupported(spec)
        if self.refusal:
            reasons["backend"] = f"the local backend cannot run instances safely: {self.refusal}"
        if "size" not in reasons and spec.resources.gpus > self._gpu_count:
            reasons["size"] = f"{spec.resources.gpus} GPUs requested but this machine has {self._gpu_count}"
        return reasons

    # -- submit -----------------------------------------------------------------

    async def submit(self, spec: LaunchSpec) -> Handle:
        if not INSTANCE_ID_RE.match(spec.instance_id):
            raise BackendError(f"invalid instance id: {spec.instance_id!r}")
        if self.refusal:
            raise BackendError(self.refusal)
        if self._submit_lock is None:
            self._submit_lock = asyncio.Lock()
        async with self._submit_lock:  # idempotency and GPU assignment need one at a time
            old = self._read_json(spec.instance_id, "handle.json")
            if old is not None:
                if self._alive(old):
                    return old
                await self.terminate(old, grace=1.0)  # leftovers of the dead instance
            return await self._start(spec)

    async def _start(self, spec: LaunchSpec) -> Handle:
        iid = spec.instance_id
        account = None
        if self._accounts is not None:
            name = spec.account or account_name(self._account_prefix, spec.owner)
            home_hint = Path(spec.home) if spec.home else self.state_dir / iid / "work"
            account = await self._accounts.ensure(name, home_hint)
        idir = self.state_dir / iid
        idir.mkdir(mode=0o700, exist_ok=True)
        if account is not None:  # the account may traverse its instance's directory, nobody else
            os.chown(idir, 0, account.gid, follow_symlinks=False)
            idir.chmod(0o710)
        if spec.home:
            home = Path(spec.home)
        else:  # with accounts, the instance dir itself stays the hub's
            home = idir / "work" if account is not None else idir
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if account is not None:
            os.chown(home, account.uid, account.gid, follow_symlinks=False)
            home.chmod(0o700)
        for name in spec.dirs:  # e.g. a job's output/: the instance's, as its home is
            made = home / name
            made.mkdir(mode=0o700, exist_ok=True)
            if account is not None:
                os.chown(made, account.uid, account.gid, follow_symlinks=False)
        if account is not None:
            for path in spec.readable:
                await asyncio.to_thread(grant_read, Path(path), account.gid)

        uses_socket = any("{socket}" in arg for arg in spec.command)
        socket_path = self._socket_path(iid, account) if uses_socket else None
        port = free_port() if any("{port}" in arg for arg in spec.command) else None
        env = self._child_env(spec, home, account)
        gpus = self._assign_gpus(spec.resources.gpus)
        if self._gpu_count:  # the hub's choice, not the template's
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)
        argv = fill(spec.command, port=port, socket_path=socket_path, base_url=spec.base_url, home=str(home))
        exe = shutil.which(argv[0], path=env["PATH"]) if argv else None
        if exe is None:
            raise BackendError(f"command not found: {argv[0] if argv else '(empty command)'}")

        log_path = idir / "output.log"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        log_fd = os.open(log_path, flags, 0o600)
        cgroup_dirs: list[Path] = []
        try:
            if account is not None:  # the owner may read its own log; nobody else but the hub
                os.fchown(log_fd, account.uid, account.gid)
                os.fchmod(log_fd, 0o640)
            if self._cgroups is not None:
                cgroup_dirs = self._cgroups.create(
                    iid,
                    memory_mb=spec.resources.memory_mb,
                    cpus=spec.resources.cpus,
                    uid=account.uid if account is not None else None,
                )
            popen = spawn(
                [exe, *argv[1:]],
                env=env,
                cwd=home,
                log_fd=log_fd,
                account=account,
                cgroup_dirs=cgroup_dirs,
                rlimits=self.isolation == "auto" and not cgroup_dirs,
            )
        except BaseException:
            Cgroups.remove(cgroup_dirs)
            raise
        finally:
            os.close(log_fd)

        mem_dir = self._cgroups.memory_dir(iid) if self._cgroups is not None else None
        handle: Handle = {
            "instance_id": iid,
            "pid": popen.pid,
            "pgid": popen.pid,  # start_new_session: the child leads its own group
            "start_ticks": procinfo.start_ticks(popen.pid),  # not reaped yet, so never None
            "port": port,
            "socket": str(socket_path) if socket_path is not None else None,
            "host": HOST,
            "log": str(log_path),
            "hub_id": self.hub_id,
            "uid": account.uid if account is not None else os.geteuid(),
            "user": account.name if account is not None else None,
            "cgroup": str(mem_dir) if mem_dir is not None else None,
            "memory_mb": spec.resources.memory_mb,
            "gpus": gpus,
            "started_at": self.clock(),
        }
        write_json(idir / "handle.json", handle)
        on_exit = functools.partial(self._record_exit, handle)
        self._children[iid] = Child(popen, asyncio.get_running_loop(), on_exit)
        where = f"socket {socket_path}" if socket_path is not None else f"port {port}"
        log.info("instance %s started as pid %s on %s", iid, popen.pid, where)
        return handle

    def _socket_path(self, iid: str, account: Account | None) -> Path:
        """A fresh socket path in a directory only the instance's account (and root) can enter.

        Inside the instance's own directory when the path is short enough for
        AF_UNIX, else under a private random directory in /tmp made once.
        """
        base = self.state_dir / iid
        if len(str(base / "sock" / SOCKET_NAME)) > SOCKET_PATH_MAX:
            if self._socket_root is None:
                self._socket_root = Path(tempfile.mkdtemp(prefix="labhub-sockets-"))
                self._socket_root.chmod(0o711)  # traversable, not listable: the names are ours
            base = self._socket_root / iid
            base.mkdir(mode=0o700, exist_ok=True)
            if account is not None:
                os.chown(base, 0, account.gid, follow_symlinks=False)
                base.chmod(0o710)
        directory = base / "sock"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(mode=0o700)
        if account is not None:
            os.chown(directory, account.uid, account.gid, follow_symlinks=False)
        return directory / SOCKET_NAME

    def _child_env(self, spec: LaunchSpec, home: Path, account: Account | None) -> dict[str, str]:
        """A minimal environment: the hub's own (with its secrets) is never passed on."""
        if spec.runtime:  # the instance's own environment, then the system's (not the hub's PATH)
            path = os.pathsep.join([os.path.join(spec.runtime, "bin"), SYSTEM_PATH])
        elif spec.kind == "job":  # never the hub's own virtualenv
            path = SYSTEM_PATH
        else:  # workspaces without a runtime: the environment the hub was installed with
            path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)])
        user = account.name if account is not None else user_name(os.geteuid())
        env = {
            "PATH": path,
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "USER": user,
            "LOGNAME": user,
            "SHELL": "/bin/bash",
        }
        if spec.runtime:
            env["VIRTUAL_ENV"] = spec.runtime
        if spec.token:  # the instance's secret goes through the environment, never argv
            env["LABHUB_TOKEN"] = spec.token
            env["JUPYTER_TOKEN"] = spec.token
        env.update(spec.env)
        return env

    def _assign_gpus(self, wanted: int) -> list[int]:
        if wanted <= 0:
            return []
        if wanted > self._gpu_count:
            raise BackendError(f"{wanted} GPUs requested but this machine has {self._gpu_count}")
        used = {int(i) for h in self._all_handles() if self._alive(h) for i in h.get("gpus") or []}
        free = [i for i in range(self._gpu_count) if i not in used]
        if len(free) < wanted:
            raise BackendError(f"{wanted} GPUs requested but only {len(free)} are free")
        return free[:wanted]

    def _record_exit(self, handle: Handle, rc: int) -> bool:
        """Our child exited: note how (for a restarted hub) and drop its empty cgroups.

        Returns whether the kernel killed it for exceeding its memory limit.
        """
        iid = handle["instance_id"]
        oom = rc == -signal.SIGKILL and self._oom(iid)
        record = {"pid": handle["pid"], "start_ticks": handle["start_ticks"], "returncode": rc, "oom": oom}
        write_json(self.state_dir / iid / "exit.json", record)
        if self._cgroups is not None:  # cgroups still holding processes stay until terminate
            Cgroups.remove(self._cgroups.dirs(iid), quiet=True)
        log.info("instance %s: pid %s exited with status %s", iid, handle["pid"], rc)
        return oom

    # -- observe ----------------------------------------------------------------

    async def observe_many(self, handles: Mapping[str, Handle]) -> dict[str, Observation]:
        seen = {key: self._observe(h) for key, h in handles.items()}
        holding = {key: h["gpus"] for key, h in handles.items() if h.get("gpus") and seen[key].phase == Phase.RUNNING}
        if holding and (lost := self._lost_gpus()):
            for key, held in holding.items():
                if gone := sorted(set(held) & lost):
                    seen[key] = Observation(Phase.UNKNOWN, reason="gpu_lost", message=(
                        f"GPU {', '.join(map(str, gone))} is no longer found on this machine; the instance is "
                        "left running (not failed) until the GPU is back or it is stopped"))
        return seen

    def _lost_gpus(self) -> set[int]:
        """Indices handed out at start that the inventory no longer finds (read again at most every
        :data:`GPU_RECHECK_S`; never for an inventory the settings gave)."""
        if self._inventory is not None and self.clock() - self._gpus_seen_at >= GPU_RECHECK_S:
            self._gpus_seen_at = self.clock()
            self._found_now = {g.index for g in self._inventory()}
        return set() if self._found_now is None else {g.index for g in self.gpus} - self._found_now

    def _observe(self, handle: Handle) -> Observation:
        """A few ``/proc`` reads; no subprocess, no scan."""
        pid, ticks = pid_ticks(handle)
        if pid is None:
            return GONE
        child = self._child_for(handle)
        if child is not None:
            rc = child.reap()
            return self._running(handle) if rc is None else exited(handle, rc, oom=child.oom)
        if procinfo.is_alive(pid, ticks):
            return self._running(handle)
        # Not our child: the hub that reaped it may have recorded how it ended ...
        record = self._read_json(handle["instance_id"], "exit.json")
        if record is not None and record.get("pid") == pid and record.get("start_ticks") == ticks:
            return exited(handle, int(record["returncode"]), oom=bool(record.get("oom")))
        # ... or it died unwatched, and only its cgroup remembers an OOM kill.
        if self._oom(handle["instance_id"]):
            return exited(handle, -signal.SIGKILL, oom=True)
        return GONE

    def _oom(self, iid: str) -> bool:
        return self._cgroups is not None and Cgroups.oom_killed(self._cgroups.memory_dir(iid))

    def _running(self, handle: Handle) -> Observation:
        """A live instance: ``RUNNING``, with its URL once its listener is proven to be its own.

        A Unix socket must be a socket owned by the instance's account (its
        directory admits nobody else); a TCP port's listener must be held by one
        of the instance's processes.  Until then there is no URL, so the hub
        sends nothing (not even the readiness probe's token) to a listener that
        may be somebody else's; a port held by another process fails the instance.
        """
        path = handle.get("socket")
        if path:
            try:
                st = os.lstat(path)
            except OSError:
                return NOT_LISTENING
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != handle.get("uid"):
                return Observation(Phase.FAILED, message="its socket was replaced by something that is not the "
                                   "instance's; the hub did not connect to it", reason="listener_not_ours")
            return Observation(Phase.RUNNING, url=f"unix:{path}")
        port = handle.get("port")
        if not isinstance(port, int):
            return Observation(Phase.RUNNING)  # it listens nowhere (a job)
        iid = str(handle.get("instance_id"))
        verdict = netinfo.judge(port, lambda: self._members(handle), known=self._listeners.get(iid, frozenset()))
        if not verdict.listening:
            return NOT_LISTENING
        if not verdict.ours:
            return Observation(Phase.FAILED, reason="listener_not_ours", message=(
                f"port {port} is held by another process (uid {verdict.stranger_uid}), not the instance's; "
                f"the hub did not connect to it"))
        self._listeners[iid] = verdict.inodes
        return Observation(Phase.RUNNING, url=f"http://{handle.get('host', HOST)}:{port}")

    def _members(self, handle: Handle, cgroup_dirs: list[Path] | None = None) -> set[int]:
        """The live processes of the instance: its cgroups' and its leader's process group."""
        iid = handle.get("instance_id")
        if cgroup_dirs is None:
            valid = isinstance(iid, str) and INSTANCE_ID_RE.match(iid)
            cgroup_dirs = self._cgroups.dirs(iid) if self._cgroups is not None and valid else []  # type: ignore[arg-type]
        found = Cgroups.pids(cgroup_dirs)
        pid, ticks = pid_ticks(handle)
        if pid is not None:
            pgid = int(handle.get("pgid") or pid)
            found |= procinfo.instance_group(pid, pgid, ticks, handle.get("uid"))
        return found

    # -- terminate --------------------------------------------------------------

    async def terminate(self, handle: Handle, *, grace: float = 5.0) -> bool:
        iid = handle.get("instance_id")
        if not isinstance(iid, str) or not INSTANCE_ID_RE.match(iid):
            iid = None
        # Cgroups come from the instance id, never from the handle, so a bad
        # handle cannot point terminate at somebody else's cgroup.
        cgroup_dirs = self._cgroups.dirs(iid) if self._cgroups is not None and iid else []
        pid, ticks = pid_ticks(handle)
        child = self._child_for(handle)
        pgid = int(handle.get("pgid") or pid or 0)

        def members() -> set[int]:
            if child is not None:
                child.reap()  # our leader must not linger as a zombie
            return self._members(handle, cgroup_dirs)

        def send(sig: int) -> None:
            if pid is not None and (child.reap() is None if child else procinfo.is_alive(pid, ticks)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)  # the whole group at once, while we know it is ours
            for p in members():  # stragglers that left the group, and those of a dead leader
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, sig)

        async def gone_within(seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while members():
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(POLL_S)
            return True

        if members():
            log.info("instance %s: SIGTERM to process group %s", iid, pgid)
            send(signal.SIGTERM)
            if not await gone_within(grace):
                log.info("instance %s: still running after %.1f s, SIGKILL", iid, grace)
                send(signal.SIGKILL)
                if not await gone_within(KILL_WAIT_S):
                    return False
        for _ in range(20):  # the kernel may take a moment to empty a cgroup
            if Cgroups.remove(cgroup_dirs, quiet=True):
                break
            await asyncio.sleep(POLL_S)
        if iid is not None:
            if child is not None:
                self._children.pop(iid, None)
            self._listeners.pop(iid, None)
            self._forget(iid, handle.get("pid"))
        return True

    # -- listing, logs, health ----------------------------------------------------

    async def find(self, instance_id: str) -> Handle | None:
        """One file read: the instance's recorded handle, if its process still lives."""
        if not INSTANCE_ID_RE.match(instance_id):
            return None
        handle = self._read_json(instance_id, "handle.json")
        ok = handle is not None and handle.get("hub_id") == self.hub_id and handle.get("instance_id") == instance_id
        return handle if ok and self._alive(handle) else None

    async def list_owned(self) -> list[Handle]:
        return [h for h in self._all_handles() if h.get("hub_id") == self.hub_id and self._alive(h)]

    async def logs(self, handle: Handle, *, tail: int = 100) -> AsyncIterator[str]:
        iid = handle.get("instance_id")
        if not isinstance(iid, str) or not INSTANCE_ID_RE.match(iid):
            return
        for line in await asyncio.to_thread(procinfo.tail_lines, self.state_dir / iid / "output.log", tail):
            yield line

    async def read_log(self, handle: Handle, offset: int, *, limit: int = 1 << 20) -> tuple[bytes, int]:
        iid = handle.get("instance_id")
        if not isinstance(iid, str) or not INSTANCE_ID_RE.match(iid):
            return b"", offset
        return await asyncio.to_thread(procinfo.read_at, self.state_dir / iid / "output.log", offset, limit)

    async def health(self) -> None:
        probe = self.state_dir / f".health-{os.getpid()}"
        try:
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise BackendUnavailable(f"state directory {self.state_dir} is not writable: {exc}") from exc

    async def close(self) -> None:
        """Stop watching children; the instances themselves keep running."""
        for child in self._children.values():
            child.close()

    # -- helpers ------------------------------------------------------------------

    def _child_for(self, handle: Handle) -> Child | None:
        child = self._children.get(str(handle.get("instance_id")))
        return child if child is not None and child.popen.pid == handle.get("pid") else None

    def _alive(self, handle: Handle) -> bool:
        pid, ticks = pid_ticks(handle)
        if pid is None:
            return False
        child = self._child_for(handle)
        return child.reap() is None if child is not None else procinfo.is_alive(pid, ticks)

    def _read_json(self, iid: str, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.state_dir / iid / name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _all_handles(self) -> list[Handle]:
        handles = (
            self._read_json(p.parent.name, p.name) for p in sorted(self.state_dir.glob("*/handle.json"))
        )
        return [h for h in handles if h is not None and INSTANCE_ID_RE.match(str(h.get("instance_id")))]

    def _forget(self, iid: str, pid: Any) -> None:
        """Remove the handle and exit record of a terminated instance (not its log)."""
        for name in ("handle.json", "exit.json"):
            current = self._read_json(iid, name)
            # Only the instance being terminated: a newer submit may have replaced it.
            if current is not None and current.get("pid") == pid:
                with contextlib.suppress(FileNotFoundError):
                    (self.state_dir / iid / name).unlink()
