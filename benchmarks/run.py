"""LabHub against JupyterHub + configurable-http-proxy, side by side on this machine.

usage: python benchmarks/run.py [--quick] [--only GROUP,...] [--out DIR] [--no-peers]
groups: launch, proxy, hub, api, replicas, jobs, services, admission   (default: all; replicas needs PostgreSQL for its
        takeover figure, services the serve runtime: built under $BENCH_RUNTIMES if missing)

Writes DIR/latest.json and DIR/latest.md (DIR defaults to benchmarks/results) and
prints the table.  Each figure alternates the systems (A B A B ...) and reports
median, min and max per system and the median of the per-pair ratios; see
benchmarks/README.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from admission import admission_figures  # noqa: E402
from hubs import (  # noqa: E402
    CHP,
    HOST,
    JupyterHub,
    LabHub,
    bare_lab,
    descendants_matching,
    peers_installed,
    repo_versions,
)
from jobs import jobs_figures  # noqa: E402
from lib import (  # noqa: E402
    HERE,
    Figure,
    KeepAlive,
    cpu_s,
    cpus,
    free_port,
    loadavg,
    log,
    med,
    ncpus,
    nice_level,
    pinned,
    tree_cpu_s,
    tree_rss_mib,
    wait_ready,
    wrk,
)
from replicas import replicas_figures  # noqa: E402
from report import CHECKS, ORDER, fmt, machine_facts, markdown, miss_note, update_readme  # noqa: E402
from services import services_figures  # noqa: E402

MEM_SETTLE_S = 3.0  # after readiness, before reading a workspace's memory
GROUPS = ("launch", "proxy", "hub", "api", "replicas", "jobs", "services", "admission")


class Config:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.warm_launches = not quick
        self.launch_rounds = 1 if quick else 4
        self.concurrent = 2 if quick else 10
        self.concurrent_rounds = 1 if quick else 2
        self.proxy_rounds = 1 if quick else 3
        self.wrk_seconds = 1 if quick else 4
        self.ws_messages = 500 if quick else 5000
        self.ws_handshakes = 10 if quick else 100
        self.cold_rounds = 1 if quick else 4
        self.cold_users = 200 if quick else 1000
        self.cold_instances = 200 if quick else 100
        self.create_users = 100 if quick else 1000
        self.create_rounds = 1 if quick else 3
        self.create_in_flight = 8
        self.list_items = self.cold_users  # JupyterHub lists its users: as many as were seeded
        self.list_calls = 5 if quick else 20
        self.api_requests = 300 if quick else 3000
        self.api_warmup = 50 if quick else 300
        self.api_rounds = 1 if quick else 3


# -- launch figures ---------------------------------------------------------------------------------


async def launch_figures(cfg: Config, work: Path, peers: bool) -> list[Figure]:
    single = Figure("launch_single", "s", "<= 1.05x or <= +0.2 s", title="single launch -> /api through the proxy",
                    how="Wall time from the launch API call until GET <instance>/api answers 200 through the hub's "
                        "public port. The client waits as the web pages do: it follows the hub's event stream "
                        "(LabHub: /api/v1/instances/{id}/events; JupyterHub: /hub/api/users/{name}/server/progress) "
                        "until it says running/ready, then asks /api (every 10 ms until 200). Baseline: `jupyter "
                        "lab` started by hand, /api polled every 10 ms. Rounds rotate the order of bare, LabHub, "
                        "JupyterHub.")
    mem = Figure("memory_per_workspace", "MiB", "<= 1.05x", title="memory per running JupyterLab workspace",
                 how=f"RSS of the workspace's process tree {MEM_SETTLE_S:g} s after it became ready, in the "
                     "single-launch rounds; baseline: the bare `jupyter lab`.")
    conc = Figure("launch_concurrent", "s", "<= 1.15x", title=f"{cfg.concurrent} concurrent launches",
                  ratio_of="labhub wall / CPU floor (n x bare-lab CPU-seconds to ready / cores)",
                  how=f"{cfg.concurrent} launches by {cfg.concurrent} users in the same instant; wall time until "
                      "every /api answers through the proxy. Baseline: the CPU floor, n x the median CPU-seconds "
                      f"a bare `jupyter lab` spends until ready (its process tree) / {ncpus()} cores.")
    lh = LabHub(work / "launch")
    lh.seed(token_users=cfg.concurrent)
    lh.start()
    await lh.wait_healthy()
    jh = None
    if peers:
        jh = JupyterHub(work / "launch")
        jh.start()
        await jh.wait_healthy()
        await jh.ensure_users([f"bench{i}" for i in range(1, cfg.concurrent + 1)])
    bare_cpu: list[float] = []
    try:
        if cfg.warm_launches:  # the first start pays cold file caches
            await _lh_single(lh, "warm")
            if jh is not None:
                await _jh_single(jh)
            await _bare_single(work, [])
        order = ["bare", "labhub", "peer"]
        for r in range(cfg.launch_rounds):
            res: dict[str, tuple[float, float] | None] = {"peer": None}
            for who in order:
                if who == "bare":
                    res["bare"] = await _bare_single(work, bare_cpu)
                elif who == "labhub":
                    res["labhub"] = await _lh_single(lh, f"r{r}")
                elif jh is not None:
                    res["peer"] = await _jh_single(jh)
            b, lh_res, p = res["bare"], res["labhub"], res["peer"]
            single.baseline.append(b[0])
            single.labhub.append(lh_res[0])
            single.peer.append(p[0] if p else None)
            single.add_ratio(lh_res[0], b[0])
            single.add_ratio(p[0] if p else None, b[0], peer=True)
            mem.baseline.append(b[1])
            mem.labhub.append(lh_res[1])
            mem.peer.append(p[1] if p else None)
            mem.add_ratio(lh_res[1], b[1])
            mem.add_ratio(p[1] if p else None, b[1], peer=True)
            log(f"launch round {r}: bare {b[0]:.2f} s, labhub {lh_res[0]:.2f} s"
                + (f", jupyterhub {p[0]:.2f} s" if p else "") + f" | load {loadavg()}")
            order = order[1:] + order[:1]
        floor = cfg.concurrent * statistics.median(bare_cpu) / ncpus()
        conc.extra["cpu_floor_s"] = round(floor, 3)
        conc.extra["bare_lab_cpu_s"] = [round(x, 3) for x in bare_cpu]
        conc.extra["n"] = cfg.concurrent
        for r in range(cfg.concurrent_rounds):
            t_lh = await _lh_concurrent(lh, cfg.concurrent, f"c{r}")
            t_jh = await _jh_concurrent(jh, cfg.concurrent) if jh is not None else None
            conc.labhub.append(t_lh)
            conc.peer.append(t_jh)
            conc.baseline.append(floor)
            conc.add_ratio(t_lh, floor)
            conc.add_ratio(t_jh, floor, peer=True)
            log(f"concurrent round {r}: labhub {t_lh:.2f} s" + (f", jupyterhub {t_jh:.2f} s" if t_jh else "")
                + f", floor {floor:.2f} s | load {loadavg()}")
    finally:
        lh.stop()
        if jh is not None:
            jh.stop()
    return [single, conc, mem]


async def _bare_single(work: Path, cpu_out: list[float]) -> tuple[float, float]:
    port = free_port()
    token = secrets.token_hex(16)
    t0 = time.perf_counter()
    proc = bare_lab(work, port, token)
    try:
        t1 = await wait_ready(HOST, port, "/api", {"Authorization": f"token {token}"}, interval=0.01, proc=proc,
                              want=b"version")
        cpu_out.append(tree_cpu_s(proc.pid))
        await asyncio.sleep(MEM_SETTLE_S)
        rss = tree_rss_mib(proc.pid)
    finally:
        proc.stop()
    return t1 - t0, rss


async def _lh_single(lh: LabHub, name: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    iid = await lh.launch("bench1", name)
    t1 = await lh.wait_instance("bench1", name, iid=iid)
    await asyncio.sleep(MEM_SETTLE_S)
    pid = lh.instance_pid(iid)
    rss = tree_rss_mib(pid) if pid else 0.0
    await lh.stop_instance("bench1", iid)
    return t1 - t0, rss


async def _jh_single(jh: JupyterHub) -> tuple[float, float]:
    t0 = time.perf_counter()
    await jh.launch("bench1")
    t1 = await jh.wait_instance("bench1")
    await asyncio.sleep(MEM_SETTLE_S)
    pids = descendants_matching(jh.proc.pid, "jupyterhub-singleuser") if jh.proc else []
    rss = sum(tree_rss_mib(p) for p in pids)
    await jh.stop_instance("bench1")
    return t1 - t0, rss


async def _lh_concurrent(lh: LabHub, n: int, tag: str) -> float:
    users = [f"bench{i}" for i in range(1, n + 1)]
    t0 = time.perf_counter()

    async def one(u: str) -> str:
        iid = await lh.launch(u, tag)
        await lh.wait_instance(u, tag, iid=iid)
        return iid

    iids = await asyncio.gather(*(one(u) for u in users))
    took = time.perf_counter() - t0
    await asyncio.gather(*(lh.stop_instance(u, i) for u, i in zip(users, iids, strict=True)))
    return took


async def _jh_concurrent(jh: JupyterHub, n: int) -> float:
    users = [f"bench{i}" for i in range(1, n + 1)]
    t0 = time.perf_counter()

    async def one(u: str) -> None:
        await jh.launch(u)
        await jh.wait_instance(u)

    await asyncio.gather(*(one(u) for u in users))
    took = time.perf_counter() - t0
    await asyncio.gather(*(jh.stop_instance(u) for u in users))
    return took


# -- proxy figures ------------------------------------------------------------------------------------


async def proxy_figures(cfg: Config, work: Path, peers: bool) -> list[Figure]:
    thr = Figure("proxy_throughput", "req/s", ">= 0.6 (and >= 1.5x CHP)",
                 title="proxy throughput, 32 keep-alive connections, through / direct",
                 how=f"wrk -t1 -c32 -d{cfg.wrk_seconds}s against the trivial backend (13-byte body) directly "
                     "and through each proxy, with a bearer token (LabHub checks it and swaps it for the "
                     "instance's; CHP passes it on).")
    lat50 = Figure("proxy_added_latency_p50", "ms", "<= 0.25 ms", title="proxy added latency p50, 1 connection",
                   ratio_of="labhub through p50 / direct p50, median of per-pair ratios",
                   how=f"wrk -t1 -c1 -d{cfg.wrk_seconds}s; the figure is p50 through the proxy minus p50 direct "
                       "(baseline: direct p50).")
    lat99 = Figure("proxy_latency_p99", "ms", "<= CHP's", title="proxy latency p99, 1 connection",
                   ratio_of="labhub p99 / CHP p99, median of per-pair ratios",
                   how="Same runs as the p50 figure: p99 through each proxy (baseline: direct p99).")
    cpu = Figure("proxy_cpu_per_request", "ms", "<= 0.15 ms", title="proxy CPU per request",
                 ratio_of="labhub / CHP, median of per-pair ratios",
                 how="utime+stime of the proxy process (LabHub: the whole hub process) during the 32-connection "
                     "run / requests served. Baseline: the backend's own CPU per request, direct.")
    ws = Figure("ws_echo_rtt_p50", "ms", "<= 1.4x", title="WebSocket echo round trip p50, through / direct",
                how=f"One WebSocket to the backend's echo (directly and through each proxy); {cfg.ws_messages} "
                    "32-byte text frames sent one at a time, each timed until its echo is back, with the "
                    "`websockets` client on uvloop. strict_raw_client: the same with a blocking-socket client "
                    "that does almost no work per message (the proxy's added time shows undiluted).")
    hs = Figure("ws_handshake", "ms", "<= CHP's", title="WebSocket handshake",
                ratio_of="labhub / CHP, median of per-pair ratios",
                how=f"TCP connect + Upgrade request until the whole 101 is read, median of {cfg.ws_handshakes} "
                    "fresh connections (baseline: direct).")
    lh = LabHub(work / "proxy")
    lh.seed(token_users=1)
    lh.start()
    chp = CHP(work / "proxy") if peers else None
    try:
        await lh.wait_healthy()
        iid = await lh.launch("bench1", "echo", template="bench-echo")
        await lh.wait_instance("bench1", "echo", path="", want=b"Hello")
        bport = lh.instance_port(iid)
        bpid = lh.instance_pid(iid)
        if chp is not None:
            await chp.start(bport)
        hub_pid = lh.proc.pid  # type: ignore[union-attr]
        token = lh.tokens["bench1"]
        hdr = {"Authorization": f"Bearer {token}"}
        path = "/user/bench1/echo/"
        # who -> (URL to connect to, pid, extra headers, URL the WebSocket client names, its connect address)
        targets = {"direct": (f"http://{HOST}:{bport}{path}", bpid, {}, f"ws://{HOST}:{bport}{path}", None)}
        origin = lh.instance_origin("bench1", "echo")  # LabHub serves each instance on its own origin
        if origin is not None:
            targets["labhub"] = (f"http://{HOST}:{lh.port}/", hub_pid, {"Host": origin}, f"ws://{origin}/",
                                 f"{HOST}:{lh.port}")
        else:  # a LabHub from before instance origins (BENCH_LABHUB_SRC): /user/... on its own origin
            targets["labhub"] = (f"http://{HOST}:{lh.port}{path}", hub_pid, {}, f"ws://{HOST}:{lh.port}{path}", None)
        if chp is not None:
            targets["peer"] = (f"http://{HOST}:{chp.port}{path}", chp.proc.pid, {},  # type: ignore[union-attr]
                               f"ws://{HOST}:{chp.port}{path}", None)
        # warm-up: fill pools and caches; CHP (node) needs a few seconds for its JIT
        for who, (url, _, extra, _, _) in targets.items():
            wrk(url, connections=32, seconds=4 if who == "peer" else 1, headers={**hdr, **extra})
        order = list(targets)
        for r in range(cfg.proxy_rounds):
            res: dict[str, dict] = {}
            for who in order:
                url, pid, extra, ws_url, connect = targets[who]
                h = {**hdr, **extra}
                c0 = cpu_s(pid, with_children=False)
                t = wrk(url, connections=32, seconds=cfg.wrk_seconds, headers=h)
                t["cpu_ms_per_req"] = (cpu_s(pid, with_children=False) - c0) / t["requests"] * 1e3
                one = wrk(url, connections=1, seconds=cfg.wrk_seconds, headers=h)
                w = ws_client(ws_url, token, cfg, "websockets", connect)
                w_raw = ws_client(ws_url, token, cfg, "raw", connect)
                res[who] = {"thr": t, "one": one, "ws": w, "ws_raw": w_raw}
            d, lhr, p = res["direct"], res["labhub"], res.get("peer")
            thr.baseline.append(d["thr"]["rps"])
            thr.labhub.append(lhr["thr"]["rps"])
            thr.peer.append(p["thr"]["rps"] if p else None)
            thr.add_ratio(lhr["thr"]["rps"], d["thr"]["rps"])
            thr.add_ratio(p["thr"]["rps"] if p else None, d["thr"]["rps"], peer=True)
            thr.extra.setdefault("labhub_over_peer_pairs", []).append(
                round(lhr["thr"]["rps"] / p["thr"]["rps"], 3) if p else None)
            d50, l50 = d["one"]["p50_us"] / 1e3, lhr["one"]["p50_us"] / 1e3
            p50 = p["one"]["p50_us"] / 1e3 if p else None
            lat50.baseline.append(d50)
            lat50.labhub.append(l50 - d50)
            lat50.peer.append(p50 - d50 if p50 is not None else None)
            lat50.add_ratio(l50, d50)
            lat50.add_ratio(p50, d50, peer=True)
            d99, l99 = d["one"]["p99_us"] / 1e3, lhr["one"]["p99_us"] / 1e3
            p99 = p["one"]["p99_us"] / 1e3 if p else None
            lat99.baseline.append(d99)
            lat99.labhub.append(l99)
            lat99.peer.append(p99)
            lat99.add_ratio(l99, p99)
            cpu.baseline.append(d["thr"]["cpu_ms_per_req"])
            cpu.labhub.append(lhr["thr"]["cpu_ms_per_req"])
            cpu.peer.append(p["thr"]["cpu_ms_per_req"] if p else None)
            cpu.add_ratio(lhr["thr"]["cpu_ms_per_req"], p["thr"]["cpu_ms_per_req"] if p else None)
            ws.baseline.append(d["ws"]["rtt_p50_ms"])
            ws.labhub.append(lhr["ws"]["rtt_p50_ms"])
            ws.peer.append(p["ws"]["rtt_p50_ms"] if p else None)
            ws.add_ratio(lhr["ws"]["rtt_p50_ms"], d["ws"]["rtt_p50_ms"])
            ws.add_ratio(p["ws"]["rtt_p50_ms"] if p else None, d["ws"]["rtt_p50_ms"], peer=True)
            for key, fig in (("rtt_p50_ms", ws), ("handshake_ms", hs)):
                strict = fig.extra.setdefault("strict_raw_client", {"labhub": [], "peer": [], "baseline": []})
                strict["baseline"].append(round(d["ws_raw"][key], 4))
                strict["labhub"].append(round(lhr["ws_raw"][key], 4))
                strict["peer"].append(round(p["ws_raw"][key], 4) if p else None)
            hs.baseline.append(d["ws"]["handshake_ms"])
            hs.labhub.append(lhr["ws"]["handshake_ms"])
            hs.peer.append(p["ws"]["handshake_ms"] if p else None)
            hs.add_ratio(lhr["ws"]["handshake_ms"], p["ws"]["handshake_ms"] if p else None)
            log(f"proxy round {r}: rps direct {d['thr']['rps']:.0f} labhub {lhr['thr']['rps']:.0f}"
                + (f" chp {p['thr']['rps']:.0f}" if p else "")
                + f"; cpu/req labhub {lhr['thr']['cpu_ms_per_req']*1e3:.0f} us"
                + (f" chp {p['thr']['cpu_ms_per_req']*1e3:.0f} us" if p else "") + f" | load {loadavg()}")
            order = order[1:] + order[:1]
        for fig in (ws, hs):
            st = fig.extra["strict_raw_client"]
            st["median"] = {k: med(v) for k, v in st.items() if isinstance(v, list)}
            m = st["median"]
            st["labhub_over_baseline"] = round(m["labhub"] / m["baseline"], 3) if m["baseline"] else None
            st["labhub_added_ms"] = round(m["labhub"] - m["baseline"], 4)
            if m.get("peer") is not None:
                st["peer_over_baseline"] = round(m["peer"] / m["baseline"], 3) if m["baseline"] else None
                st["peer_added_ms"] = round(m["peer"] - m["baseline"], 4)
        vs = [x for x in thr.extra["labhub_over_peer_pairs"] if x is not None]
        thr.extra["labhub_over_peer"] = statistics.median(vs) if vs else None
        await lh.stop_instance("bench1", iid)
    finally:
        if chp is not None:
            chp.stop()
        lh.stop()
    return [thr, lat50, lat99, cpu, ws, hs]


def ws_client(url: str, token: str, cfg: Config, client: str, connect: str | None = None) -> dict:
    """One run of wsclient.py in its own (pinned) process; ``connect``: ``HOST:PORT`` when ``url``'s host
    is an instance origin (``*.localhost``) that Python cannot resolve."""
    argv = [sys.executable, str(HERE / "wsclient.py"), url, "--client", client, "--header",
            f"Authorization: Bearer {token}", "--messages", str(cfg.ws_messages), "--handshakes",
            str(cfg.ws_handshakes), *(["--connect", connect] if connect else [])]
    out = subprocess.run(pinned(argv), capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout)


# -- hub figures: cold start, user creation, listing, idle memory -------------------------------------


async def hub_figures(cfg: Config, work: Path, peers: bool) -> list[Figure]:
    cold = Figure("hub_cold_start", "s", "<= 1 s",
                  title=f"hub cold start to healthy, {cfg.cold_users} users + {cfg.cold_instances} instances in the DB",
                  ratio_of="labhub / JupyterHub, median of per-pair ratios",
                  how="From exec of `labhub serve` / `jupyterhub` until the public port answers the health "
                      "endpoint (/api/v1/health, /hub/health; JupyterHub's includes starting CHP). The database "
                      f"holds {cfg.cold_users} users and {cfg.cold_instances} past instances (LabHub: stopped "
                      "instances with their events; JupyterHub: users' server records, not running).")
    create = Figure("create_users", "s", "<= 3 s", title=f"create {cfg.create_users} users via the API",
                    ratio_of="labhub / JupyterHub, median of per-pair ratios",
                    how=f"{cfg.create_users} new users (no password) in one bulk call on the seeded hub, bulk "
                        "against bulk: LabHub POST /api/v1/users:bulk {\"users\": [{\"name\": ...}, ...]} (all or "
                        "none, each audited); JupyterHub POST /hub/api/users {\"usernames\": [...]}. Wall time "
                        "until the answer; rounds alternate the systems. one_post_per_user: the same number of "
                        f"single-user POSTs, {cfg.create_in_flight} in flight (LabHub POST /api/v1/users, "
                        "JupyterHub POST /hub/api/users/{name}), once per system, for reference.")
    lst = Figure("list_1000", "ms", "<= 50 ms", title=f"list {cfg.list_items} instances or users in one call",
                 ratio_of="labhub / JupyterHub, median of per-pair ratios",
                 how=f"Median of {cfg.list_calls} calls on a keep-alive connection, alternating. LabHub: GET "
                     f"/api/v1/instances?all=true&limit={cfg.list_items} (admin, {cfg.list_items} instances); "
                     f"JupyterHub: GET /hub/api/users?limit={cfg.list_items} ({cfg.list_items} users).")
    mem = Figure("hub_idle_memory", "MiB", "<= 80 MiB", title="hub memory idle (RSS, hub plus proxy)",
                 ratio_of="labhub / JupyterHub, median of per-pair ratios",
                 how="RSS of the hub's process tree (LabHub: one process; JupyterHub: the hub plus CHP) after a "
                     "cold start with the seeded database, a health check, 20 authenticated API calls and 2 s idle.")
    lh = LabHub(work / "hub")
    lh.seed(users=cfg.cold_users, instances=cfg.cold_instances, token_users=1)
    jh = JupyterHub(work / "hub") if peers else None
    if jh is not None:  # JupyterHub's ORM creates and stamps the schema, as its first start would
        jh.seed(users=cfg.cold_users, instances=cfg.cold_instances)
    systems: list = [lh] + ([jh] if jh is not None else [])
    # listing needs list_items rows: in quick mode the cold-start database already has them
    list_in_cold = cfg.list_items <= cfg.cold_instances
    try:
        if not cfg.quick:  # warm file caches once
            for s in systems:
                s.start()
                await s.wait_healthy()
                s.stop()
        for r in range(cfg.cold_rounds):
            res = {}
            for s in systems if r % 2 == 0 else systems[::-1]:
                proc = s.start()
                t1 = await s.wait_healthy()
                res[s.name] = t1 - proc.t0
                for _ in range(20):
                    if s is lh:
                        await lh.api("GET", "/api/v1/me")
                    else:
                        await jh.api("GET", "/users/bench-u0001")  # type: ignore[union-attr]
                await asyncio.sleep(2.0)
                res[s.name + "_mem"] = tree_rss_mib(proc.pid)
                if list_in_cold and r == cfg.cold_rounds - 1:
                    await _list_and_create(cfg, s, lst, create)
                s.stop()
            cold.labhub.append(res["labhub"])
            cold.peer.append(res.get("jupyterhub"))
            cold.add_ratio(res["labhub"], res.get("jupyterhub"))
            mem.labhub.append(res["labhub_mem"])
            mem.peer.append(res.get("jupyterhub_mem"))
            mem.add_ratio(res["labhub_mem"], res.get("jupyterhub_mem"))
            log(f"cold start round {r}: labhub {res['labhub']:.2f} s {res['labhub_mem']:.0f} MiB"
                + (f", jupyterhub {res['jupyterhub']:.2f} s {res['jupyterhub_mem']:.0f} MiB" if jh else "")
                + f" | load {loadavg()}")
        if not list_in_cold:
            lh.seed(instances=cfg.list_items - cfg.cold_instances)
            for s in systems:
                s.start()
                await s.wait_healthy()
            await _list_and_create(cfg, None, lst, create, systems=systems)
    finally:
        for s in systems:
            s.stop()
    for f, what in ((lst, "list"), (create, "create users")):
        log(f"{what}: labhub {fmt(med(f.labhub))}, jupyterhub {fmt(med(f.peer))} | load {loadavg()}")
    for f in (create, lst):  # pairs: the calls alternated between the systems
        if peers and len(f.labhub) == len(f.peer):
            f.ratios = [a / b if a is not None and b else None for a, b in zip(f.labhub, f.peer, strict=True)]
        f.loads.append(loadavg())
    return [cold, create, lst, mem]


async def _list_and_create(cfg: Config, one, lst: Figure, create: Figure, systems: list | None = None) -> None:  # noqa: ANN001
    """List and create-users calls, alternating between the running systems (or on ``one``)."""
    systems = systems or [one]
    conns = {}
    for s in systems:
        if s.name == "labhub":
            conns[s.name] = (KeepAlive(HOST, s.port, s.auth()), f"/api/v1/instances?all=true&limit={cfg.list_items}")
        else:
            conns[s.name] = (KeepAlive(HOST, s.port, s.auth()), f"/hub/api/users?limit={cfg.list_items}")
    try:
        for name, (conn, path) in conns.items():
            lst.extra.setdefault("items", {})[name] = len(json.loads(conn.request("GET", path)[1]))
        for _ in range(cfg.list_calls):
            for name, (conn, path) in conns.items():
                (lst.labhub if name == "labhub" else lst.peer).append(_timed(conn, path))
    finally:
        for conn, _ in conns.values():
            conn.close()
    for r in range(cfg.create_rounds):  # bulk against bulk, the order alternating
        for s in systems if r % 2 == 0 else systems[::-1]:
            names = [f"bulk{r}-u{i:04d}" for i in range(cfg.create_users)]
            t0 = time.perf_counter()
            if s.name == "labhub":
                status, body = await s.api("POST", "/api/v1/users:bulk", None, {"users": [{"name": n} for n in names]})
            else:
                status, body = await s.api("POST", "/users", {"usernames": names})
            took = time.perf_counter() - t0
            if s.name == "labhub" and status in (404, 405):  # a LabHub from before the bulk API (BENCH_LABHUB_SRC)
                log("labhub: no POST /api/v1/users:bulk here; create_users is measured one POST per user only")
                create.labhub.append(None)
                continue
            if status != 201 or not body or len(body["users"] if isinstance(body, dict) else body) != len(names):
                raise RuntimeError(f"{s.name}: bulk creation failed: {status} {str(body)[:300]}")
            (create.labhub if s.name == "labhub" else create.peer).append(took)
    one = create.extra.setdefault("one_post_per_user", {"n": cfg.create_users, "in_flight": cfg.create_in_flight,
                                                        "labhub": None, "peer": None})
    for s in systems:  # one user per POST, for reference
        prefix = "single-u"
        if s.name == "labhub":
            one["labhub"] = round(await _post_many(
                lambda i, s=s, p=prefix: s.api("POST", "/api/v1/users", None, {"name": f"{p}{i:04d}"}),
                cfg.create_users, cfg.create_in_flight), 3)
        else:
            one["peer"] = round(await _post_many(lambda i, s=s, p=prefix: s.api("POST", f"/users/{p}{i:04d}"),
                                                 cfg.create_users, cfg.create_in_flight), 3)


def _timed(conn: KeepAlive, path: str) -> float:
    t0 = time.perf_counter()
    status, body = conn.request("GET", path)
    took = (time.perf_counter() - t0) * 1e3
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
    return took


async def _post_many(call: Callable, n: int, in_flight: int) -> float:
    sem = asyncio.Semaphore(in_flight)
    failures = []

    async def one(i: int) -> None:
        async with sem:
            status, body = await call(i)
            if status not in (200, 201):
                failures.append((status, body))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    took = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} creations failed, e.g. {failures[0]}")
    return took


# -- hub CPU per API request ---------------------------------------------------------------------------

# figure suffix, what is asked, target (ms), LabHub path, JupyterHub path (its closest equivalent)
API_CALLS = (
    ("health", "health check", 0.3, "/api/v1/health", "/hub/health"),
    ("me", "who am I", 0.6, "/api/v1/me", "/hub/api/user"),
    ("instances", "my instances (one)", 1.0, "/api/v1/instances", "/hub/api/users/bench1"),
    ("templates", "what I may launch", 1.0, "/api/v1/templates", "/hub/api/users/bench1/tokens"),
)


async def api_figures(cfg: Config, work: Path, peers: bool) -> list[Figure]:
    """Hub CPU per request for small authenticated reads, LabHub and JupyterHub alternating."""
    n = cfg.api_requests
    figs = {key: Figure(f"api_cpu_{key}", "ms", f"<= {target:g} ms", title=f"hub CPU per API request: {what}",
                        ratio_of="labhub / JupyterHub, median of per-pair ratios",
                        how=f"utime+stime of the hub's own processes (LabHub: the one `labhub serve` process; "
                            f"JupyterHub: the hub plus CHP, which every request crosses; not the instances) over "
                            f"{n} sequential GETs on one keep-alive connection (http.client) to the public port, "
                            f"/ {n}; after {cfg.api_warmup} warm-up requests; rounds alternate the systems. "
                            f"LabHub: GET {lh_path} with bench1's token; JupyterHub: GET {jh_path} with bench1's "
                            "own token" + {
                                "health": " (no token needed by either).",
                                "me": ".",
                                "instances": ". bench1 has one running instance on each: LabHub a bench-echo "
                                             "instance (the trivial backend), JupyterHub its default server "
                                             "(JupyterLab); JupyterHub's user model lists its servers.",
                                "templates": ". JupyterHub has no template catalog (its spawner options are "
                                             "static configuration rendered into the spawn page, and GET "
                                             "/hub/api/info needs read:hub, which a user's token lacks): the "
                                             "closest is a small authenticated list read of the user's own, "
                                             "its API tokens (one). LabHub: 2 templates (jupyterlab, bench-echo) "
                                             "with their sizes and parameters.",
                            }[key])
            for key, what, target, lh_path, jh_path in API_CALLS}
    lh = LabHub(work / "api")
    lh.seed(token_users=1)
    lh.start()
    jh = JupyterHub(work / "api") if peers else None
    iid = None
    try:
        await lh.wait_healthy()
        iid = await lh.launch("bench1", "echo", template="bench-echo")
        await lh.wait_instance("bench1", "echo", path="", want=b"Hello")
        # who -> (a new keep-alive connection, the pids whose CPU counts)
        targets = {"labhub": (lambda: KeepAlive(HOST, lh.port, lh.auth("bench1")), [lh.proc.pid])}  # type: ignore[union-attr]
        if jh is not None:
            jh.start()
            await jh.wait_healthy()
            await jh.ensure_users(["bench1"])
            await jh.user_token("bench1")
            await jh.launch("bench1")
            await jh.wait_instance("bench1")
            chp = jh.chp_pid()
            targets["jupyterhub"] = (lambda: KeepAlive(HOST, jh.port, jh.auth("bench1")),
                                     [jh.proc.pid] + ([chp] if chp else []))  # type: ignore[union-attr]
        paths = {"labhub": {k: lp for k, _, _, lp, _ in API_CALLS},
                 "jupyterhub": {k: jp for k, _, _, _, jp in API_CALLS}}
        for who, (connect, _) in targets.items():  # warm-up (and a check that every call answers 200)
            for key in figs:
                _cpu_per_request(connect, paths[who][key], cfg.api_warmup, [])
        order = list(targets)
        for r in range(cfg.api_rounds):
            for key, fig in figs.items():
                res = {}
                for who in order:
                    connect, pids = targets[who]
                    res[who] = _cpu_per_request(connect, paths[who][key], n, pids)
                fig.labhub.append(res["labhub"])
                fig.peer.append(res.get("jupyterhub"))
                fig.add_ratio(res["labhub"], res.get("jupyterhub"))
            log(f"api round {r}: " + ", ".join(
                f"{k} labhub {f.labhub[-1]:.3f}" + (f" jupyterhub {f.peer[-1]:.3f}" if f.peer[-1] else "")
                for k, f in figs.items()) + f" ms CPU/request | load {loadavg()}")
            order = order[1:] + order[:1]
        await lh.stop_instance("bench1", iid)
        if jh is not None:
            await jh.stop_instance("bench1")
    finally:
        lh.stop()
        if jh is not None:
            jh.stop()
    return list(figs.values())


def _cpu_per_request(connect: Callable[[], KeepAlive], path: str, n: int, pids: list[int]) -> float:
    """``n`` GETs of ``path`` on a fresh keep-alive connection (after 10 unmeasured ones: a connection idle
    while the other system was measured may have been closed by then); the CPU milliseconds ``pids``
    spent per request meanwhile."""
    conn = connect()
    try:
        for i in range(-10, n):
            if i == 0:
                c0 = sum(cpu_s(p, with_children=False) for p in pids)
            status, body = conn.request("GET", path)
            if status != 200:
                raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        return (sum(cpu_s(p, with_children=False) for p in pids) - c0) / n * 1e3
    finally:
        conn.close()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="each figure once, with small counts")
    ap.add_argument("--only", default="", help="comma-separated groups: " + ", ".join(GROUPS))
    ap.add_argument("--out", default=None, help="default: benchmarks/results (quick: benchmarks/results/quick)")
    ap.add_argument("--no-peers", action="store_true", help="LabHub only (peer values null)")
    ap.add_argument("--render", action="store_true",
                    help="only re-render latest.md (and the README table) from OUT/latest.json, with current notes")
    args = ap.parse_args()
    if args.render:
        out = Path(args.out) if args.out else HERE / "results"
        result = json.loads((out / "latest.json").read_text())
        for f in result["figures"]:
            f.pop("note", None)
            f["meets"] = CHECKS[f["name"]](f)
            if note := miss_note(f):
                f["note"] = note
        (out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
        md = markdown(result)
        (out / "latest.md").write_text(md)
        if not result["quick"] and not args.out:
            update_readme(md)
        print(md)
        return 0
    cfg = Config(args.quick)
    if nice_level():  # the driver waits on event streams and polls: same priority as what it measures
        os.setpriority(os.PRIO_PROCESS, 0, nice_level())
    peers = not args.no_peers and peers_installed()
    if not args.no_peers and not peers:
        log("peers are not installed (run benchmarks/install.sh): LabHub figures only")
    groups = [g for g in args.only.split(",") if g] or list(GROUPS)
    if unknown := set(groups) - set(GROUPS):
        ap.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    started = dt.datetime.now(dt.UTC)
    machine = machine_facts()
    machine["loadavg_start"] = loadavg()
    figures: list[Figure] = []
    work = Path(tempfile.mkdtemp(prefix="labhub-bench-"))
    log(f"work dir {work}; cpus {cpus()}; load {loadavg()}; quick={cfg.quick}; peers={peers}")
    t0 = time.perf_counter()
    durations: dict[str, float] = {}
    try:
        for group, run in (("proxy", proxy_figures), ("hub", hub_figures), ("api", api_figures),
                           ("launch", launch_figures), ("replicas", replicas_figures),
                           ("jobs", jobs_figures), ("services", services_figures),
                           ("admission", admission_figures)):
            if group in groups:
                g0 = time.perf_counter()
                figures += await run(cfg, work, peers)
                durations[group] = round(time.perf_counter() - g0, 1)
                log(f"{group} figures took {durations[group]} s")
    finally:
        if os.environ.get("BENCH_KEEP_WORK") != "1":
            shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_end"] = loadavg()
    by_name = {f.name: f for f in figures}
    for f in figures:
        if f.note:
            continue
        f.note = "__auto__"
    result = {
        "quick": cfg.quick,
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "group_duration_s": durations,
        "peers": peers,
        "labhub_setup": "full `labhub serve` process (proxy + app in one process), local backend, "
                        "LABHUB_ISOLATION=none, SQLite",
        "peer_setup": "JupyterHub (DummyAuthenticator, SimpleLocalProcessSpawner, CHP) for launch/hub figures; "
                      "CHP alone with one route for proxy figures" if peers else None,
        "machine": machine,
        "versions": repo_versions(),
        "figures": [by_name[n].to_json(CHECKS[n]) for n in ORDER if n in by_name],
    }
    for f in result["figures"]:
        if f.get("note") == "__auto__":
            note = miss_note(f)
            if note:
                f["note"] = note
            else:
                del f["note"]
    out = Path(args.out) if args.out else HERE / "results" / ("quick" if cfg.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (out / "latest.md").write_text(md)
    if not cfg.quick and not args.out and set(groups) == set(GROUPS):
        update_readme(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
