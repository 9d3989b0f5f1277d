"""A real single-node Slurm cluster for the tests, from Debian's ``slurm-wlm`` and ``munge``.

Everything lives in one temporary directory: the munge key and socket, the
``slurm.conf``, state, spool and logs.  The daemons listen on free
non-default ports and run as child processes of the test session, so another
engineer's cluster (or the machine's own) is never touched; :meth:`stop`
cancels every job and ends exactly the processes :meth:`start` began.

Facts that make it work on our machines (Debian 12, root, no systemd, 2 cores):
``proctrack/linuxproc``, ``task/none``, ``jobacct_gather/none``,
``select/cons_tres`` with ``CR_Core_Memory`` and ``DefMemPerCPU`` (without
it each job takes the whole node); ``SlurmdParameters=config_overrides`` lets
the node claim 8 CPUs on a 2-core machine, so several instances fit at once;
``MessageTimeout=2`` makes a command fail within ~1 s while the controller is
down (the default takes 9 s); ``batch_sched_delay=0`` schedules a batch job at
submit (the default may hold it back up to 3 s).  Fake GPUs are ``gres.conf`` ``File=`` entries
pointing at character devices made with ``mknod ... c 1 3`` (``/dev/null``);
jobs that request them see ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

PACKAGES = "slurm-wlm munge"
BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class ClusterError(RuntimeError):
    """The cluster could not be started; the message says why and what to do."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b, path=SBIN_PATH + ":" + os.environ.get("PATH", "")) is None]


class SlurmCluster:
    """One controller and one node named after this machine, with ``gpus`` fake GPUs."""

    def __init__(self, *, cpus: int = 8, memory_mb: int = 65536, gpus: int = 2, partition: str = "debug") -> None:
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.gpus = gpus
        self.partition = partition
        self.node = socket.gethostname().split(".")[0]
        self.root = Path(tempfile.mkdtemp(prefix="labhub-slurm-"))
        self.root.chmod(0o755)  # job users read the conf; munged needs x on every parent
        self.conf = self.root / "slurm.conf"
        self.ctld_port = _free_port()
        self.slurmd_port = _free_port()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # -- the environment every client command needs ---------------------------------
    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf), "PATH": SBIN_PATH, "LANG": "C.UTF-8"}

    def run(self, *argv: str, input: str | None = None, check: bool = True, timeout: float = 30,
            ) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster."""
        result = subprocess.run(list(argv), env={**os.environ, **self.env}, input=input, capture_output=True,
                                text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def squeue_state(self, job_id: str) -> str:
        out = self.run("squeue", "-h", "--states=all", "-j", job_id, "-o", "%T", check=False).stdout.strip()
        return out or "GONE"

    # -- start / stop --------------------------------------------------------------------
    def start(self, timeout: float = 60) -> SlurmCluster:
        if os.geteuid() != 0:
            raise ClusterError("the Slurm test cluster needs root (slurmd runs jobs as other users)")
        if missing := missing_binaries():
            raise ClusterError(f"missing {', '.join(missing)}: install with "
                               f"`apt-get install --no-install-recommends {PACKAGES}` (make test does)")
        try:
            pwd.getpwnam("munge")
        except KeyError as exc:
            raise ClusterError("no `munge` system user: reinstall the munge package") from exc
        self._write_files()
        self._start_munge()
        self.start_controller()
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self.wait_node_idle(timeout)
        return self

    def _write_files(self) -> None:
        for sub in ("state", "spool", "log", "dev"):
            (self.root / sub).mkdir(mode=0o755)
        for i in range(self.gpus):
            os.mknod(self.root / "dev" / f"nvidia{i}", 0o666 | 0o020000, os.makedev(1, 3))
        r = self.root
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        self.conf.write_text(f"""\
ClusterName=labhubtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
SchedulerParameters=batch_sched_delay=0
KillWait=3
MessageTimeout=2
MinJobAge=300
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb}{gres} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        gres_lines = f"Name=gpu File={r}/dev/nvidia[0-{self.gpus - 1}]\n" if self.gpus else ""
        (self.root / "gres.conf").write_text(gres_lines)

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o755)  # clients need x on the socket's directory
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        pw = pwd.getpwnam("munge")
        for path in (munge, key):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        key.chmod(0o400)
        self._spawn("munged", [
            "munged", "-F", f"--socket={munge}/munge.socket", f"--key-file={key}",
            f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed",
        ], user="munge")
        self._wait(lambda: (munge / "munge.socket").exists(), 10, "munged did not create its socket", "munged")

    def start_controller(self) -> None:
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, 20,
                   "slurmctld did not answer `scontrol ping`", "slurmctld")

    def stop_controller(self) -> None:
        """SIGTERM slurmctld (it saves its state) and wait for it; jobs keep running on the node."""
        self._end("slurmctld")

    def wait_node_idle(self, timeout: float = 60) -> None:
        def idle() -> bool:
            out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
            return out.startswith("idle") or out.startswith("mixed") or out.startswith("allocated")
        self._wait(idle, timeout, "the node did not become idle", "slurmd")

    def _wait(self, condition, timeout: float, what: str, daemon: str) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            proc = self._procs.get(daemon)
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
        raise ClusterError(f"{what} within {timeout:g} s; {self._log_hint(daemon)}")

    def _log_hint(self, daemon: str) -> str:
        texts = []
        for path in (self.root / "log" / f"{daemon}.out", self.root / "log" / f"{daemon}.log",
                     self.root / "munge" / "munged.log"):
            if path.exists() and (daemon in path.name):
                lines = path.read_text(errors="replace").splitlines()[-15:]
                texts.append(f"--- {path} ---\n" + "\n".join(lines))
        return "\n".join(texts) or f"no log from {daemon} (in {self.root})"

    def _spawn(self, name: str, argv: list[str], *, user: str | None = None) -> None:
        with self._lock:
            old = self._procs.get(name)
            if old is not None and old.poll() is None:
                return
            out = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - owned by the child
            try:
                self._procs[name] = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={"PATH": SBIN_PATH, "LANG": "C.UTF-8", "SLURM_CONF": str(self.conf)},
                    user=user, group=user, extra_groups=[] if user else None, start_new_session=True,
                )
            finally:
                out.close()

    def _end(self, name: str, timeout: float = 20) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job and wait until none holds resources."""
        if "slurmctld" not in self._procs:
            return
        ids = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        if ids:
            self.run("scancel", *ids, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
                return
            time.sleep(0.1)

    def stop(self) -> None:
        """Cancel all jobs, end every daemon we started, remove the directory."""
        try:
            if self._procs.get("slurmctld") is None and "slurmd" in self._procs:
                with _suppress():
                    self.start_controller()  # jobs are cancelled through the controller
            with _suppress():
                self.cancel_all()
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                self._end(name)
            shutil.rmtree(self.root, ignore_errors=True)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


# -- one cluster per test session, shared by every module that asks -------------------------
_shared: SlurmCluster | None = None
_shared_error: str | None = None
_users = 0


def acquire() -> SlurmCluster:
    """The session's cluster, started on first use; raises :class:`ClusterError` with the reason."""
    global _shared, _shared_error, _users
    if _shared_error is not None:
        raise ClusterError(_shared_error)
    if _shared is None:
        cluster = SlurmCluster()
        try:
            cluster.start()
        except Exception as exc:
            cluster.stop()
            _shared_error = f"cannot start the Slurm test cluster: {exc}"
            raise ClusterError(_shared_error) from exc
        _shared = cluster
    _users += 1
    return _shared


def release() -> None:
    global _shared, _users
    _users -= 1
    if _users <= 0 and _shared is not None:
        _shared.stop()
        _shared = None
