"""Helpers shared by the benchmark figures: processes, /proc accounting, HTTP polling,
wrk, statistics.  Standard library only (runs in LabHub's virtualenv)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER_ENV = HERE / ".env"
CHP_BIN = HERE / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
LABHUB_PY = Path(sys.executable)  # run.py runs in LabHub's virtualenv
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(*args: object) -> None:
    print("bench:", *args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpus() -> str:
    """The CPU set every process of every system runs on (``BENCH_CPUS``, default: all)."""
    return os.environ.get("BENCH_CPUS") or ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def ncpus() -> int:
    n = 0
    for part in cpus().split(","):
        a, _, b = part.partition("-")
        n += int(b) - int(a) + 1 if b else 1
    return n


def nice_level() -> int:
    """``BENCH_NICE``: the niceness every measured process gets (e.g. -5 on a machine shared with
    other jobs, so they disturb the measurement less); the same for every system.  Default 0."""
    return int(os.environ.get("BENCH_NICE") or 0)


def pinned(argv: Sequence[str]) -> list[str]:
    """``argv`` on the benchmark's CPUs (and niceness): every system gets the same."""
    out = list(argv)
    if nice_level() and shutil.which("nice"):
        out = [shutil.which("nice"), "-n", str(nice_level()), *out]  # type: ignore[list-item]
    taskset = shutil.which("taskset")
    return [taskset, "-c", cpus(), *out] if taskset else out


# -- processes -------------------------------------------------------------------------


class Proc:
    """A child started in its own session (so its whole tree can be stopped)."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None, log_path: Path | None = None,
                 cwd: Path | None = None, pin: bool = True, user: str | None = None) -> None:
        """``user``: run as this system account (the harness itself may be root)."""
        self.argv = list(argv)
        self.log_path = log_path
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.t0 = time.perf_counter()
        ids = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []} if user else {}
        self.popen = subprocess.Popen(pinned(argv) if pin else list(argv), env=env, cwd=cwd, stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                      **ids)
        if log_path:
            out.close()  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the process group; SIGKILL what is left after ``timeout``."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def kill_tree(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()  # fields from 3 (state) on


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                kids.setdefault(int(st[1]), []).append(int(name))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_s(pid: int, *, with_children: bool = True) -> float:
    """utime+stime of ``pid`` (plus its reaped children's when ``with_children``)."""
    st = _stat(pid)
    if st is None:
        return 0.0
    ticks = int(st[11]) + int(st[12]) + ((int(st[13]) + int(st[14])) if with_children else 0)
    return ticks / TICK


def tree_cpu_s(pid: int) -> float:
    return sum(cpu_s(p) for p in tree(pid))


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_rss_mib(pid: int) -> float:
    return sum(rss_mib(p) for p in tree(pid))


def pid_listening_on(port: int) -> int | None:
    """The pid whose socket listens on 127.0.0.1:``port`` (via /proc/net/tcp inodes)."""
    inode = None
    hexport = f"{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1].endswith(":" + hexport) and parts[3] == "0A":
                    inode = parts[9]
                    break
        if inode:
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = f"/proc/{name}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") == target:
                        return int(name)
    return None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- HTTP ------------------------------------------------------------------------------------


async def http_request(host: str, port: int, method: str, path: str, headers: dict[str, str] | None = None,
                       body: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """One request on a fresh connection (``Connection: close``); ``(status, body)``."""
    hdrs = {"Host": f"{host}:{port}", "Connection": "close", **(headers or {})}
    if body is not None:
        hdrs["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(head.encode() + (body or b""))
            data = await reader.read()
        finally:
            writer.close()
    status = int(data[9:12]) if data.startswith(b"HTTP/1.") else 0
    return status, data.partition(b"\r\n\r\n")[2]


async def sse_until(host: str, port: int, path: str, headers: dict[str, str], done, *,  # noqa: ANN001
                    timeout: float = 180.0) -> dict:
    """Follow a Server-Sent Events stream until ``done(data)`` is true for an event's JSON data.

    HTTP/1.0, so the stream is close-delimited, not chunked.  Raises if the stream
    ends first.  This is how a browser waits for a launch: no polling."""
    hdrs = {"Host": f"{host}:{port}", "Accept": "text/event-stream", **headers}
    head = f"GET {path} HTTP/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(head.encode())
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"GET {path}: {status!r} {await reader.read(500)!r}")
            while True:
                line = await reader.readline()
                if not line:
                    raise RuntimeError(f"event stream {path} ended before the awaited event")
                if line.startswith(b"data:"):
                    try:
                        data = json.loads(line[5:])
                    except ValueError:
                        continue
                    if done(data):
                        return data
        finally:
            writer.close()


class KeepAlive:
    """A blocking keep-alive HTTP/1.1 client for request/response timings (http.client)."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        import http.client

        self.conn = http.client.HTTPConnection(host, port, timeout=120)
        self.headers = headers

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


async def wait_ready(host: str, port: int, path: str, headers: dict[str, str] | None = None, *,
                     timeout: float = 180.0, interval: float = 0.01, proc: Proc | None = None,
                     want: bytes | None = None) -> float:
    """Poll until ``GET path`` answers 200 (and its body contains ``want``); returns perf_counter()."""
    deadline = time.perf_counter() + timeout
    while True:
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            status, body = await http_request(host, port, "GET", path, headers, timeout=10)
            if status == 200 and (want is None or want in body):
                return time.perf_counter()
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.argv[0]} exited: {proc.tail()}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"GET http://{host}:{port}{path} not ready after {timeout} s")
        await asyncio.sleep(interval)


# -- wrk -------------------------------------------------------------------------------------


def wrk(url: str, *, connections: int, seconds: float, headers: dict[str, str] | None = None) -> dict:
    """One wrk run (one thread, pinned like everything else); the Lua summary as a dict."""
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    argv = [exe, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(HERE / "wrk_report.lua")]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    out = subprocess.run(pinned([*argv, url]), capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
    res = json.loads(line)
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    errs = sum(res["errors"].values())
    if errs:
        log(f"wrk {url}: {errs} errors {res['errors']}")
    return res


# -- statistics ---------------------------------------------------------------------------------


def summary(values: Sequence[float | None]) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "values": [round(v, 6) for v in vals]}


def med(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


@dataclass
class Figure:
    """One row of the results: LabHub, the peer and the baseline, paired."""

    name: str
    unit: str
    target: str
    title: str = ""
    how: str = ""
    ratio_of: str = "labhub / baseline, median of per-pair ratios"
    labhub: list[float | None] = field(default_factory=list)
    peer: list[float | None] = field(default_factory=list)
    baseline: list[float | None] = field(default_factory=list)
    ratios: list[float | None] = field(default_factory=list)
    peer_ratios: list[float | None] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    note: str = ""
    loads: list[list[float]] = field(default_factory=list)  # os.getloadavg() after each round

    def add_ratio(self, a: float | None, b: float | None, *, peer: bool = False) -> None:
        r = a / b if a is not None and b not in (None, 0) else None
        (self.peer_ratios if peer else self.ratios).append(r)
        if not peer:
            self.loads.append(loadavg())

    def to_json(self, check) -> dict:  # noqa: ANN001 - check(fig_dict) -> bool | None
        out = {
            "name": self.name, "title": self.title, "unit": self.unit,
            "labhub": _r(med(self.labhub)), "peer": _r(med(self.peer)), "baseline": _r(med(self.baseline)),
            "ratio": _r(med(self.ratios)), "peer_ratio": _r(med(self.peer_ratios)),
            "target": self.target, "ratio_of": self.ratio_of, "how": self.how,
            "labhub_stats": summary(self.labhub), "peer_stats": summary(self.peer),
            "baseline_stats": summary(self.baseline), "pair_ratios": [_r(x) for x in self.ratios],
            "peer_pair_ratios": [_r(x) for x in self.peer_ratios],
            "loadavg_per_pair": self.loads,
            **self.extra,
        }
        out["meets"] = check(out)
        if self.note:
            out["note"] = self.note
        return out


def _r(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")
