"""The ``services`` group: a model served by the built-in ``model-service`` template, through the
hub's proxy and directly.

* ``service_infer_throughput``: ``wrk -t1 -c8`` (8 keep-alive connections, a Lua script that POSTs
  the same Open Inference Protocol request) against ``POST <instance>/v2/models/tiny/infer`` of a
  running ``model-service`` instance, through the hub's public port on the instance's own origin
  with the owner's bearer token (the proxy checks it and swaps it for the instance's), and against
  the same runtime program started by hand on a loopback TCP port; requests/s, the ratio through /
  direct.  The model is ``tiny.onnx`` (one Gemm of 4 inputs to 3 outputs and a Softmax), written as
  an artifact by a ``kind: job`` site template that runs in the ``serve`` runtime; each request is
  one row of 4 FP32 values.
* ``service_infer_added_latency_p50``: the same runs' p50 latency, through minus direct (8 clients;
  ``one_connection`` in the JSON: the same with ``wrk -c1``).
* ``service_cold_start``: ``POST /api/v1/instances`` of ``model-service`` (the runtime already
  built) until the first infer answered through the proxy (the client follows the instance's event
  stream until it says running, then POSTs the request every 10 ms until a 200 with outputs), against
  ``labhub_serve`` started by hand with the same model until its first answered infer (the request
  POSTed every 10 ms from the exec).  The figure is launch-to-first-answer of a stopped service: the
  hub waking a service that scaled to zero on its next request is not measured here.

The hand-started program is what the hub ran (``/proc/<pid>/cmdline`` of the instance: the runtime's
python, ``-m labhub_serve --model <the job's artifact>``), with the instance's environment, as the
same account, on the same CPUs; only where it listens differs: the hub's local backend gives the
instance a Unix socket (``listen.socket`` of the template; the proxy's upstream hop is that socket),
the hand-started one listens on ``127.0.0.1:<port>`` (wrk speaks TCP only), so "direct" is one TCP
hop and "through" is a TCP hop to the proxy plus the Unix-socket hop to the program.

The ``serve`` runtime (KServe's model server and ONNX Runtime, ~1.2 GB) is the one the tests build:
under ``$BENCH_RUNTIMES`` (default ``$LABHUB_TEST_RUNTIMES``, else ``<repo>/.runtimes``), built there
first if it is missing (minutes, PyPI needed; if that fails the figures are reported as not
measured); the hub gets it as ``LABHUB_RUNTIMES_DIR``, so it must be readable by the hub's account
(the directory 0755, as ``labhub runtime build`` makes it).

No peer (JupyterHub serves no models).  The hub runs as in the other groups: ``labhub serve``, local
backend, ``LABHUB_ISOLATION=none``, SQLite, as ``nobody`` when the harness is root; the hand-started
program runs as the same account.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from hubs import HOST, LABHUB_RUN_AS, LabHub
from jobs import _event_medians, _ids, _own
from lib import HERE, REPO, Figure, Proc, cpu_s, free_port, http_request, loadavg, log, pinned, sse_until

THROUGHPUT_TARGET_RATIO = 0.8
ADDED_P50_TARGET_MS = 0.3
COLD_TARGET_RATIO = 1.2
CONNECTIONS = 8
POLL_S = 0.01  # how often a starting service is asked for its first answer
JOB, MODEL = "model", "tiny"  # the job that writes the model, and the model's name (its file's stem)
# The job's program (run by the serve runtime's python): a tiny ONNX graph, as tests/runtimes/serve_support.py
# makes its models, written into the job's artifacts.
MAKE_MODEL = f"""
import os
from pathlib import Path
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
rng = np.random.default_rng(0)
graph = helper.make_graph(
    [helper.make_node("Gemm", ["x", "W", "c"], ["logits"]), helper.make_node("Softmax", ["logits"], ["prob"], axis=1)],
    "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
    [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3])],
    initializer=[numpy_helper.from_array(rng.normal(size=(4, 3)).astype("float32"), "W"),
                 numpy_helper.from_array(rng.normal(size=3).astype("float32"), "c")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, Path(os.environ["LABHUB_OUTPUT"]) / "{MODEL}.onnx")
print("wrote {MODEL}.onnx", flush=True)
"""
INFER_PATH = f"/v2/models/{MODEL}/infer"
INFER_BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                     "data": [0.1, 0.2, 0.3, 0.4]}]}, separators=(",", ":")).encode()
LISTEN_FLAGS = {"--socket": 1, "--port": 1, "--host": 1, "--fd": 1}  # where the program listens: replaced


class Counts:
    """The group's sizes (run.py's Config says quick or full)."""

    def __init__(self, quick: bool) -> None:
        self.infer_rounds = 1 if quick else 15
        self.wrk_seconds = 1 if quick else 2
        self.cold_rounds = 1 if quick else 7
        self.warm = not quick


def runtimes_root() -> Path:
    return Path(os.environ.get("BENCH_RUNTIMES") or os.environ.get("LABHUB_TEST_RUNTIMES") or REPO / ".runtimes")


def serve_runtime(root: Path) -> tuple[Path | None, str]:
    """The built ``serve`` runtime's python under ``root`` (built first if missing), or ``(None, why)``."""
    from labhub import runtimes

    runtime = runtimes.BUILTIN["serve"]
    if not runtimes.is_built(root, runtime):
        log(f"services: building the serve runtime under {root} (minutes; needs PyPI)")
        try:
            if not root.is_dir():
                root.mkdir(parents=True)
                root.chmod(0o755)  # noqa: S103 - the hub's account runs what is in it
            runtimes.build_sync(root, runtime)
        except Exception as exc:  # noqa: BLE001 - RuntimeBuildError, OSError: the figures are not measured
            return None, f"building it under {root} failed: {str(exc)[:300]}"
    python = runtimes.python_of(root, runtime)
    try:  # the hub's account must reach it (every directory above it traversable)
        subprocess.run([str(python), "-c", "pass"], check=True, capture_output=True, timeout=60, **_ids())
    except PermissionError as exc:
        return None, f"{python} does not run as {LABHUB_RUN_AS or 'this account'} ({exc}): its directories must be 0755"
    except (OSError, subprocess.SubprocessError) as exc:  # e.g. removed meanwhile (a newer build's prune)
        return None, f"{python} does not run as {LABHUB_RUN_AS or 'this account'}: {str(exc)[:300]}"
    return python, ""


def _not_measured(figures: list[Figure], why: str) -> list[Figure]:
    log(f"services: serve runtime unavailable ({why}); figures not measured")
    for fig in figures:
        fig.note = f"not measured: serve runtime unavailable ({why})"
    return figures


async def services_figures(cfg, work: Path, peers: bool) -> list[Figure]:  # noqa: ANN001 - run.Config
    counts = Counts(cfg.quick)
    secs = counts.wrk_seconds
    thr = Figure("service_infer_throughput", "req/s", f">= {THROUGHPUT_TARGET_RATIO:g}x direct",
                 title=f"model service inference, {CONNECTIONS} clients, through / direct",
                 ratio_of="labhub req/s / direct req/s, median of per-pair ratios",
                 how=f"wrk -t1 -c{CONNECTIONS} -d{secs}s with a Lua script POSTing one Open Inference Protocol "
                     f"request (one row of 4 FP32) to {INFER_PATH} of a tiny ONNX model (Gemm 4x3 + Softmax, a "
                     "job's artifact) served by a running model-service instance (labhub_serve in the serve "
                     "runtime, on a Unix socket the local backend gave it): through the hub's public port on the "
                     "instance's own origin (Host: <name>--<user>.localhost) with the owner's bearer token, and "
                     "directly to the same program (the instance's argv and environment, same account and CPUs) "
                     "started by hand on a loopback TCP port. Every answer must be a 200 (wrk's status errors "
                     "are counted). hub_cpu_ms_per_req: the hub process's utime+stime per request during the "
                     "run; server_cpu_ms_per_req: the serving process's, each side. Each round runs the pair's two "
                     "8-client runs back to back (then the two 1-connection runs of the latency figure); rounds "
                     "alternate the order.")
    lat = Figure("service_infer_added_latency_p50", "ms", f"<= {ADDED_P50_TARGET_MS:g} ms",
                 title=f"model service inference added latency p50, {CONNECTIONS} clients",
                 ratio_of="labhub through p50 / direct p50, median of per-pair ratios",
                 how="The runs of service_infer_throughput: wrk's p50 through the proxy minus p50 direct, per "
                     "pair (baseline: direct p50). With 8 clients on one serving process the requests queue, "
                     "so the p50 is mostly waiting (about 8 / throughput); one_connection in the JSON: the same "
                     f"with wrk -c1 (-d{secs}s, the same rounds), the proxy's added time per request.")
    cold = Figure("service_cold_start", "s", f"<= {COLD_TARGET_RATIO:g}x",
                  title="model service launch -> first answered infer, / started by hand",
                  how="POST /api/v1/instances of the built-in model-service template (params.model = "
                      f"{JOB}/{MODEL}.onnx, the job's artifact; the serve runtime already built) until the first "
                      "infer answered 200 through the proxy: the client follows "
                      "/api/v1/instances/{id}/events until it says running, then POSTs the infer request every "
                      f"{POLL_S * 1e3:.0f} ms. Baseline: the same labhub_serve argv, environment and account "
                      "started by hand (on a loopback TCP port), the infer request POSTed every "
                      f"{POLL_S * 1e3:.0f} ms from the exec until a 200. Launch to first answer of a stopped "
                      "service (not a scaled-to-zero service woken by a request). submit_s: until the 201; "
                      "running_s: until the event stream said running; events_s: when the hub recorded each "
                      "status (its clock; medians). Rounds alternate the order.")
    figures = [thr, lat, cold]
    root = runtimes_root()
    python, why = await asyncio.to_thread(serve_runtime, root)
    if python is None:
        return _not_measured(figures, why)
    work = work / "services"
    lh = LabHub(work)
    (lh.templates / "bench-model.yaml").write_text(json.dumps({
        "title": "Benchmark model (a tiny ONNX graph)", "kind": "job", "runtime": "serve",
        "command": ["python", "-c", MAKE_MODEL], "hours": {"default": 1, "max": 2},
    }))
    lh.env["LABHUB_RUNTIMES_DIR"] = str(root)
    lh.seed(token_users=1)
    lh.start()
    try:
        await lh.wait_healthy()
        t0 = time.perf_counter()
        await _make_model(lh)
        log(f"services: the job wrote {MODEL}.onnx in {time.perf_counter() - t0:.1f} s")
        argv, env = await infer_figures(counts, lh, work, thr, lat)
        await cold_start_figure(counts, lh, work, argv, env, cold)
    finally:
        lh.stop()
    thr.extra["runtime"] = str(python.parent.parent)
    return figures


# -- the model, the service, the hand-started program ---------------------------------------------------


async def _wait_status(lh: LabHub, iid: str, wanted: tuple[str, ...], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        _, inst = await lh.api("GET", f"/api/v1/instances/{iid}", "bench1")
        if isinstance(inst, dict) and inst.get("status") in (*wanted, "failed", "stopped", "expired"):
            return inst
        if time.monotonic() > deadline:
            raise TimeoutError(f"labhub: instance {iid} not {'/'.join(wanted)} after {timeout} s: {inst}")
        await asyncio.sleep(0.1)


def _instance_log(lh: LabHub, iid: str) -> str:
    try:
        return (lh.data / "instances" / iid / "output.log").read_text(errors="replace")[-2000:]
    except OSError:
        return ""


async def _make_model(lh: LabHub) -> None:
    """The job that writes the model into its artifacts, run to its end."""
    status, body = await lh.api("POST", "/api/v1/instances", "bench1", {"template": "bench-model", "name": JOB})
    if status != 201 or not isinstance(body, dict):
        raise RuntimeError(f"labhub: the model job was refused: {status} {body}")
    inst = await _wait_status(lh, body["id"], ("succeeded",))
    if inst.get("status") != "succeeded":
        raise RuntimeError(f"labhub: the model job {inst.get('status')}: {inst.get('message')} "
                           f"{_instance_log(lh, body['id'])}")


async def _launch_service(lh: LabHub, name: str) -> tuple[str, float]:
    """POST of a model-service instance; (its id, time.time() just before the POST)."""
    at = time.time()
    status, body = await lh.api("POST", "/api/v1/instances", "bench1",
                                {"template": "model-service", "name": name, "params": {"model": f"{JOB}/{MODEL}.onnx"}})
    if status != 201 or not isinstance(body, dict):
        raise RuntimeError(f"labhub: model-service launch refused: {status} {body}")
    lh.urls[("bench1", name)] = body["url"]
    return body["id"], at


def _through(lh: LabHub, name: str) -> tuple[str, dict[str, str]]:
    """The URL (the hub's public port) and headers (the instance's origin, the owner's token) of the infer route."""
    origin = lh.instance_origin("bench1", name)
    if origin is None:
        raise RuntimeError("labhub: this hub does not serve instances on their own origins")
    return f"http://{HOST}:{lh.port}{INFER_PATH}", {**lh.auth("bench1"), "Host": origin}


async def _wait_running(lh: LabHub, iid: str, timeout: float = 180) -> None:
    def running(ev: dict) -> bool:
        if ev.get("status") in ("failed", "stopped", "expired"):
            raise RuntimeError(f"labhub: service {iid} {ev.get('status')}: {ev.get('message')} "
                               f"{_instance_log(lh, iid)}")
        return ev.get("status") == "running"

    await sse_until(HOST, lh.port, f"/api/v1/instances/{iid}/events", lh.auth("bench1"), running, timeout=timeout)


async def _first_answer(port: int, headers: dict[str, str], *, proc: Proc | None = None,
                        timeout: float = 180) -> tuple[float, bytes]:
    """POST the infer request every POLL_S (a fresh connection each) until a 200 with outputs;
    (perf_counter() then, the answer)."""
    hdrs = {"Content-Type": "application/json", **headers}
    deadline = time.perf_counter() + timeout
    while True:
        try:
            status, body = await http_request(HOST, port, "POST", INFER_PATH, hdrs, INFER_BODY, timeout=10)
            if status == 200 and b'"outputs"' in body:
                return time.perf_counter(), body
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass
        if proc is not None and not proc.alive():
            raise RuntimeError(f"labhub_serve exited: {proc.tail()}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"POST {INFER_PATH} on port {port}: no answer after {timeout} s")
        await asyncio.sleep(POLL_S)


def _outputs(body: bytes) -> list:
    return [o["data"] for o in json.loads(body)["outputs"]]


def _program(pid: int) -> tuple[list[str], dict[str, str]]:
    """The argv (without where it listens) and environment the hub started the instance with."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
        elif arg in LISTEN_FLAGS:
            skip = LISTEN_FLAGS[arg]
        else:
            out.append(arg)
    env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if item)
    return out, env


def _by_hand(work: Path, argv: list[str], env: dict[str, str], port: int, tag: str) -> Proc:
    """``argv`` on ``127.0.0.1:port``, in a fresh home of the hub's account, pinned like everything else."""
    home = work / f"by-hand-{tag}"
    home.mkdir(mode=0o700)
    _own(home)
    return Proc([*argv, "--port", str(port), "--host", HOST], env={**env, "HOME": str(home)}, cwd=home,
                log_path=work / f"by-hand-{tag}.log", user=LABHUB_RUN_AS)


# -- throughput and latency ------------------------------------------------------------------------------


def wrk_post(url: str, script: Path, *, connections: int, seconds: float, headers: dict[str, str]) -> dict:
    """One wrk run of ``script`` (POSTs, then wrk_report.lua's summary), as lib.wrk runs its GETs."""
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    argv = [exe, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    out = subprocess.run(pinned([*argv, url]), capture_output=True, text=True, timeout=seconds + 60, check=True)
    res = json.loads([x for x in out.stdout.splitlines() if x.startswith("{")][-1])
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    errs = sum(res["errors"].values())
    if errs:
        log(f"wrk {url}: {errs} errors {res['errors']}")
    if not res["requests"] or res["errors"]["status"] + res["errors"]["connect"] > 0.01 * res["requests"]:
        raise RuntimeError(f"wrk {url}: {res['requests']} requests, errors {res['errors']}")
    return res


def _wrk_script(work: Path) -> Path:
    script = work / "infer.lua"
    body = INFER_BODY.decode().replace("\\", "\\\\").replace("'", "\\'")
    script.write_text(f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n"
                      + (HERE / "wrk_report.lua").read_text())
    return script


async def infer_figures(counts: Counts, lh: LabHub, work: Path, thr: Figure,
                        lat: Figure) -> tuple[list[str], dict[str, str]]:
    """Fill the throughput and latency figures; the program's argv and environment, for the cold starts."""
    iid, _ = await _launch_service(lh, MODEL)
    await _wait_running(lh, iid)
    url, hdrs = _through(lh, MODEL)
    _, through_answer = await _first_answer(lh.port, hdrs)
    pid = lh.instance_pid(iid)
    if pid is None:
        raise RuntimeError(f"labhub: no pid for service {iid}")
    argv, env = _program(pid)
    handle = json.loads((lh.data / "instances" / iid / "handle.json").read_text())
    listens = f"unix socket {handle['socket']}" if handle.get("socket") else f"tcp port {handle.get('port')}"
    port = free_port()
    direct = _by_hand(work, argv, env, port, "infer")
    script = _wrk_script(work)
    try:
        _, direct_answer = await _first_answer(port, {}, proc=direct)
        if _outputs(direct_answer) != _outputs(through_answer):
            raise RuntimeError(f"direct and through answers differ: {direct_answer!r} {through_answer!r}")
        hub_pid = lh.proc.pid  # type: ignore[union-attr]
        # who -> (URL, headers, the serving process)
        targets = {"direct": (f"http://{HOST}:{port}{INFER_PATH}", {}, direct.pid), "labhub": (url, hdrs, pid)}
        for target_url, h, _ in targets.values():  # warm-up: pools, caches, the model's first runs
            await asyncio.to_thread(wrk_post, target_url, script, connections=CONNECTIONS,
                                    seconds=2 if counts.warm else 1, headers=h)
        one: dict[str, list[float]] = {"labhub": [], "direct": [], "added": []}
        for r in range(counts.infer_rounds):
            res: dict[str, dict] = {"labhub": {}, "direct": {}}
            order = ("labhub", "direct") if r % 2 == 0 else ("direct", "labhub")
            for who in order:  # the pair's two 8-client runs back to back, then its two 1-connection runs
                target_url, h, server = targets[who]
                c0, s0 = cpu_s(hub_pid, with_children=False), cpu_s(server, with_children=False)
                t = await asyncio.to_thread(wrk_post, target_url, script, connections=CONNECTIONS,
                                            seconds=counts.wrk_seconds, headers=h)
                t["hub_cpu"] = (cpu_s(hub_pid, with_children=False) - c0) / t["requests"] * 1e3
                t["server_cpu"] = (cpu_s(server, with_children=False) - s0) / t["requests"] * 1e3
                res[who]["thr"] = t
            for who in order:
                target_url, h, _ = targets[who]
                res[who]["one"] = await asyncio.to_thread(wrk_post, target_url, script, connections=1,
                                                          seconds=counts.wrk_seconds, headers=h)
            d, lab = res["direct"], res["labhub"]
            thr.labhub.append(lab["thr"]["rps"])
            thr.baseline.append(d["thr"]["rps"])
            thr.add_ratio(lab["thr"]["rps"], d["thr"]["rps"])
            for key, value in (("hub_cpu_ms_per_req", lab["thr"]["hub_cpu"]),
                               ("hub_cpu_ms_per_req_direct_run", d["thr"]["hub_cpu"]),
                               ("server_cpu_ms_per_req", lab["thr"]["server_cpu"]),
                               ("server_cpu_ms_per_req_direct", d["thr"]["server_cpu"])):
                thr.extra.setdefault(key, []).append(round(value, 4))
            d50, l50 = d["thr"]["p50_us"] / 1e3, lab["thr"]["p50_us"] / 1e3
            lat.baseline.append(d50)
            lat.labhub.append(l50 - d50)
            lat.add_ratio(l50, d50)
            lat.extra.setdefault("labhub_p50_ms", []).append(round(l50, 4))
            for key, who in (("labhub_p99_ms", lab), ("direct_p99_ms", d)):
                lat.extra.setdefault(key, []).append(round(who["thr"]["p99_us"] / 1e3, 4))
            o_d, o_l = d["one"]["p50_us"] / 1e3, lab["one"]["p50_us"] / 1e3
            one["labhub"].append(round(o_l, 4))
            one["direct"].append(round(o_d, 4))
            one["added"].append(round(o_l - o_d, 4))
            log(f"services infer round {r}: req/s direct {d['thr']['rps']:.0f} labhub {lab['thr']['rps']:.0f}; "
                f"p50 direct {d50:.2f} labhub {l50:.2f} ms (one connection: {o_d:.3f} / {o_l:.3f} ms); hub CPU "
                f"{lab['thr']['hub_cpu'] * 1e3:.0f} us/req | load {loadavg()}")
        for key in [k for k, v in thr.extra.items() if isinstance(v, list)]:
            thr.extra.setdefault("median", {})[key] = round(statistics.median(thr.extra[key]), 4)
        lat.extra["one_connection"] = {**one, "median": {k: round(statistics.median(v), 4) for k, v in one.items()}}
        thr.extra.update({"connections": CONNECTIONS, "rounds": counts.infer_rounds, "instance_listens_on": listens,
                          "direct_listens_on": "tcp port (127.0.0.1)", "argv": argv})
    finally:
        direct.stop()
        await lh.stop_instance("bench1", iid)
    return argv, env


# -- cold start ------------------------------------------------------------------------------------------


async def _lh_cold(lh: LabHub, name: str) -> dict:
    t0 = time.perf_counter()
    iid, at = await _launch_service(lh, name)
    posted = time.perf_counter()
    await _wait_running(lh, iid)
    running = time.perf_counter()
    _, hdrs = _through(lh, name)
    answered, _ = await _first_answer(lh.port, hdrs)
    _, events = await lh.api("GET", f"/api/v1/instances/{iid}/events", "bench1")
    marks: dict[str, float] = {}
    for ev in events if isinstance(events, list) else []:  # the hub's clock, seconds after the POST began
        at_ev = dt.datetime.fromisoformat(ev["at"].replace("Z", "+00:00")).timestamp()
        marks.setdefault(ev["status"], round(at_ev - at, 4))
    await lh.stop_instance("bench1", iid)
    return {"s": answered - t0, "submit_s": posted - t0, "running_s": running - t0, "events": marks}


async def _bare_cold(work: Path, argv: list[str], env: dict[str, str], tag: str) -> float:
    port = free_port()
    proc = _by_hand(work, argv, env, port, tag)
    try:
        answered, _ = await _first_answer(port, {}, proc=proc)
    finally:
        proc.stop()
    return answered - proc.t0


async def cold_start_figure(counts: Counts, lh: LabHub, work: Path, argv: list[str], env: dict[str, str],
                            fig: Figure) -> None:
    if counts.warm:
        await _lh_cold(lh, "cold-warm")
        await _bare_cold(work, argv, env, "cold-warm")
    parts: dict[str, list[float]] = {"submit_s": [], "running_s": []}
    events: list[dict[str, float]] = []
    for r in range(counts.cold_rounds):
        res: dict[str, float] = {}
        for who in ("labhub", "bare") if r % 2 == 0 else ("bare", "labhub"):
            if who == "labhub":
                lab = await _lh_cold(lh, f"cold{r}")
                res["labhub"] = lab["s"]
            else:
                res["bare"] = await _bare_cold(work, argv, env, f"cold{r}")
        fig.labhub.append(res["labhub"])
        fig.baseline.append(res["bare"])
        fig.add_ratio(res["labhub"], res["bare"])
        for key in parts:
            parts[key].append(round(lab[key], 4))
        events.append(lab["events"])
        log(f"services cold start round {r}: labhub {res['labhub']:.2f} s (201 after {lab['submit_s']:.3f} s, "
            f"running after {lab['running_s']:.2f} s), by hand {res['bare']:.2f} s | load {loadavg()}")
    fig.extra["added_s"] = round(statistics.median(fig.labhub) - statistics.median(fig.baseline), 4)
    fig.extra.update(parts)
    fig.extra["median"] = {k: round(statistics.median(v), 4) for k, v in parts.items()}
    fig.extra["events_s"] = _event_medians(events)
    fig.extra["rounds"] = counts.cold_rounds
