"""The ``jobs`` group: a job's inputs uploaded as a tar.gz, and a job's start.

* ``upload_extract_ratio``: a tar.gz of incompressible data (1 GiB, 1,000 files; quick: 64 MiB,
  100 files) posted as the raw body of ``POST /api/v1/folders/{name}/upload`` to a running
  ``labhub serve`` on loopback, through its public port, until the 201 (the hub receives it to a
  staging file, extracts it safely, moves it into the folder and records it); the baseline is
  ``tar -xzf`` of the same file into a fresh directory on the same disk.  Throughput in archive
  MiB/s, rounds alternating the two; the ratio LabHub / tar.
* ``upload_rss_growth_mib``: the hub process's RSS sampled every 50 ms during those uploads, the
  peak minus the idle RSS just before each.
* ``job_start_overhead_local_s``: ``POST /api/v1/instances`` of a ``kind: job`` template that runs
  the system ``python3`` on a script from the input folder, until the script's first line arrives
  on the followed log (``GET /api/v1/instances/{id}/log?follow=true``); the baseline is the same
  command started by hand (a subprocess with the same environment, as the same account) until its
  first stdout line.
* ``job_start_overhead_slurm_s``: the same job on a private single-node Slurm
  (``tests/slurmcluster.py``, as ``slurm_launch.py`` starts it; needs root and Debian's slurm-wlm
  and munge, else not measured) until its first line on the followed log; the baseline is a raw
  ``sbatch`` of the same command with the same resources, as the same account, until its first
  line is in the job's output file (read every 10 ms).

No peer (JupyterHub has neither folders nor jobs).  The hub runs as in the other groups:
``labhub serve``, local backend, ``LABHUB_ISOLATION=none``, SQLite, as ``nobody`` when the harness
is root; the baselines run as the same account.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import pwd
import resource
import shutil
import socket
import statistics
import subprocess
import tarfile
import time
from pathlib import Path

from hubs import HOST, LABHUB_RUN_AS, LabHub
from lib import LABHUB_PY, REPO, Figure, Proc, cpu_s, http_request, loadavg, log, pinned, rss_mib

UPLOAD_TARGET_RATIO = 0.7
UPLOAD_RSS_TARGET_MIB = 50.0
START_TARGET_S = 0.3
SLURM_START_TARGET_S = 0.5
SLURM_ACCOUNT_PREFIX = "lhbench-"  # the per-user accounts the Slurm hub makes (removed after, if new)
RSS_INTERVAL_S = 0.05
JOB_PAUSE_S = 1.0  # the script sleeps after its first line, as a job that goes on working would
# The command of the job template (tests/api/test_jobs.py's SCRIPT_TEMPLATE): the system python3 runs a
# script of the input folder.  The hand-started baseline runs the very same argv.
RUNPY = ("import os, runpy, sys; runpy.run_path(os.path.join(os.environ.get('LABHUB_INPUT', '.'), sys.argv[1]), "
         "run_name='__main__')")
# its first line says when it was printed (the wall clock, shared with the harness): that splits the time
# into the process's start and the line's way through the log
SCRIPT = f"import time\nprint('started', time.time(), flush=True)\ntime.sleep({JOB_PAUSE_S})\n"
FIRST_LINE = b"started "
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # what the local backend gives a job (never the hub's venv)


class Counts:
    """The group's sizes (run.py's Config says quick or full)."""

    def __init__(self, quick: bool) -> None:
        self.archive_bytes = (64 if quick else 1024) << 20
        self.archive_files = 100 if quick else 1000
        self.upload_rounds = 1 if quick else 3
        self.start_rounds = 1 if quick else 9
        self.slurm_rounds = 1 if quick else 7
        self.warm = not quick


async def jobs_figures(cfg, work: Path, peers: bool) -> list[Figure]:  # noqa: ANN001 - run.Config
    counts = Counts(cfg.quick)
    work = work / "jobs"
    lh = LabHub(work)
    (lh.templates / "bench-job.yaml").write_text(json.dumps({
        "title": "Benchmark job (python3 script)", "kind": "job", "input": "optional",
        "command": ["python3", "-c", RUNPY, "{param:script}"],
        "params": [{"name": "script", "default": "main.py"}], "hours": {"default": 1, "max": 2},
    }))
    lh.seed(token_users=1)
    lh.start()
    try:
        await lh.wait_healthy()
        figures = await upload_figures(counts, lh, work)
        figures.append(await job_start_figure(counts, lh, work, await _job_input(lh, work)))
    finally:
        lh.stop()
    figures.append(await slurm_start_figure(counts, work / "slurm"))
    return figures


# -- upload ---------------------------------------------------------------------------------------------


def build_archive(path: Path, total: int, files: int) -> None:
    """A tar.gz of ``files`` files of random bytes (``total`` in all), in 10 directories: gzip cannot
    shrink it, so it is as large compressed as extracted (like inputs that are already compressed)."""
    size = total // files
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for i in range(files):
            data = os.urandom(size + (total - size * files if i == files - 1 else 0))
            info = tarfile.TarInfo(f"inputs/part-{i % 10}/file-{i:04d}.bin")
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))


def _ids() -> dict:
    if not LABHUB_RUN_AS:
        return {}
    return {"user": LABHUB_RUN_AS, "group": pwd.getpwnam(LABHUB_RUN_AS).pw_gid, "extra_groups": []}


def _own(path: Path) -> None:
    """``path`` (a new directory) is the account's that the hub and the baselines run as."""
    if LABHUB_RUN_AS:
        account = pwd.getpwnam(LABHUB_RUN_AS)
        os.chown(path, account.pw_uid, account.pw_gid)


def post_file(port: int, path: str, headers: dict[str, str], file: Path) -> tuple[int, bytes, float, float]:
    """POST ``file`` as the raw body (sendfile, so the client costs next to nothing) on a fresh connection;
    (status, response body, seconds from the first byte sent until the response is complete, seconds until
    the last byte was sent: the kernel buffers a few MiB at most, so about when the hub had taken the body in)."""
    size = file.stat().st_size
    hdrs = {"Host": f"{HOST}:{port}", "Content-Type": "application/gzip", "Content-Length": str(size),
            "Connection": "close", **headers}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    data = b""
    with socket.create_connection((HOST, port), timeout=600) as sock, open(file, "rb") as fh:
        t0 = time.perf_counter()
        try:
            sock.sendall(head.encode())
            sock.sendfile(fh)
        except OSError:  # the hub answered early (e.g. 413) and closed: its answer is still to be read
            pass
        sent = time.perf_counter() - t0
        while chunk := sock.recv(1 << 16):
            data += chunk
        took = time.perf_counter() - t0
    status = int(data[9:12]) if data.startswith(b"HTTP/1.") else 0
    return status, data.partition(b"\r\n\r\n")[2], took, sent


async def _upload_round(lh: LabHub, archive: Path, name: str, files: int) -> dict:
    """One timed upload into folder ``name`` with the hub's RSS sampled meanwhile; the folder is deleted after."""
    pid = lh.proc.pid  # type: ignore[union-attr]
    idle = []
    for _ in range(10):  # the hub at rest just before
        idle.append(rss_mib(pid))
        await asyncio.sleep(RSS_INTERVAL_S)
    samples: list[float] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(rss_mib(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), RSS_INTERVAL_S)

    sampler = asyncio.create_task(sample())
    cpu0 = cpu_s(pid, with_children=False)
    try:
        status, body, took, sent = await asyncio.to_thread(post_file, lh.port, f"/api/v1/folders/{name}/upload",
                                                     lh.auth("bench1"), archive)
    finally:
        done.set()
        await sampler
    samples.append(rss_mib(pid))
    cpu = cpu_s(pid, with_children=False) - cpu0
    if status != 201:
        raise RuntimeError(f"labhub upload failed: {status} {body[:300]!r}")
    answer = json.loads(body)
    if answer["added_files"] != files:
        raise RuntimeError(f"labhub upload: {answer['added_files']} files extracted, {files} expected")
    status, _ = await lh.api("DELETE", f"/api/v1/folders/{name}", "bench1")
    if status != 204:
        raise RuntimeError(f"labhub: deleting folder {name} failed: {status}")
    rest = statistics.median(idle)
    return {"s": took, "sent_s": sent, "cpu_s": cpu, "idle_mib": rest, "peak_mib": max(samples),
            "growth_mib": max(samples) - rest, "samples": len(samples), "added_bytes": answer["added_bytes"]}


def _tar_round(archive: Path, dest: Path) -> tuple[float, float]:
    """``tar -xzf archive -C dest`` (a fresh directory), as the hub's account, pinned: (seconds, CPU-seconds
    of tar and its gzip)."""
    dest.mkdir()
    _own(dest)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(pinned(["tar", "-xzf", str(archive), "-C", str(dest)]), check=True, timeout=900, **_ids())
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(dest)
    return took, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


async def upload_figures(counts: Counts, lh: LabHub, work: Path) -> list[Figure]:
    mib = counts.archive_bytes / 2**20
    ratio = Figure("upload_extract_ratio", "MiB/s", f">= {UPLOAD_TARGET_RATIO:g}x tar -xzf",
                   title=f"upload + extract a {mib:.0f} MiB tar.gz ({counts.archive_files} files), / tar -xzf",
                   ratio_of="labhub MiB/s / tar -xzf MiB/s, median of per-pair ratios",
                   how=f"A tar.gz of {counts.archive_files} files of random bytes ({mib:.0f} MiB, as large "
                       "compressed as extracted), built once, POSTed as the raw body (sendfile) of "
                       "/api/v1/folders/{name}/upload through the hub's public port on loopback; LabHub's "
                       "figure is archive MiB / seconds from the request's first byte until the 201 is read: "
                       "it counts the HTTP transfer through the proxy, the hub writing the body to a staging "
                       "file, the safe extraction, the move into the folder and its record (labhub_body_sent_s: "
                       "until the client had sent the last byte, about the end of the receiving part; labhub_cpu_s: "
                       "the hub process's utime+stime meanwhile, all threads). Baseline: "
                       "`tar -xzf` of the same file into a fresh directory on the same disk (same account, "
                       "same CPUs), archive MiB / its seconds (tar_cpu_s: tar's and gzip's CPU-seconds). The "
                       "archive is in the page cache for both; "
                       "`sync` before each; rounds alternate the order.")
    rss = Figure("upload_rss_growth_mib", "MiB", f"<= {UPLOAD_RSS_TARGET_MIB:g} MiB",
                 title=f"hub RSS growth during a {mib:.0f} MiB upload",
                 ratio_of="none (no peer or baseline)",
                 how=f"VmRSS of the `labhub serve` process every {RSS_INTERVAL_S * 1e3:.0f} ms during each "
                     "upload of upload_extract_ratio (request to 201): the peak minus the median of 10 "
                     "samples at rest just before it (after a warm-up upload, so the folders API is built). "
                     "idle_mib and peak_mib in the JSON.")
    archive = work / "upload.tar.gz"
    t0 = time.perf_counter()
    await asyncio.to_thread(build_archive, archive, counts.archive_bytes, counts.archive_files)
    archive.chmod(0o644)
    log(f"jobs: built {archive.stat().st_size / 2**20:.0f} MiB archive of {counts.archive_files} files in "
        f"{time.perf_counter() - t0:.1f} s")
    size = archive.stat().st_size
    small = work / "warm.tar.gz"  # the first upload builds the folders API (the hub mounts it on first use)
    await asyncio.to_thread(build_archive, small, 1 << 20, 4)
    small.chmod(0o644)
    await _upload_round(lh, small, "warm", 4)
    if counts.warm:  # one unmeasured round of each: warm caches, allocator arenas
        await _upload_round(lh, archive, "warm-big", counts.archive_files)
        await asyncio.to_thread(_tar_round, archive, work / "tar-warm")
    for r in range(counts.upload_rounds):
        res: dict[str, float] = {}
        for who in ("labhub", "tar") if r % 2 == 0 else ("tar", "labhub"):
            os.sync()
            if who == "labhub":
                up = await _upload_round(lh, archive, f"up{r}", counts.archive_files)
                res["labhub"], res["labhub_sent"], res["labhub_cpu"] = up["s"], up["sent_s"], up["cpu_s"]
            else:
                res["tar"], res["tar_cpu"] = await asyncio.to_thread(_tar_round, archive, work / f"tar-{r}")
        lh_rate, tar_rate = size / 2**20 / res["labhub"], size / 2**20 / res["tar"]
        ratio.labhub.append(lh_rate)
        ratio.baseline.append(tar_rate)
        ratio.add_ratio(lh_rate, tar_rate)
        for key, value in (("labhub_s", res["labhub"]), ("labhub_body_sent_s", res["labhub_sent"]),
                           ("labhub_cpu_s", res["labhub_cpu"]), ("tar_s", res["tar"]), ("tar_cpu_s", res["tar_cpu"])):
            ratio.extra.setdefault(key, []).append(round(value, 3))
        rss.labhub.append(up["growth_mib"])
        rss.add_ratio(None, None)
        for key in ("idle_mib", "peak_mib", "samples"):
            rss.extra.setdefault(key, []).append(round(up[key], 1))
        log(f"upload round {r}: labhub {res['labhub']:.2f} s ({lh_rate:.0f} MiB/s), tar -xzf {res['tar']:.2f} s "
            f"({tar_rate:.0f} MiB/s); CPU-s labhub {res['labhub_cpu']:.2f}, tar {res['tar_cpu']:.2f}; hub RSS "
            f"{up['idle_mib']:.0f} -> {up['peak_mib']:.0f} MiB | load {loadavg()}")
    ratio.extra.update({"archive_bytes": size, "extracted_bytes": up["added_bytes"], "files": counts.archive_files,
                        "rounds": counts.upload_rounds})
    archive.unlink()
    return [ratio, rss]


# -- job start --------------------------------------------------------------------------------------------


def _targz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _printed_at(out: bytes) -> float:
    """When the script printed its first line (its own time.time())."""
    return float(out.partition(FIRST_LINE)[2].split(b"\n", 1)[0])


async def _first_log_line(lh: LabHub, iid: str, timeout: float = 60) -> tuple[float, bytes]:
    """Follow the job's log (HTTP/1.0: close-delimited) until its first line; (time.time() then, what was
    read until the job ended and the stream closed)."""
    hdrs = {"Host": f"{HOST}:{lh.port}", **lh.auth("bench1")}
    head = (f"GET /api/v1/instances/{iid}/log?follow=true HTTP/1.0\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(HOST, lh.port)
        try:
            writer.write(head.encode())
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"GET log of {iid}: {status!r} {await reader.read(500)!r}")
            await reader.readuntil(b"\r\n\r\n")
            got = b""
            while FIRST_LINE not in got or b"\n" not in got.partition(FIRST_LINE)[2]:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise RuntimeError(f"log of job {iid} ended before its first line: {got[-500:]!r}")
                got += chunk
            at = time.time()
            rest = await reader.read()  # until the job has ended
            return at, got + rest
        finally:
            writer.close()


async def _lh_job(lh: LabHub, name: str, backend: str | None = None) -> dict:
    t0 = time.time()
    status, body = await lh.api("POST", "/api/v1/instances", "bench1",
                                {"template": "bench-job", "name": name, "input": "job-input", "size": "small",
                                 "params": {"script": "main.py"}, **({"backend": backend} if backend else {})})
    posted = time.time()
    if status != 201 or not isinstance(body, dict):
        raise RuntimeError(f"labhub job submit failed: {status} {body}")
    at, out = await _first_log_line(lh, body["id"])
    for _ in range(100):  # the stream ends with the job; its status says how
        _, inst = await lh.api("GET", f"/api/v1/instances/{body['id']}", "bench1")
        if isinstance(inst, dict) and inst.get("status") in ("succeeded", "failed", "stopped", "expired"):
            break
        await asyncio.sleep(0.05)
    if not isinstance(inst, dict) or inst.get("status") != "succeeded":
        raise RuntimeError(f"labhub job {body['id']}: {inst}")
    printed = _printed_at(out)
    _, events = await lh.api("GET", f"/api/v1/instances/{body['id']}/events", "bench1")
    marks = {}  # the job's lifecycle events (the hub's clock), seconds after the submit began
    for ev in events if isinstance(events, list) else []:
        at_ev = dt.datetime.fromisoformat(ev["at"].replace("Z", "+00:00")).timestamp()
        marks.setdefault(ev["status"], round(at_ev - t0, 4))
    return {"s": at - t0, "submit_s": posted - t0, "printed_s": printed - t0, "delivered_s": at - printed,
            "events": marks}


def _bare_job(work: Path, inputs: Path) -> dict:
    """The job's command started by hand (same argv, environment and account) until its first stdout line."""
    home = work / f"bare-{time.monotonic_ns()}"
    home.mkdir()
    (home / "output").mkdir()
    _own(home)
    _own(home / "output")
    user = LABHUB_RUN_AS or pwd.getpwuid(os.geteuid()).pw_name
    env = {"PATH": SYSTEM_PATH, "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "USER": user,
           "LOGNAME": user, "SHELL": "/bin/bash", "LABHUB_INPUT": str(inputs),
           "LABHUB_OUTPUT": str(home / "output"), "LABHUB_METRICS": str(home / "metrics.jsonl")}
    python3 = shutil.which("python3", path=SYSTEM_PATH) or "python3"
    t0 = time.time()
    proc = subprocess.Popen(pinned([python3, "-c", RUNPY, "main.py"]), env=env, cwd=home, stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, **_ids())
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        at = time.time()
        if not line.startswith(FIRST_LINE):
            raise RuntimeError(f"hand-started job printed {line!r}")
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(home, ignore_errors=True)
    return {"s": at - t0, "printed_s": _printed_at(line) - t0}


def _event_medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Per lifecycle status, the median of when the hub recorded it (seconds after the submit began)."""
    statuses = [k for k in rounds[0]] if rounds else []
    return {k: round(statistics.median(r[k] for r in rounds if k in r), 4) for k in statuses}


async def _job_input(lh: LabHub, work: Path) -> Path:
    """The job's input folder ``job-input`` (main.py) uploaded to ``lh``; the local copy the baselines run."""
    inputs = work / "job-input"
    inputs.mkdir(exist_ok=True)
    (inputs / "main.py").write_text(SCRIPT)
    inputs.chmod(0o755)
    (inputs / "main.py").chmod(0o644)
    status, raw = await http_request(HOST, lh.port, "POST", "/api/v1/folders/job-input/upload",
                                     {**lh.auth("bench1"), "Content-Type": "application/gzip"},
                                     _targz({"main.py": SCRIPT}))
    if status != 201:
        raise RuntimeError(f"labhub upload of the job's input failed: {status} {raw[:300]!r}")
    return inputs


async def job_start_figure(counts: Counts, lh: LabHub, work: Path, inputs: Path) -> Figure:
    fig = Figure("job_start_overhead_local_s", "s", f"<= +{START_TARGET_S:g} s",
                 title="job submit -> first log line (local backend), / started by hand",
                 how="POST /api/v1/instances of a `kind: job` template (the system python3 running main.py of "
                     "the input folder, through runpy as tests/api/test_jobs.py's template does; the script "
                     f"prints one line at once, then sleeps {JOB_PAUSE_S:g} s) until that line is read from "
                     "GET /api/v1/instances/{id}/log?follow=true, opened right after the 201 (one client "
                     "connection per call, through the hub's public port). Baseline: the same argv started "
                     "by hand (subprocess, same environment as the backend gives a job, same account, same "
                     "CPUs) until its first stdout line (a pipe). The figure is LabHub's median; the target is "
                     "on added_s, the difference of the medians. The script's line carries its own time.time(), "
                     "which splits LabHub's time: submit_s (POST until its 201), printed_s (POST until the "
                     "script printed: the process's start), delivered_s (printed until read from the log "
                     "stream); bare_printed_s the same for the baseline; events_s: when the hub recorded each "
                     "status of the job (its clock; medians). Rounds alternate the order.")
    if counts.warm:
        await _lh_job(lh, "warm")
        await asyncio.to_thread(_bare_job, work, inputs)
    parts: dict[str, list[float]] = {"submit_s": [], "printed_s": [], "delivered_s": [], "bare_printed_s": []}
    events: list[dict[str, float]] = []
    for r in range(counts.start_rounds):
        res: dict[str, dict] = {}
        for who in ("labhub", "bare") if r % 2 == 0 else ("bare", "labhub"):
            if who == "labhub":
                res["labhub"] = await _lh_job(lh, f"start{r}")
            else:
                res["bare"] = await asyncio.to_thread(_bare_job, work, inputs)
        lab, bare = res["labhub"], res["bare"]
        fig.labhub.append(lab["s"])
        fig.baseline.append(bare["s"])
        fig.add_ratio(lab["s"], bare["s"])
        for key in ("submit_s", "printed_s", "delivered_s"):
            parts[key].append(round(lab[key], 4))
        parts["bare_printed_s"].append(round(bare["printed_s"], 4))
        events.append(lab["events"])
        log(f"job start round {r}: labhub {lab['s']:.3f} s (201 after {lab['submit_s']:.3f} s, printed after "
            f"{lab['printed_s']:.3f} s, on the log {lab['delivered_s']:.3f} s later), by hand {bare['s']:.3f} s "
            f"| load {loadavg()}")
    fig.extra["added_s"] = round(statistics.median(fig.labhub) - statistics.median(fig.baseline), 4)
    fig.extra["added_pairs_s"] = [round(a - b, 4) for a, b in zip(fig.labhub, fig.baseline, strict=True)]
    fig.extra.update(parts)
    fig.extra["median"] = {k: round(statistics.median(v), 4) for k, v in parts.items()}
    fig.extra["events_s"] = _event_medians(events)
    fig.extra["rounds"] = counts.start_rounds
    return fig


# -- job start on Slurm -------------------------------------------------------------------------------------


def _slurm_unavailable() -> str:
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as other users)"
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "squeue")
               if shutil.which(b, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    return f"missing {', '.join(missing)} (apt-get install slurm-wlm munge: make system)" if missing else ""


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class SlurmHub(LabHub):
    """``labhub serve`` with the Slurm backend only, as root: jobs run as per-user accounts
    (``slurm.run_as`` auto), as a site runs it; the local backend (and its isolation) is off."""

    def __init__(self, work: Path, conf: Path) -> None:
        super().__init__(work)
        if LABHUB_RUN_AS:  # LabHub made the data directory the unprivileged account's
            os.chown(self.data, 0, 0)
        self.env.pop("LABHUB_ISOLATION")
        self.env.update({"LABHUB_BACKENDS": "slurm", "LABHUB_SLURM__CONF": str(conf),
                         "LABHUB_SLURM__ACCOUNT_PREFIX": SLURM_ACCOUNT_PREFIX})

    def _ids(self) -> dict:
        return {}

    def start(self) -> Proc:
        self.proc = Proc([str(LABHUB_PY), "-m", "labhub.cli.main", "serve"], env=self.env,
                         log_path=self.work / "labhub.log")
        return self.proc


def _raw_sbatch(cluster, work: Path, inputs: Path, account: str) -> dict:  # noqa: ANN001 - SlurmCluster
    """``sbatch`` of the job's command (same resources, same account) until its first line is in its
    output file (read every 10 ms); then it is cancelled."""
    home = work / f"raw-{time.monotonic_ns()}"
    home.mkdir(mode=0o755)
    (home / "output").mkdir()
    ids = pwd.getpwnam(account)
    for d in (home, home / "output"):
        os.chown(d, ids.pw_uid, ids.pw_gid)
    out = home / "job.out"
    python3 = shutil.which("python3", path=SYSTEM_PATH) or "python3"
    script = (f"#!/bin/bash\n#SBATCH --output={out}\n#SBATCH --chdir={home}\n#SBATCH --time=62\n"
              f"#SBATCH --nodes=1\n#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=1\n#SBATCH --mem=2048M\n"
              f"#SBATCH --no-requeue\nexport PATH={SYSTEM_PATH} LABHUB_INPUT={inputs} "
              f"LABHUB_OUTPUT={home / 'output'} LABHUB_METRICS={home / 'metrics.jsonl'} HOME={home}\n"
              f"exec {python3} -c {json.dumps(RUNPY)} main.py\n")
    t0 = time.time()
    job = cluster.run("sbatch", "--parsable", f"--uid={account}", f"--gid={account}", input=script)
    job_id = job.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                data = out.read_bytes()
                if FIRST_LINE in data and b"\n" in data.partition(FIRST_LINE)[2]:
                    at = time.time()
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw sbatch job {job_id}: no first line after 60 s")
            time.sleep(0.01)
    finally:
        cluster.run("scancel", job_id, check=False)
        for _ in range(600):
            if cluster.squeue_state(job_id) in ("CANCELLED", "COMPLETED", "FAILED", "GONE"):
                break
            time.sleep(0.05)
        shutil.rmtree(home, ignore_errors=True)
    return {"s": at - t0, "printed_s": _printed_at(data) - t0}


async def slurm_start_figure(counts: Counts, work: Path) -> Figure:
    fig = Figure("job_start_overhead_slurm_s", "s", f"<= +{SLURM_START_TARGET_S:g} s",
                 title="job submit -> first log line (Slurm), / raw sbatch",
                 how="The job of job_start_overhead_local_s (same template, script and input folder, size "
                     "small: 1 CPU, 2 GiB) on a private single-node Slurm (tests/slurmcluster.py: Debian's "
                     "slurm-wlm, batch_sched_delay=0), submitted to a `labhub serve` with the Slurm backend "
                     "only, running as root so jobs run as per-user accounts (run_as auto), default Slurm "
                     "settings; POST /api/v1/instances until the script's first line is read from the followed "
                     "log. Baseline: `sbatch --uid=<the same account>` of a batch script running the same "
                     "argv with the same resources and environment variables, until its first line is in the "
                     "job's output file (read every 10 ms). The target is on added_s, the difference of the "
                     "medians; printed_s / bare_printed_s: submit until the script printed (its own clock); events_s: "
                     "when the hub recorded each status of the job (medians). "
                     "One warm-up of each (it makes the account); rounds alternate the order.")
    why = _slurm_unavailable()
    if why:
        log(f"jobs: Slurm unavailable ({why}); {fig.name} not measured")
        fig.note = f"not measured: Slurm unavailable ({why})"
        return fig
    import sys

    sys.path.insert(0, str(REPO))
    from tests.slurmcluster import SlurmCluster

    account = f"{SLURM_ACCOUNT_PREFIX}bench1"
    existed = _account_exists(account)
    cluster = SlurmCluster()
    try:
        await asyncio.to_thread(cluster.start)
    except Exception as exc:  # noqa: BLE001 - ClusterError or a daemon's failure: the figure is not measured
        await asyncio.to_thread(cluster.stop)
        log(f"jobs: the Slurm cluster did not start ({exc}); {fig.name} not measured")
        fig.note = f"not measured: Slurm unavailable (the cluster did not start: {str(exc)[:300]})"
        return fig
    hub = None
    try:
        hub = SlurmHub(work, cluster.conf)
        (hub.templates / "bench-job.yaml").write_text(json.dumps({
            "title": "Benchmark job (python3 script)", "kind": "job", "input": "optional",
            "command": ["python3", "-c", RUNPY, "{param:script}"],
            "params": [{"name": "script", "default": "main.py"}], "hours": {"default": 1, "max": 2},
        }))
        hub.seed(token_users=1)
        hub.start()
        await hub.wait_healthy()
        inputs = await _job_input(hub, work)
        await _lh_job(hub, "warm", "slurm")  # makes the account the raw jobs run as too
        await asyncio.to_thread(_raw_sbatch, cluster, work, inputs, account)
        parts: dict[str, list[float]] = {"printed_s": [], "delivered_s": [], "bare_printed_s": []}
        events: list[dict[str, float]] = []
        for r in range(counts.slurm_rounds):
            res: dict[str, dict] = {}
            for who in ("labhub", "raw") if r % 2 == 0 else ("raw", "labhub"):
                if who == "labhub":
                    res["labhub"] = await _lh_job(hub, f"slurm{r}", "slurm")
                else:
                    res["raw"] = await asyncio.to_thread(_raw_sbatch, cluster, work, inputs, account)
            lab, raw = res["labhub"], res["raw"]
            fig.labhub.append(lab["s"])
            fig.baseline.append(raw["s"])
            fig.add_ratio(lab["s"], raw["s"])
            parts["printed_s"].append(round(lab["printed_s"], 4))
            parts["delivered_s"].append(round(lab["delivered_s"], 4))
            parts["bare_printed_s"].append(round(raw["printed_s"], 4))
            events.append(lab["events"])
            log(f"slurm job start round {r}: labhub {lab['s']:.3f} s (printed after {lab['printed_s']:.3f} s, on "
                f"the log {lab['delivered_s']:.3f} s later), raw sbatch {raw['s']:.3f} s (printed after "
                f"{raw['printed_s']:.3f} s) | load {loadavg()}")
        fig.extra["added_s"] = round(statistics.median(fig.labhub) - statistics.median(fig.baseline), 4)
        fig.extra["added_pairs_s"] = [round(a - b, 4) for a, b in zip(fig.labhub, fig.baseline, strict=True)]
        fig.extra.update(parts)
        fig.extra["median"] = {k: round(statistics.median(v), 4) for k, v in parts.items()}
        fig.extra["events_s"] = _event_medians(events)
        fig.extra["rounds"] = counts.slurm_rounds
    finally:
        if hub is not None:
            hub.stop()
        await asyncio.to_thread(cluster.stop)
        if not existed and _account_exists(account):  # the per-user account the hub made for the benchmark
            subprocess.run(["userdel", account], check=False, capture_output=True)  # noqa: ASYNC221 - at exit
    return fig
