"""Targets, miss notes and the written report of a benchmark run (latest.json -> latest.md).

Targets are checked here, never in tests.  ``run.py`` measures; this module judges
and renders, so a run can be re-rendered with current notes (``run.py --render``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable

from lib import HERE, cpus, nice_level

# -- targets ------------------------------


def _le(key: str, limit: float) -> Callable[[dict], bool | None]:
    return lambda f: None if f[key] is None else f[key] <= limit


def check_launch(f: dict) -> bool | None:
    if f["ratio"] is None:
        return None
    added = f["labhub"] - f["baseline"] if f["labhub"] is not None and f["baseline"] is not None else None
    return f["ratio"] <= 1.05 or (added is not None and added <= 0.2)


def check_throughput(f: dict) -> bool | None:
    if f["ratio"] is None:
        return None
    vs = f.get("labhub_over_peer")
    return f["ratio"] >= 0.6 and (vs is None or vs >= 1.5)


def _added(limit: float) -> Callable[[dict], bool | None]:
    """LabHub's median minus the baseline's (a difference of medians) at most ``limit``."""
    def check(f: dict) -> bool | None:
        if f["labhub"] is None or f["baseline"] is None:
            return None
        return f["labhub"] - f["baseline"] <= limit

    return check


def _ratio_ge(limit: float) -> Callable[[dict], bool | None]:
    return lambda f: None if f["ratio"] is None else f["ratio"] >= limit


def check_vs_peer(f: dict) -> bool | None:
    if f["labhub"] is None or f["peer"] is None:
        return None
    return f["labhub"] <= f["peer"]


# -- output ------------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[dict], bool | None]] = {
    "launch_single": check_launch,
    "launch_concurrent": _le("ratio", 1.15),
    "memory_per_workspace": _le("ratio", 1.05),
    "proxy_throughput": check_throughput,
    "proxy_added_latency_p50": _le("labhub", 0.25),
    "proxy_latency_p99": check_vs_peer,
    "proxy_cpu_per_request": _le("labhub", 0.15),
    "ws_echo_rtt_p50": _le("ratio", 1.4),
    "ws_handshake": check_vs_peer,
    "hub_cold_start": _le("labhub", 1.0),
    "create_users": _le("labhub", 3.0),
    "list_1000": _le("labhub", 50.0),
    "hub_idle_memory": _le("labhub", 80.0),
    "api_cpu_health": _le("labhub", 0.3),
    "api_cpu_me": _le("labhub", 0.6),
    "api_cpu_instances": _le("labhub", 1.0),
    "api_cpu_templates": _le("labhub", 1.0),
    "takeover_100": _le("labhub", 10.0),
    "scale_5000_tick_p50": _le("labhub", 1.0),
    "scale_5000_tick_max": _le("labhub", 1.0),
    "scale_5000_rss": _le("labhub", 400.0),
    "scale_5000_api_p99": _le("labhub", 100.0),
    "upload_extract_ratio": _ratio_ge(0.7),
    "upload_rss_growth_mib": _le("labhub", 50.0),
    "job_start_overhead_local_s": _added(0.3),
    "job_start_overhead_slurm_s": _added(0.5),
    "service_infer_throughput": _ratio_ge(0.8),
    "service_infer_added_latency_p50": _le("labhub", 0.3),
    "service_cold_start": _le("ratio", 1.2),
    "admission_freed_slot_start_s": _le("labhub", 1.0),
    "admission_decision_us": _le("labhub", 5000.0),
}
ORDER = list(CHECKS)

# Why a figure misses its target and what would close it (shown only for misses; "by how much" is computed).
WHY: dict[str, str] = {
    "proxy_throughput": (
        "The trivial backend here answers in ~17 µs (~60k req/s under wrk). The proxy makes the minimum of 4 "
        "syscalls per request (strace: 2 reads, 1 write, 1 writev; epoll amortized over ~15 requests) and spends "
        "~40-50 µs of CPU on it, most of it kernel TCP work, on one event-loop thread sharing 2 cores with wrk, "
        "the backend and the machine's other jobs. Its ceiling is ~1/45 µs = 22k req/s even with a whole core, "
        "~0.35 of this direct figure (nginx's 28 µs/request would give ~0.55). The 0.6 target was set against a "
        "backend 3-4x slower (PROXY-FACTS: direct 22.7k req/s, 78 µs p50); LabHub / CHP (labhub_over_peer, "
        "target >= 1.5x) is what carries over. What would close it: data-plane worker processes (SO_REUSEPORT) "
        "sharing the hub's route table and token cache, on a machine with cores to spare, or a C data plane."),
    "ws_echo_rtt_p50": (
        "Relaying a frame costs the proxy one read and one write per direction, but the round trip through it also "
        "needs two more process wake-ups on a 2-core machine shared with other jobs; with a client as light as this "
        "one (direct ~60 µs) that is ~+30 µs. CHP shows the same shift. What would close it: a quieter machine "
        "(the figure tracks the load average), or kernel-side relaying (splice) that Python's event loops do not "
        "offer."),
    "hub_cold_start": (
        "Start-up is CPU-bound (~1 CPU-s here): imports of FastAPI (with its OpenTelemetry hooks), Starlette, "
        "SQLAlchemy, pydantic and pydantic-settings, uvicorn and typer, then FastAPI building the routes' "
        "dependencies and pydantic schemas. The hub imports neither Alembic (when the schema is current), the "
        "OIDC stack, httpx, nor pydantic's version-1 package, and builds only the hot API (health, me, templates, "
        "tokens, instances) at start; the admin and group API, the pages and the login routes are built on first "
        "use (labhub.api.app.MountOnFirstUse): 1.22 -> 1.02 s in paired runs on this machine. What would close "
        "it: `labhub serve` dispatched before typer is imported (the console script's entry point), uvicorn's "
        "server without its CLI module (click, watchfiles), and a CPU not shared with other jobs."),
    "hub_idle_memory": (
        "Most of the RSS is imported code: SQLAlchemy ~19 MiB, pydantic + pydantic-settings ~13 MiB, "
        "FastAPI/Starlette with OpenTelemetry ~12 MiB, asyncio+ssl ~10 MiB. Building the admin API, the pages and "
        "Jinja2 on first use and not importing pydantic.v1 took it from 86.0 to 80.2 MiB (once the pages and the "
        "admin API have been used: ~86 MiB, as before). What would close it: `labhub serve` without typer "
        "(~1.3 MiB: the console script's entry point), uvicorn without its CLI module (click, watchfiles, "
        "~1.5 MiB), argon2 imported at the first password (~0.5 MiB)."),
    "list_1000": (
        "One Core select of the listed columns joined with the owners (the statement built once per filter "
        "combination), serialised with one pydantic_core.to_json (no ORM objects, no second validation): "
        "84.5 -> 26.9 ms in paired runs here. What is left: SQLAlchemy's row processing and the instance URL "
        "per row (Hub.instance_url), and the machine's load."),
    "create_users": (
        "Bulk against bulk (POST /api/v1/users:bulk, POST /hub/api/users): one name query, passwords hashed only "
        "when given and in a worker thread, users and audit rows as two multi-row INSERTs. One POST per user "
        "(one_post_per_user) still pays the FastAPI stack, the admin's account load and a commit per user; "
        "SQLite serialises the commits."),
    "api_cpu_health": (
        "The route answers with no dependency at all; what is left is the request's path through the hub: the "
        "proxy, uvicorn on the app's socket and FastAPI's middleware stack (eleven layers: body limit, NUL check, "
        "the instance-origin gate, login throttle, pending gate, error and exception handling, routing). What "
        "would close it: the proxy answering the health check itself, or fewer ASGI layers."),
    "api_cpu_me": (
        "The caller comes from the authenticator's cache (no transaction, no User loaded); the account's fields "
        "are one Core select by id, and through SQLAlchemy's async layer and aiosqlite one query is five thread "
        "round trips (pool checkout and reset, cursor, execute, fetch, close), ~0.1 ms of CPU each here: most of "
        "the figure, and more on a loaded machine. What would close it: fewer round trips per read (aiosqlite's "
        "execute_fetchall; a pool that does not roll back a connection that only read), or the account's fields "
        "kept with the cached principal."),
    "api_cpu_instances": (
        "One Core select of the listed columns joined with the owner (statement built once), serialised with "
        "pydantic_core.to_json: no ORM objects, no second validation. As for /me, the aiosqlite round trips of "
        "the one query are most of it."),
    "api_cpu_templates": "Serialised once per catalog; a request joins cached bytes (groups read only when a "
                         "template is limited to some).",
    "launch_single": "",
    "launch_concurrent": "",
    "memory_per_workspace": "",
    "proxy_added_latency_p50": "",
    "proxy_latency_p99": "p99 at one connection is dominated by scheduling delays on a loaded 2-core machine.",
    "proxy_cpu_per_request": "",
    "ws_handshake": "",
    "takeover_100": (
        "The time is the lease plus one pass: the killed replica's heartbeat (renewed every lease/3 = 2 s) lapses "
        "4-6 s after the kill (LABHUB_LEASE_SECONDS, 6 s), and the survivor's next pass (every "
        "min(LABHUB_RECONCILE_INTERVAL, lease/3) = 2 s) claims all its rows in one UPDATE; the routes are already in "
        "the survivor's table and the instances keep running, so reachable_s is ~0.1 s. What would shorten it: a "
        "shorter lease (more heartbeat writes, and takeovers after shorter database hiccups), or treating a "
        "replica whose LISTEN connection dropped as gone at once."),
    "scale_5000_tick_p50": (
        "A pass selects 11 columns of every active instance of the replica (5,000 rows: ~60-75 ms CPU, most of it "
        "parsing 4 text datetimes per row on SQLite and each handle's JSON), then one observe_many, the idle check "
        "and the activity flush: ~150 ms CPU at 5,000. What would cut it (Reconciler.tick): expiry compared in SQL, "
        "the activity columns read only for templates with an idle timeout, or the pass's state kept in memory with "
        "only rows changed since the last pass read."),
    "scale_5000_tick_max": (
        "Under the 200 req/s load the event loop is saturated, and a pass's wall time includes everything else the "
        "loop runs between its awaits (idle passes stay under ~0.35 s: idle_max_s). On top, every per-instance task "
        "that ends wakes a full pass (the done callback in Reconciler._spawn sets _wake), so while launches complete "
        "passes run back to back (~150 ms CPU each at 5,000 instances): removing that wake (an experiment, not "
        "committed) took the passes during 25 s of load from 60 to 21 and the hub's CPU per request from 16.0 to "
        "13.5 ms. What would fix it: not waking a pass when a task ends (its follow-up is already rescheduled "
        "through _recheck) or coalescing woken passes to one per interval, plus a cheaper pass "
        "(scale_5000_tick_p50)."),
    "upload_extract_ratio": (
        "LabHub's time is serial where tar's is not: the hub first receives the whole body into a staging file "
        "(through its proxy and uvicorn, written in the event loop: labhub_body_sent_s, a fifth to a quarter of "
        "the time), "
        "then extracts it in one worker thread, busy ~90% of the wall time (labhub_cpu_s: 6.6-9.3 CPU-s for "
        "1 GiB), while `tar -xzf` spreads ~6 CPU-s over its tar and gzip processes on two cores and writes the "
        "data once; LabHub's time moves with the machine's load far more than tar's (run medians 0.73-1.05). In a "
        "py-spy profile of a 1 GiB upload the extraction thread spends ~34% writing the files (os.write of "
        "1 MiB chunks), ~37% in gzip's read (zlib inflate ~18%, reading the staging file back ~11%, CRC ~4%), "
        "~12% in tarfile's buffer copies, ~10% in headers, name checks and file creation. The ratio counts the "
        "HTTP transfer too. What would raise it (labhub.api.uploads, services.folders): extracting while the "
        "body streams in (the staging directory still makes the folder all or nothing), which drops the staging "
        "file's write and read-back and overlaps receiving with extracting; zlib.decompressobj on large reads "
        "instead of gzip.GzipFile under tarfile."),
    "upload_rss_growth_mib": (
        "The body is streamed with flow control on both hops (proxy and uvicorn pause reading while writes "
        "are pending) and written as it comes; extraction copies 1 MiB at a time: ~2 MiB of growth for 1 GiB."),
    "job_start_overhead_local_s": (
        "The process starts ~40 ms later than one started by hand (printed_s against bare_printed_s; events_s: "
        "the hub records it starting ~30 ms after the submit); then the line waits for the followed log's next "
        "read of the file (labhub.api.jobs.FOLLOW_POLL_S, 0.1 s; delivered_s): the job's status changes wake "
        "the stream just before the script prints, so the line waits nearly a whole interval. (With the earlier "
        "0.5 s interval this figure was +0.50 s.) What would cut it: waking the follower when the local "
        "backend's output.log grows (inotify), as status changes already do, or a shorter interval for the "
        "first seconds of a job."),
    "job_start_overhead_slurm_s": (
        "The hub submits the job ~0.1 s after the POST (events_s: starting), then Slurm starts it as it starts "
        "a raw sbatch; the first line reaches the followed log within the stream's file-read interval "
        "(delivered_s). Raw sbatch itself varies 0.2-1.1 s here (slurmctld's scheduling and slurmd's job launch "
        "on a loaded 2-core machine), more than the hub adds."),
    "scale_5000_rss": "",
    "service_infer_throughput": (
        "The serving process is CPU-bound (server_cpu_ms_per_req ~1 ms per infer: KServe's FastAPI stack, the JSON, "
        "a thread hand-off per model run under the model's lock); through the proxy the hub spends ~0.14 ms more "
        "CPU per request (hub_cpu_ms_per_req) on the same 2 cores, and the pair ratios swing 0.5-1.4 with the "
        "load of the machine's other jobs."),
    "service_infer_added_latency_p50": (
        "With 8 clients on one serving process (one model run at a time, ~1 ms of its CPU each) the requests "
        "queue: the p50 is ~8 / throughput (6-17 ms here), so the figure is the throughput pairs' difference seen "
        "through the queue, and the pairs swing by several ms either way with the machine's load (load average "
        "~3 on 2 cores: -5.7 to +2.9 ms in one run). On 2 cores the hub's CPU per proxied infer "
        "(hub_cpu_ms_per_req, ~0.14 ms) is taken from what the serving process and wrk share, and with 8 requests "
        "queued that shows ~8x in the p50. The proxy's own added time per request, at one connection "
        "(one_connection.added in the JSON), was 0.08-0.26 ms over the runs. What would close it: a core to spare "
        "for the proxy (its CPU then no longer comes out of the server's), and a cheaper proxied POST: ~0.14 ms "
        "of hub CPU per infer is ~2.5x what the same hub spent per GET of the trivial backend measured side by "
        "side (2 reads and 2 writes per request in both; not profiled yet)."),
    "service_cold_start": (
        "Nearly all of it is labhub_serve's own start (imports of KServe, FastAPI and ONNX Runtime, the model's "
        "load): the hub starts the process ~30 ms after the POST (events_s: starting), sees it ready within its "
        "10 ms probe interval (running_s) and the first infer follows at once."),
    "scale_5000_api_p99": (
        "The offered load is ~3x what one hub process serves: a launch costs its event loop ~25-40 ms of CPU (the "
        "POST and the start after it run ~16 SQL statements in ~8 sessions, ~1 ms each through SQLAlchemy's async "
        "layer and aiosqlite's thread hand-off, plus the FastAPI stack; more at 5,000 instances, where the passes "
        "each launch wakes cost ~150 ms), reads 2-5 ms; 60 launches/s alone need ~2 cores, so the loop answers "
        "~60-85 req/s of this mix (answered_rps) and the rest queue. Even reads alone at 200 req/s (~65% of the "
        "loop, reads_only) have a p99 of 170-480 ms (runs differ): the pass blocks the loop ~50-75 ms every 2 s "
        "and full garbage collections of the hub's heap take 100-200 ms (event_loop in the JSON; under the full "
        "load ~20% of the time goes to collections); gc.freeze() after the start (an "
        "experiment) brought the longest collection to ~20 ms and that p99 to ~290 ms. What would close it: a "
        "launch path with a fraction of the statements (claim, load and the move to starting in one transaction, "
        "events written with their transition), gc.freeze() once the hub has started (labhub.server), the pass "
        "fixes above, and the API spread over several processes (replicas behind a balancer) instead of one loop."),
}


def miss_note(f: dict) -> str:
    """By how much ``f`` misses its target (from its numbers), then why."""
    name, lh, unit = f["name"], f["labhub"], f["unit"]
    if f["meets"] is not False:
        return ""
    if name in ("proxy_throughput", "ws_echo_rtt_p50", "launch_concurrent", "memory_per_workspace",
                "launch_single", "service_infer_throughput", "service_cold_start"):
        how_much = f"ratio {f['ratio']} against the target {f['target']}"
    elif name == "upload_extract_ratio":
        how_much = f"ratio {f['ratio']} (LabHub {lh} {unit}, tar -xzf {f['baseline']} {unit}) against the target " \
                   f"{f['target']}"
    elif name.startswith("job_start_overhead"):
        how_much = f"+{lh - f['baseline']:.3g} s over the baseline ({lh} s against {f['baseline']} s), target " \
                   f"{f['target']}"
    elif name in ("proxy_latency_p99", "ws_handshake"):
        how_much = f"{lh} {unit} against CHP's {f['peer']} {unit}"
    else:
        limit = float(f["target"].split()[1])
        how_much = f"{lh} {unit} against {f['target']} ({lh / limit:.2f}x the target)"
    return f"Misses: {how_much}. " + WHY.get(name, "")


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    if abs(x) >= 1000:
        s = f"{x:,.0f}"
    elif abs(x) >= 100:
        s = f"{x:.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.3g}"
    return s + (f" {unit}" if unit else "")


def markdown(result: dict) -> str:
    m = result["machine"]
    v = result["versions"]
    lines = [
        f"# LabHub benchmarks ({'quick' if result['quick'] else 'full'} run, {result['finished']})",
        "",
        f"Machine: {m['cpus_total']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB; every process pinned to CPUs "
        f"`{m['pinned_cpus']}`" + (f" at nice {m['nice']}" if m.get("nice") else "")
        + f". Load average (1/5/15 min) at start {m['loadavg_start']}, at end {m['loadavg_end']}.",
        f"Versions: LabHub {v.get('labhub')} ({v.get('labhub_git')}), JupyterHub {v.get('jupyterhub', '—')}, "
        f"CHP {v.get('configurable-http-proxy', '—')}, JupyterLab {v.get('jupyterlab_labhub_env')}, "
        f"Python {v.get('python')}, {v.get('wrk')}.",
        "",
        "| figure | unit | LabHub | peer | baseline | ratio | peer ratio | target | meets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in result["figures"]:
        meets = {True: "yes", False: "**no**", None: "n/a"}[f["meets"]]
        lines.append(f"| {f['title'] or f['name']} | {f['unit']} | {fmt(f['labhub'])} | {fmt(f['peer'])} | "
                     f"{fmt(f['baseline'])} | {fmt(f['ratio'])} | {fmt(f['peer_ratio'])} | {f['target']} | {meets} |")
    lines += ["", "Peer: JupyterHub + CHP (proxy figures: CHP alone). Baseline: the direct/bare measurement, "
              "or the CPU floor. Ratio: see `ratio_of` in latest.json (mostly the median of per-pair "
              "LabHub / baseline ratios). Medians over rounds; min/max in latest.json.", ""]
    notes = [f"- **{f['name']}**: {f['note']}" for f in result["figures"] if f.get("note")]
    if notes:
        lines += ["Notes:", *notes, ""]
    return "\n".join(lines)


def update_readme(md: str) -> None:
    """Put the table of a full run into benchmarks/README.md, between its markers."""
    readme = HERE / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:table:start -->", "<!-- bench:table:end -->"
    if start in text and end in text:
        body = md.split("\n", 1)[1].strip()  # without the "# ..." title line
        head, rest = text.split(start, 1)
        readme.write_text(f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}")


def machine_facts() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus_total": os.cpu_count(), "cpu_model": model, "mem_gib": round(mem, 1), "pinned_cpus": cpus(),
            "nice": nice_level(),
            "kernel": platform.release(), "hostname": platform.node()}
