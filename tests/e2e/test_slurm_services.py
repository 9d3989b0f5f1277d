"""Services on the real Slurm cluster, through the hub's API and proxy: a model trained by a Slurm job
(the built-in ``mlaas4hep`` template, the ``train`` runtime) is deployed with the built-in
``model-service`` template (the ``serve`` runtime) as a Slurm job of its own, and answers on the
instance's own origin: the Open Inference Protocol v2 (tritonclient), TF-Serving's v1 and TFaaS's
``/json`` (curl) give the model's own predictions; a stop cancels its Slurm job.

The cluster and the hub's settings are those of ``test_slurm.py`` (the session's single-node Slurm,
found through ``LABHUB_SLURM__*`` as a site would configure it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.backends.conftest import slurm_cluster  # noqa: F401 - the session's cluster fixture
from tests.e2e.services_support import check_the_three_protocols
from tests.e2e.test_mlaas4hep import curl
from tests.e2e.test_slurm import _job_id, slurm_env  # noqa: F401 - slurm_env is a fixture
from tests.e2e.test_slurm_jobs import train_on_slurm
from tests.runtimes.conftest import root_files, runtimes_root, serve_runtime, train_runtime  # noqa: F401 - fixtures

pytestmark = [pytest.mark.asyncio, pytest.mark.slurm]
IS_ROOT = os.geteuid() == 0


async def test_a_model_service_runs_as_a_slurm_job_and_answers_through_the_proxy(
        slurm_env, start_hub, sqlite_url, shared_tmp, slurm_cluster, train_runtime, serve_runtime,  # noqa: F811
        runtimes_root, root_files, tmp_path: Path):  # noqa: F811
    hub, alice, job, done = await train_on_slurm(start_hub, sqlite_url, shared_tmp, runtimes_root, root_files,
                                                 tmp_path)
    assert done["status"] == "succeeded", done["message"]
    training_job = await _job_id(hub, job["id"])

    resp = await alice.http.post("/api/v1/instances", json={
        "template": "model-service", "name": "higgs", "backend": "slurm",
        "params": {"model": "higgs-1/higgs.keras"}})
    assert resp.status_code == 201, resp.text
    svc = resp.json()
    running = await hub.wait_status(alice, svc["id"], {"running"}, timeout=180)
    assert running["kind"] == "service" and running["backend"] == "slurm"

    # a Slurm job of its own, running as the owner's account
    slurm_job = await _job_id(hub, svc["id"])
    assert slurm_job.isdigit() and slurm_job != training_job
    user, state = slurm_cluster.run("squeue", "-h", "-j", slurm_job, "-o", "%u|%T").stdout.strip().split("|")
    assert state == "RUNNING" and (user == "labhub-alice" or not IS_ROOT)
    events = (await alice.http.get(f"/api/v1/instances/{svc['id']}/events")).json()
    assert any(f"job id {slurm_job}" in e["message"] for e in events), events

    rows = await check_the_three_protocols(hub, alice, running, job, serve_runtime)
    url, auth = running["url"].rstrip("/"), ["-H", f"Authorization: Bearer {alice.token}"]

    # a stop cancels the Slurm job; nothing answers there any more
    assert (await alice.http.delete(f"/api/v1/instances/{svc['id']}")).status_code == 202
    stopped = await hub.wait_status(alice, svc["id"], {"stopped"}, timeout=60)
    assert stopped["reason"] == "user"
    assert slurm_cluster.squeue_state(slurm_job) in ("CANCELLED", "COMPLETED", "GONE")
    after = await curl(*auth, "-o", "/dev/null", "-w", "%{http_code}", "-d", json.dumps({"instances": rows}),
                       f"{url}/v1/models/higgs:predict")
    assert after.stdout != "200"
