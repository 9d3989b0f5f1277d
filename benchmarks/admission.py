"""The ``admission`` group: LabHub's admission queue (docs/policies.md).

* ``admission_freed_slot_start_s``: a user at a quota of one instance (``LABHUB_QUOTA__INSTANCES=1``)
  has one running and one queued; from the ``DELETE`` of the running one until the queued one's event
  stream says ``running`` (the hub stops the first, decides the queue, starts the second and probes
  it).  Baseline: a plain launch of the same template, ``POST`` until ``running``, on the same hub:
  the ratio says what the queue adds to a start.
* ``admission_decision_us``: the admission step of one launch, in process, on the hub's SQLite
  database with 50 queued launches of 10 users and 20 running instances: the lock row's update, the
  read of the queue, its owners' limits and usage, the refusal check and the decision (rolled back,
  so every round sees the same state); baseline: the whole ``labhub.services.instances.launch``
  transaction it is part of (also rolled back).  ``admission_cost.py`` does it in LabHub's python.

No peer: JupyterHub refuses a launch over ``named_server_limit_per_user`` (429) and has no queue.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from hubs import HOST, LabHub
from lib import HERE, LABHUB_PY, Figure, log, sse_until

FREED_TARGET_S = 1.0
DECISION_TARGET_US = 5000.0


async def _running(lh: LabHub, iid: str, user: str) -> None:
    await sse_until(HOST, lh.port, f"/api/v1/instances/{iid}/events", lh.auth(user),
                    lambda e: e.get("status") in ("running", "failed", "stopped"), timeout=60)


async def admission_figures(cfg, work: Path, peers: bool) -> list[Figure]:  # noqa: ANN001, ARG001 - run.Config
    rounds = 2 if cfg.quick else 8
    work = work / "admission"
    lh = LabHub(work)
    lh.env["LABHUB_QUOTA__INSTANCES"] = "1"
    lh.seed(token_users=1)
    lh.start()
    freed = Figure("admission_freed_slot_start_s", "s", f"<= {FREED_TARGET_S:g} s",
                   title="a freed slot -> the next queued instance running (local backend)",
                   ratio_of="freed slot -> running / a plain launch -> running, median of per-round ratios",
                   how=__doc__.split("* ``admission_freed_slot_start_s``: ", 1)[1].split("* ``", 1)[0].strip())
    try:
        await lh.wait_healthy()
        user = "bench1"
        for n in range(rounds):
            t0 = time.perf_counter()
            first = await lh.launch(user, f"first{n}", "bench-echo")
            await _running(lh, first, user)
            plain = time.perf_counter() - t0
            status, body = await lh.api("POST", "/api/v1/instances", user, {"template": "bench-echo",
                                                                           "name": f"next{n}"})
            if status != 201 or body["status"] != "queued":  # type: ignore[index]
                raise RuntimeError(f"the second launch was not queued: {status} {body}")
            t1 = time.perf_counter()
            await lh.api("DELETE", f"/api/v1/instances/{first}", user)
            await _running(lh, body["id"], user)  # type: ignore[index]
            took = time.perf_counter() - t1
            freed.labhub.append(took)
            freed.baseline.append(plain)
            freed.add_ratio(took, plain)
            await lh.api("DELETE", f"/api/v1/instances/{body['id']}", user)  # type: ignore[index]
            await sse_until(HOST, lh.port, f"/api/v1/instances/{body['id']}/events", lh.auth(user),  # type: ignore[index]
                            lambda e: e.get("status") == "stopped", timeout=60)
        log(f"admission: freed slot -> running {freed.labhub}")
    finally:
        lh.stop()
    out = subprocess.run([str(LABHUB_PY), str(HERE / "admission_cost.py"), "--rounds", "50" if cfg.quick else "400"],
                         env=lh.env, capture_output=True, text=True, timeout=600, check=True)
    cost = json.loads(out.stdout.strip().splitlines()[-1])
    decision = Figure("admission_decision_us", "µs", f"<= {DECISION_TARGET_US:g} µs",
                      title="the admission decision of one launch (50 queued, 20 running)",
                      ratio_of="admission step / the whole launch transaction, median of per-round ratios",
                      how=__doc__.split("* ``admission_decision_us``: ", 1)[1].split("No peer", 1)[0].strip(),
                      labhub=cost["decision_us"], baseline=cost["launch_us"])
    for a, b in zip(cost["decision_us"], cost["launch_us"], strict=True):
        decision.add_ratio(a, b)
    return [freed, decision]
