"""labhub_serve's ``--replicas N``: N serving processes on one listening socket. Runs inside the serve
runtime: imports nothing from LabHub.

The parent binds the socket (it listens only once a replica has loaded every model: until then a
connection is refused, as for one process) and starts N copies of the program on it (``--fd``), each
loading every model. The kernel spreads connections over the processes accepting on the socket. Their
counters go to one multiprocess directory, so any replica's ``/metrics`` has them all. Changes to what is
served (uploads, deletes, defaults) are refused with 409: each replica serves what it started with.

The parent forwards SIGTERM and SIGINT, and when one replica ends, ends the others and exits with the
first one's status (so a model that does not load ends the program with its loader's error as the
last line on stderr, as without replicas).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPLICA_ENV = "LABHUB_SERVE_REPLICA"  # set in each replica: its number
STOP_GRACE_S = 12.0  # uvicorn's own grace is 10 s


def child_argv(args: argparse.Namespace, fd: int) -> list[str]:
    """The arguments of one replica: the parent's, listening on the inherited ``fd``."""
    argv = [sys.executable, "-m", "labhub_serve", "--fd", str(fd), "--max-upload-bytes", str(args.max_upload_bytes)]
    for model in args.model:
        argv += ["--model", model]
    for default in args.default:
        argv += ["--default", default]
    if args.store:
        argv += ["--store", args.store]
    if args.allow_pickle:
        argv.append("--allow-pickle")
    return argv


def supervise(args: argparse.Namespace, sock: socket.socket) -> int:
    """Run ``args.replicas`` replicas on ``sock`` until one ends or a signal comes; their status."""
    metrics = tempfile.mkdtemp(prefix="labhub-serve-metrics-")
    fd = sock.fileno()
    where = f"socket {args.socket}" if args.socket else f"fd {args.fd}" if args.fd is not None \
        else "{}:{}".format(*sock.getsockname()[:2])
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics)
    children = [subprocess.Popen(child_argv(args, fd), pass_fds=(fd,), env=dict(env, **{REPLICA_ENV: str(n)}))
                for n in range(args.replicas)]
    sock.close()  # the replicas hold it
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    asked = False
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    print(f"labhub_serve: {args.replicas} replicas on {where}, pids {' '.join(str(c.pid) for c in children)}",
          flush=True)
    try:
        status = _first_exit(children)
        asked = bool(stopping)
        if not asked:  # one ended by itself: the service is not whole any more
            forward(signal.SIGTERM, None)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    finally:
        shutil.rmtree(metrics, ignore_errors=True)
    if asked:
        return 0  # stopped as asked
    return status if status > 0 else 128 - status if status < 0 else 1  # ending by itself is a failure


def _first_exit(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait until any child ends; its return code (negative: the signal that ended it)."""
    while True:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue
        for child in children:
            if child.pid == pid:
                child.returncode = os.waitstatus_to_exitcode(raw)
                return child.returncode
