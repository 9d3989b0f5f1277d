"""The ``replicas`` group: a replica's takeover after SIGKILL, and one hub at 5,000 instances.

* ``takeover_100``: two ``labhub serve`` replicas on one fresh PostgreSQL database and one data
  directory (local backend, a tiny TCP server per instance), 100 running instances launched
  through both replicas' APIs; the replica holding the most leases is killed with SIGKILL and the
  clock runs until every instance is claimed by the survivor (the database says) and answers
  through the survivor's proxy.  No peer: JupyterHub cannot run two hubs on one database.
* ``scale_5000_*``: one hub (the app and proxy of ``labhub serve``, run by ``scale_hub.py`` so a
  scheduler-like fake backend with realistic latencies can be injected) managing 5,000 RUNNING
  instances seeded into its database: the reconcile pass's duration, the hub's RSS, and API
  latency under ~200 requests/s of mixed reads and launches.

Both need nothing but LabHub's virtualenv; the takeover needs PostgreSQL
(``BENCH_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``: an account
that may create databases; a throwaway one is created per round and dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import sqlite3
import statistics
import subprocess
import time
from pathlib import Path

from hubs import HOST, LABHUB_RUN_AS, LabHub
from lib import HERE, LABHUB_PY, Figure, Proc, free_port, http_request, loadavg, log, rss_mib

TAKEOVER_TARGET_S = 10.0

# One instance of the takeover figure: a TCP server that answers every request with 200 "ok" and
# closes (stdlib only, no site-packages: ~15 ms to start, ~9 MiB; 100 of them at once).
TINY_SERVER = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen(128)\n"
    "R = b'HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok'\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    try:\n"
    "        data = b''\n"
    "        while b'\\r\\n\\r\\n' not in data:\n"
    "            got = c.recv(65536)\n"
    "            if not got:\n"
    "                break\n"
    "            data += got\n"
    "        c.sendall(R)\n"
    "    except OSError:\n"
    "        pass\n"
    "    c.close()\n"
)


class Counts:
    """The group's sizes (run.py's Config says quick or full)."""

    def __init__(self, quick: bool) -> None:
        self.takeover_instances = 40 if quick else 100
        self.takeover_rounds = 1 if quick else 3
        self.takeover_users = 4
        self.scale_instances = 500 if quick else 5000
        self.scale_users = 50 if quick else 500
        self.scale_token_users = 20
        self.settled_passes = 3 if quick else 10  # reconcile passes timed before the load (after the first)
        self.load_rate = 200.0  # requests/s
        self.load_seconds = 5.0 if quick else 25.0
        self.launch_share = 0.3
        self.reads_only_seconds = 0.0 if quick else 10.0  # the same rate without launches first (JSON only)
        self.low_rate = 50.0  # then the mix at a quarter of the rate (JSON only) ...
        self.low_rate_seconds = 0.0 if quick else 10.0
        self.load_grace = 10.0 if quick else 15.0  # how long unanswered requests are waited for after the last


async def replicas_figures(cfg, work: Path, peers: bool) -> list[Figure]:  # noqa: ANN001 - run.Config
    counts = Counts(cfg.quick)
    figures = [await takeover_figure(counts, work / "takeover")]
    figures += await scale_figures(counts, work / "scale")
    return figures


# -- PostgreSQL --------------------------------------------------------------------------------------


def postgres_admin_url() -> str:
    return (os.environ.get("BENCH_POSTGRES_URL") or os.environ.get("LABHUB_TEST_POSTGRES_URL")
            or "postgresql://postgres@127.0.0.1:5432/postgres")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres_admin_url(), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class ThrowawayDatabase:
    """A fresh PostgreSQL database, dropped (with its connections) on exit."""

    def __init__(self) -> None:
        self.name = f"labhub_bench_{secrets.token_hex(4)}"
        base = postgres_admin_url().rsplit("/", 1)[0]
        self.dsn = f"{base}/{self.name}"
        self.url = self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)

    async def __aenter__(self) -> ThrowawayDatabase:
        await _pg_admin(f'CREATE DATABASE "{self.name}"')
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await _pg_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


async def postgres_available() -> str:
    """'' when PostgreSQL can be used, else why not."""
    try:
        import asyncpg  # noqa: F401

        await _pg_admin("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any reason makes the figure unavailable
        return f"{type(exc).__name__}: {exc}"
    return ""


# -- takeover -------------------------------------------------------------------------------------------


async def takeover_figure(counts: Counts, work: Path) -> Figure:
    n = counts.takeover_instances
    fig = Figure("takeover_100", "s", f"<= {TAKEOVER_TARGET_S:g} s",
                 title=f"replica killed: {n} instances claimed by the survivor and reachable through it",
                 ratio_of="none (no peer: JupyterHub cannot run two hubs on one database)",
                 how=f"Two `labhub serve` replicas (default lease {_lease_s():g} s, reconcile pass every "
                     f"min(LABHUB_RECONCILE_INTERVAL, lease/3) s) on a fresh PostgreSQL database and one data "
                     f"directory, local backend, LABHUB_ISOLATION=none; {n} instances of a tiny TCP server "
                     f"template launched through both replicas' APIs ({counts.takeover_users} users) and "
                     "running; then SIGKILL of the replica holding the most leases. The figure: seconds from "
                     "the kill until every instance is claimed_by the survivor (polled in PostgreSQL every "
                     "50 ms) and answers 200 through the survivor's proxy (Host: <name>--<user>.localhost, the "
                     "owner's bearer token, every 50 ms); claimed_s and reachable_s are the two parts. One "
                     "fresh database and pair of replicas per round.")
    why = await postgres_available()
    if why:
        log(f"takeover: PostgreSQL unavailable ({why}); figure skipped")
        fig.note = f"not measured: PostgreSQL unavailable at {postgres_admin_url()} ({why})"
        return fig
    for r in range(counts.takeover_rounds):
        res = await _takeover_round(counts, work / f"r{r}")
        fig.labhub.append(max(res["claimed_s"], res["reachable_s"]))
        for key in ("claimed_s", "reachable_s", "victim_leases", "launch_to_running_s"):
            fig.extra.setdefault(key, []).append(round(res[key], 3))
        fig.add_ratio(None, None)
        log(f"takeover round {r}: claimed {res['claimed_s']:.2f} s, reachable {res['reachable_s']:.2f} s after "
            f"SIGKILL ({res['victim_leases']} leases on the killed replica) | load {loadavg()}")
    fig.extra["lease_seconds"] = _lease_s()
    return fig


def _lease_s() -> float:
    return 6.0  # LabHub's default (LABHUB_LEASE_SECONDS), left as it is


def _replica_pair(work: Path, database_url: str) -> tuple[LabHub, LabHub]:
    a, b = LabHub(work / "a"), LabHub(work / "b")
    (a.templates / "tiny.yaml").write_text(json.dumps({
        "title": "Tiny TCP server", "kind": "service", "ready_path": "", "start_timeout": 120,
        "command": ["/usr/bin/python3", "-I", "-S", "-c", TINY_SERVER],
        "listen": {"port": ["{port}"]}, "hours": {"default": 4, "max": 24},
    }))
    for hub, rid in ((a, "a"), (b, "b")):
        hub.data = a.data
        hub.env.update({"LABHUB_DATABASE_URL": database_url, "LABHUB_REPLICA_ID": rid,
                        "LABHUB_DATA_DIR": str(a.data), "LABHUB_TEMPLATES_DIR": str(a.templates),
                        "HOME": str(a.data)})
        hub.replica_id = rid  # type: ignore[attr-defined]
    return a, b


async def _takeover_round(counts: Counts, work: Path) -> dict:
    import asyncpg

    n, users = counts.takeover_instances, [f"bench{i}" for i in range(1, counts.takeover_users + 1)]
    async with ThrowawayDatabase() as database:
        a, b = _replica_pair(work, database.url)
        conn = None
        instances: list[tuple[str, str, str]] = []  # (user, name, id)
        labels: dict[str, str] = {}  # id -> the host of its origin, as the API gave it
        try:
            a.seed(token_users=len(users))
            b.tokens, b.admin_token = a.tokens, a.admin_token
            a.start()
            b.start()
            await a.wait_healthy()
            await b.wait_healthy()
            conn = await asyncpg.connect(database.dsn)
            t0 = time.perf_counter()
            sem = asyncio.Semaphore(8)

            async def launch(i: int) -> None:
                user, via = users[i % len(users)], (a, b)[i % 2]
                async with sem:
                    iid = await via.launch(user, f"t{i}", template="tiny")
                instances.append((user, f"t{i}", iid))
                labels[iid] = (via.instance_origin(user, f"t{i}") or "").rpartition(":")[0]  # <name>--<user>.localhost

            await asyncio.gather(*(launch(i) for i in range(n)))
            await _until(lambda: _count(conn, "status = 'running'"), n, 180, "running",
                         lambda: _count(conn, "status IN ('failed', 'stopped')"))
            launch_to_running = time.perf_counter() - t0
            leases = {r["claimed_by"]: r["n"] for r in await conn.fetch(
                "SELECT claimed_by, count(*) AS n FROM instances WHERE status = 'running' GROUP BY claimed_by")}
            victim, survivor = (a, b) if leases.get("a", 0) >= leases.get("b", 0) else (b, a)
            origins = {iid: f"{labels[iid]}:{survivor.port}" for _, _, iid in instances}
            # every instance answers through the survivor before the kill (its routes follow the other's)
            await _reachable(survivor, instances, origins, timeout=60)
            await asyncio.sleep(1.0)
            os.kill(victim.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]  # the hub only, not its instances
            killed = time.perf_counter()
            rid = survivor.replica_id  # type: ignore[attr-defined]

            async def claimed() -> float:
                await _until(lambda: _count(conn, "claimed_by = $1 AND status = 'running'", rid), n, 120,
                             f"claimed by {rid}", interval=0.05)
                return time.perf_counter() - killed

            async def reachable() -> float:
                await _reachable(survivor, instances, origins, timeout=120)
                return time.perf_counter() - killed

            claimed_s, reachable_s = await asyncio.gather(claimed(), reachable())
            result = {"claimed_s": claimed_s, "reachable_s": reachable_s, "victim_leases": leases.get(
                victim.replica_id, 0), "launch_to_running_s": launch_to_running}  # type: ignore[attr-defined]
            await _stop_all(survivor, instances, conn)
            return result
        finally:
            if conn is not None:
                await conn.close()
            a.stop()
            b.stop()
            _kill_instances(a.data)


async def _count(conn, where: str, *args: object) -> int:  # noqa: ANN001 - asyncpg connection
    return await conn.fetchval(f"SELECT count(*) FROM instances WHERE {where}", *args)  # noqa: S608


async def _until(count, want: int, timeout: float, what: str, failed=None, interval: float = 0.2) -> None:  # noqa: ANN001
    deadline = time.perf_counter() + timeout
    while (got := await count()) < want:
        if failed is not None and (bad := await failed()):
            raise RuntimeError(f"takeover: {bad} instances failed or stopped while waiting for {what}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"takeover: only {got}/{want} instances {what} after {timeout} s")
        await asyncio.sleep(interval)


async def _reachable(hub: LabHub, instances: list[tuple[str, str, str]], origins: dict[str, str],
                     timeout: float) -> None:
    """Until every instance answers 200 through ``hub``'s proxy (each asked every 50 ms until it does)."""
    todo = {iid: user for user, _, iid in instances}
    deadline = time.perf_counter() + timeout

    async def ask(iid: str, user: str) -> bool:
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            status, body = await http_request(HOST, hub.port, "GET", "/", {**hub.auth(user), "Host": origins[iid]},
                                              timeout=5)
            return status == 200 and body == b"ok"
        return False

    while todo:
        answers = await asyncio.gather(*(ask(iid, user) for iid, user in todo.items()))
        for iid, ok in zip(list(todo), answers, strict=True):
            if ok:
                del todo[iid]
        if not todo:
            return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"takeover: {len(todo)} instances not reachable through the survivor")
        await asyncio.sleep(0.05)


async def _stop_all(hub: LabHub, instances: list[tuple[str, str, str]], conn) -> None:  # noqa: ANN001
    sem = asyncio.Semaphore(8)

    async def stop(user: str, iid: str) -> None:
        async with sem:
            await hub.api("DELETE", f"/api/v1/instances/{iid}", user)

    await asyncio.gather(*(stop(user, iid) for user, _, iid in instances))
    with contextlib.suppress(TimeoutError):
        await _until(lambda: _count(conn, "status NOT IN ('requested', 'queued', 'starting', 'running', "
                                          "'unknown', 'stopping')"), len(instances), 60, "stopped")


def _kill_instances(data: Path) -> None:
    """Whatever instance processes are left (their process groups, from the local backend's handles;
    only groups still led by the tiny server, never a reused id)."""
    for handle in (data / "instances").glob("*/handle.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError, PermissionError):
            pgid = int(json.loads(handle.read_text())["pgid"])
            if b"SO_REUSEADDR" in Path(f"/proc/{pgid}/cmdline").read_bytes():
                os.killpg(pgid, signal.SIGKILL)


# -- one hub at scale -------------------------------------------------------------------------------------


class ScaleHub(LabHub):
    """``scale_hub.py serve``: the hub's app and proxy with the scale backend injected."""

    def __init__(self, work: Path, backend_url: str, database_url: str | None) -> None:
        super().__init__(work)
        self.backend_url = backend_url
        self.stats = self.data / "bench-stats"
        (self.templates / "scale.yaml").write_text(_scale_template())
        self.env["BENCH_SCALE_URL"] = backend_url
        if database_url:
            self.env["LABHUB_DATABASE_URL"] = database_url
        self.seeded: dict = {}

    def seed_scale(self, instances: int, users: int, token_users: int) -> None:
        out = subprocess.run([str(LABHUB_PY), str(HERE / "scale_hub.py"), "seed", "--instances", str(instances),
                              "--users", str(users), "--token-users", str(token_users), "--url", self.backend_url],
                             env=self.env, capture_output=True, text=True, timeout=600, **self._ids())
        if out.returncode != 0:
            raise RuntimeError(f"scale_hub.py seed failed: {out.stderr[-3000:]}")
        self.seeded = json.loads(out.stdout.strip().splitlines()[-1])
        self.tokens.update(self.seeded["tokens"])

    def start(self) -> Proc:
        self.proc = Proc([str(LABHUB_PY), str(HERE / "scale_hub.py"), "serve", "--stats", str(self.stats)],
                         env=self.env, log_path=self.work / "scale-hub.log", user=LABHUB_RUN_AS)
        return self.proc

    def ticks(self) -> list[dict]:
        try:
            lines = (self.stats / "ticks.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(x) for x in lines if x.endswith("}")]

    def lags(self) -> list[dict]:
        try:
            lines = (self.stats / "lag.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(x) for x in lines if x.endswith("}")]

    async def wait_ticks(self, n: int, timeout: float = 120) -> list[dict]:
        deadline = time.perf_counter() + timeout
        while len(ticks := self.ticks()) < n:
            if self.proc is not None and not self.proc.alive():
                raise RuntimeError(f"scale hub exited: {self.proc.tail()}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"scale hub: {len(ticks)}/{n} reconcile passes after {timeout} s")
            await asyncio.sleep(0.1)
        return ticks


def _scale_template() -> str:
    from scale_hub import template_yaml  # scale_hub imports LabHub's backend contract: LabHub's venv

    return template_yaml()


async def scale_figures(counts: Counts, work: Path) -> list[Figure]:
    n = counts.scale_instances
    db = "sqlite"
    tick50 = Figure("scale_5000_tick_p50", "s", "<= 1 s", title=f"reconcile pass, {n} running instances (median)",
                    ratio_of="none (no peer or baseline)")
    tickmax = Figure("scale_5000_tick_max", "s", "<= 1 s", title=f"reconcile pass, {n} running instances (slowest)",
                     ratio_of="none (no peer or baseline)")
    rss = Figure("scale_5000_rss", "MiB", "<= 400 MiB", title=f"hub RSS with {n} running instances",
                 ratio_of="none (no peer or baseline)")
    api = Figure("scale_5000_api_p99", "ms", "<= 100 ms",
                 title=f"API p99 at {counts.load_rate:g} req/s (30% launches), {n} running instances",
                 ratio_of="none (no peer or baseline)")
    setup = (f"One hub: `scale_hub.py serve` (what `labhub serve` runs: proxy and app in one process and event "
             f"loop, uvloop; {db.replace('sqlite', 'SQLite')} in the data directory) with a scheduler-like fake "
             f"backend injected (server.start(backends=...)): observe_many {_env_ms('OBSERVE_S', 30)} ms + "
             f"{_env_us('PER_HANDLE_S', 5)} µs per handle for all handles in one call, submit "
             f"{_env_ms('SUBMIT_S', 100)} ms, terminate {_env_ms('TERMINATE_S', 20)} ms, list_owned like "
             f"observe_many (find() per launch uses it, as the Slurm backend's does); it reports RUNNING at a "
             f"real trivial HTTP server's URL. {n} RUNNING instances (3 events each) over "
             f"{counts.scale_users} users are inserted into the database before the start; the first pass "
             f"claims them all. ")
    tick50.how = (setup + f"Median duration of Reconciler.tick() (wrapped in the launcher, perf_counter) over "
                  f"{counts.settled_passes} passes after the first, hub idle; the JSON has the passes under the "
                  f"API load too, and engine_s (the backend's simulated latency inside the pass).")
    tickmax.how = (setup + f"The slowest Reconciler.tick() among the {counts.settled_passes} idle passes and all "
                   "passes during the API loads below (every 12th pass also lists the backend's jobs for orphans); "
                   "a pass's wall time includes whatever else the event loop runs between its awaits.")
    rss.how = setup + "VmRSS of the hub process after the idle passes (before the API load); after it in the JSON."
    api.how = (setup + f"Open-loop load, {counts.load_rate:g} requests/s for {counts.load_seconds:g} s from "
               f"{counts.scale_token_users} users' tokens on up to 64 keep-alive connections through the hub's "
               f"public port: {100 - counts.launch_share * 100:.0f}% reads (GET /api/v1/instances?limit=50, "
               f"GET /api/v1/me, GET /api/v1/instances/<one of the user's>, equally), "
               f"{counts.launch_share * 100:.0f}% launches (POST /api/v1/instances, which the hub then submits, "
               f"probes and routes). Latency is from each request's scheduled send time (so a client that "
               f"falls behind counts against the hub) to its full response; requests unanswered "
               f"{counts.load_grace:g} s after the last was due count with the time waited so far (a lower bound; "
               f"`incomplete` in the JSON). p99 over all requests; p50, per kind, answered_rps and the event "
               f"loop's longest blocks and collections in the JSON"
               + (f", and the same before it with reads only ({counts.reads_only_seconds:g} s, `reads_only`) and "
                  f"the mix at {counts.low_rate:g} req/s ({counts.low_rate_seconds:g} s, `mix_at_low_rate`)."
                  if counts.reads_only_seconds else "."))
    figures = [tick50, tickmax, rss, api]
    backend_port = free_port()
    hub = ScaleHub(work, f"http://{HOST}:{backend_port}", None)  # makes ``work``
    backend = Proc([str(LABHUB_PY), str(HERE / "backend.py"), "--port", str(backend_port)],
                   log_path=work / "scale-backend.log")
    reads = None
    try:
        t_seed = time.perf_counter()
        hub.seed_scale(n, counts.scale_users, counts.scale_token_users)
        log(f"scale: seeded {n} running instances in {time.perf_counter() - t_seed:.1f} s")
        hub.start()
        await hub.wait_healthy(timeout=120)
        ticks = await hub.wait_ticks(1 + counts.settled_passes, timeout=60 + 10 * counts.settled_passes)
        idle = ticks[1:1 + counts.settled_passes]
        pid = hub.proc.pid  # type: ignore[union-attr]
        rss_settled = rss_mib(pid)
        mark = len(hub.ticks()), len(hub.lags())
        if counts.reads_only_seconds:
            reads = await _api_load(hub, counts.load_rate, counts.reads_only_seconds, 0.0, counts.load_grace, "r")
            reads["event_loop"] = _lag_summary(hub.lags()[mark[1]:])
            log(f"scale: reads only at {counts.load_rate:g} req/s: p50 {reads['p50_ms']} ms, p99 {reads['p99_ms']} ms"
                f" | load {loadavg()}")
        low = None
        if counts.low_rate_seconds:
            mark_low = len(hub.lags())
            low = await _api_load(hub, counts.low_rate, counts.low_rate_seconds, counts.launch_share,
                                  counts.load_grace, "q")
            low["event_loop"] = _lag_summary(hub.lags()[mark_low:])
            log(f"scale: mix at {counts.low_rate:g} req/s: p50 {low['p50_ms']} ms, p99 {low['p99_ms']} ms"
                f" | load {loadavg()}")
        mark_reads = len(hub.ticks()), len(hub.lags())
        results = await _api_load(hub, counts.load_rate, counts.load_seconds, counts.launch_share, counts.load_grace,
                                  "l")
        await asyncio.sleep(3.0)  # the launches' starts finish
        passes_lighter = hub.ticks()[mark[0]:mark_reads[0]]
        loaded = hub.ticks()[mark_reads[0]:]
        rss_loaded = rss_mib(pid)
        results["event_loop"] = _lag_summary(hub.lags()[mark_reads[1]:])
    finally:
        hub.stop()
        backend.stop()
    statuses = _sqlite_statuses(hub.data / "labhub.sqlite")
    passes = [t["s"] for t in idle]
    tick50.labhub.append(statistics.median(passes))
    tickmax.labhub.append(max(passes + [t["s"] for t in passes_lighter + loaded]))
    rss.labhub.append(rss_settled)
    api.labhub.append(results["p99_ms"])
    for f in figures:
        f.add_ratio(None, None)
    tick50.extra.update({"instances": n, "database": db, "first_pass": ticks[0], "idle_passes": idle,
                         "idle_median_cpu_s": statistics.median([t["cpu_s"] for t in idle]),
                         "lighter_load_median_s": _median([t["s"] for t in passes_lighter]),
                         "under_load_median_s": _median([t["s"] for t in loaded]),
                         "passes_lighter_load": passes_lighter, "passes_under_load": loaded})
    tickmax.extra.update({"instances": n, "database": db, "idle_max_s": max(passes),
                          "lighter_load_max_s": max([t["s"] for t in passes_lighter], default=None),
                          "under_load_max_s": max([t["s"] for t in loaded], default=None),
                          "passes_under_load": len(loaded)})
    rss.extra.update({"instances": n, "database": db, "after_load_mib": round(rss_loaded, 1),
                      "instances_after_load": statuses})
    api.extra.update({"database": db, **{k: v for k, v in results.items() if k != "p99_ms"},
                      "reads_only": reads, "mix_at_low_rate": low, "instances_after_load": statuses})
    log(f"scale ({n} instances, {db}): pass median {tick50.labhub[0]:.3f} s, max {tickmax.labhub[0]:.3f} s; "
        f"RSS {rss_settled:.0f} MiB ({rss_loaded:.0f} after load); API p50 {results['p50_ms']} ms p99 "
        f"{results['p99_ms']} ms ({results['requests']} requests, {results['answered_rps']} answered/s, "
        f"{results['incomplete']} unanswered, {results['errors']} errors) | load {loadavg()}")
    return figures


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _lag_summary(lags: list[dict]) -> dict:
    """The launcher's per-second event-loop records: how long the loop was blocked, and by collections."""
    blocked = [x["max_lag_s"] * 1e3 for x in lags]
    gc_max = [x.get("gc_max_s", 0.0) * 1e3 for x in lags]
    return {"seconds": len(lags), "max_blocked_ms": round(max(blocked, default=0.0), 1),
            "median_max_blocked_ms": round(_median(blocked) or 0.0, 1),
            "gc_longest_ms": round(max(gc_max, default=0.0), 1),
            "gc_total_s": round(sum(x.get("gc_s", 0.0) for x in lags), 3),
            "max_blocked_ms_per_s": [round(x, 1) for x in blocked],
            "gc_longest_ms_per_s": [round(x, 1) for x in gc_max]}


def _env_ms(name: str, default: float) -> str:
    return f"{float(os.environ.get('BENCH_SCALE_' + name) or default / 1e3) * 1e3:g}"


def _env_us(name: str, default: float) -> str:
    return f"{float(os.environ.get('BENCH_SCALE_' + name) or default / 1e6) * 1e6:g}"


def _sqlite_statuses(path: Path) -> dict[str, int]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return dict(db.execute("SELECT status, count(*) FROM instances GROUP BY status").fetchall())
    except sqlite3.Error as exc:
        log(f"scale: cannot read {path}: {exc}")
        return {}


# -- the API load ------------------------------------------------------------------------------------------


class _Conn:
    """One keep-alive HTTP/1.1 connection (asyncio streams; Content-Length or chunked bodies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.open = True

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        headers = {}
        for line in raw.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip().lower()
        if b"content-length" in headers:
            data = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            data = b"".join(p[:-2] for p in parts)
        else:
            data = await self.reader.read()
            self.open = False
        if headers.get(b"connection") == b"close":
            self.open = False
        return status, data

    def close(self) -> None:
        self.writer.close()


async def _api_load(hub: LabHub, rate: float, seconds: float, launch_share: float, grace: float,
                    tag: str) -> dict:
    """Open-loop load: request i is due at t0 + i/rate whatever came back before.  Requests still
    unanswered ``grace`` s after the last one was due are abandoned and counted (``incomplete``)
    with the time they had waited so far: a lower bound, so p99 is one too when any are."""
    tokens = dict(hub.tokens)
    users = sorted(tokens)
    owned = {u: ids for u, ids in hub.seeded.get("instances", {}).items() if ids}  # type: ignore[attr-defined]
    rng = random.Random(42)  # noqa: S311 - a reproducible mix, not a secret
    idle: list[_Conn] = []
    opened = peak = 0
    cap = 64
    freed = asyncio.Condition()
    launches = 0
    samples: list[tuple[str, float, int]] = []  # (kind, ms, status)

    async def connection() -> _Conn:
        nonlocal opened, peak
        async with freed:
            while not idle and opened >= cap:
                await freed.wait()
            if idle:
                return idle.pop()
            opened += 1
            peak = max(peak, opened)
        try:
            reader, writer = await asyncio.open_connection(HOST, hub.port)
        except OSError:
            async with freed:
                opened -= 1
                freed.notify()
            raise
        return _Conn(reader, writer)

    async def release(conn: _Conn) -> None:
        nonlocal opened
        async with freed:
            if conn.open:
                idle.append(conn)
            else:
                conn.close()
                opened -= 1
            freed.notify()

    def request_for(i: int) -> tuple[str, bytes, bytes]:
        nonlocal launches
        user = users[i % len(users)]
        auth = f"Authorization: Bearer {tokens[user]}\r\n"
        host = f"Host: {HOST}:{hub.port}\r\n"
        if rng.random() < launch_share:
            launches += 1
            body = json.dumps({"template": "scale", "name": f"{tag}{launches}"}).encode()
            return "launch", (f"POST /api/v1/instances HTTP/1.1\r\n{host}{auth}Content-Type: application/json\r\n"
                              f"Content-Length: {len(body)}\r\n\r\n").encode(), body
        kind = rng.choice(("list", "me", "get"))
        if kind == "get" and user in owned:
            path = f"/api/v1/instances/{rng.choice(owned[user])}"
        elif kind == "me":
            path = "/api/v1/me"
        else:
            kind, path = "list", "/api/v1/instances?limit=50"
        return kind, f"GET {path} HTTP/1.1\r\n{host}{auth}\r\n".encode(), b""

    async def one(kind: str, head: bytes, body: bytes, scheduled: float) -> None:
        status = 0
        try:
            conn = await connection()
            try:
                status, _ = await conn.request(head, body)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                conn.open = False
            await release(conn)
        except OSError:
            pass
        samples.append((kind, (time.perf_counter() - scheduled) * 1e3, status))

    total = int(rate * seconds)
    tasks: list[tuple[asyncio.Task, str, float]] = []
    t0 = time.perf_counter()
    for i in range(total):
        scheduled = t0 + i / rate
        if (delay := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        kind, head, body = request_for(i)
        tasks.append((asyncio.create_task(one(kind, head, body, scheduled)), kind, scheduled))
    wait = max(0.0, t0 + seconds + grace - time.perf_counter())
    _, pending = await asyncio.wait([t for t, _, _ in tasks], timeout=wait)
    cut = time.perf_counter()
    incomplete = 0
    for task, kind, scheduled in tasks:
        if task in pending:
            task.cancel()
            incomplete += 1
            samples.append((kind, (cut - scheduled) * 1e3, -1))
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    took = cut - t0
    for conn in idle:
        conn.close()

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        values = sorted(values)
        return round(values[min(len(values) - 1, int(q * len(values)))], 2)

    answered = [(k, ms) for k, ms, st in samples if 200 <= st < 300]
    errors = [(k, st) for k, _, st in samples if not 200 <= st < 300 and st != -1]
    every = [ms for _, ms, _ in samples]
    by_kind = {}
    for kind in ("list", "me", "get", "launch"):
        vals = [ms for k, ms in answered if k == kind]
        by_kind[kind] = {"n": len(vals), "p50_ms": pct(vals, 0.5), "p99_ms": pct(vals, 0.99),
                         "max_ms": round(max(vals), 2) if vals else None}
    return {"p99_ms": pct(every, 0.99), "p50_ms": pct(every, 0.5), "max_ms": round(max(every), 2),
            "offered_rps": rate, "seconds": seconds, "launch_share": launch_share, "requests": len(samples),
            "answered_rps": round(len(answered) / took, 1), "incomplete": incomplete, "errors": len(errors),
            "error_statuses": sorted({st for _, st in errors}), "by_kind": by_kind, "connections_peak": peak}
