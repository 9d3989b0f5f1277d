"""Services on the real Slurm cluster, through the hub's API and proxy: a model trained by a Slurm job
(the built-in ``mlaas4hep`` template, the ``train`` runtime) is deployed with the built-in
``model-service`` template (the ``serve`` runtime) as a Slurm job of its own, and answers on the
instance's own origin: the Open Inference Protocol v2 (tritonclient), TF-Serving's v1 and TFaaS's
``/json`` (curl) give the model's own predictions; a stop cancels its Slurm job.

The cluster and the hub's settings are those of ``test_slurm.py`` (the session's single-node Slurm,
found through ``LABHUB_SLURM__*`` as a site would configure it).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.backends.conftest import slurm_cluster  # noqa: F401 - the session's cluster fixture
from tests.e2e.test_mlaas4hep import curl, curl_json, folder_tarball
from tests.e2e.test_slurm import _free_port, _job_id, slurm_env  # noqa: F401 - slurm_env is a fixture
from tests.runtimes.conftest import root_files, runtimes_root, serve_runtime, train_runtime  # noqa: F401 - fixtures

pytestmark = [pytest.mark.asyncio, pytest.mark.slurm]
IS_ROOT = os.geteuid() == 0

# The model's own predictions, in the serve runtime: argv = model file, then JSON lists of rows.
OWN_PREDICT = ("import json, os, sys; os.environ['KERAS_BACKEND'] = 'jax'; import keras, numpy as np; "
               "m = keras.saving.load_model(sys.argv[1]); "
               "print(json.dumps([m.predict(np.array(json.loads(a), dtype='float32'), verbose=0).ravel().tolist() "
               "for a in sys.argv[2:]]))")


def v2_infer(triton: Any, hub_address: str, headers: dict[str, str]) -> tuple[bool, dict, list, list]:
    """Through the hub's proxy with tritonclient (one thread: gevent's hub is per thread): the model's
    readiness and metadata, three rows of its width and what v2 infer answered for them."""
    client = triton.InferenceServerClient(hub_address, network_timeout=120)
    try:
        ready = client.is_model_ready("higgs", headers=headers)
        meta = client.get_model_metadata("higgs", headers=headers)
        width = meta["inputs"][0]["shape"][-1]
        rows = [[0.1 * (i + j) % 1 for j in range(width)] for i in range(3)]
        import numpy as np

        tensor = triton.InferInput(meta["inputs"][0]["name"], [3, width], "FP32")
        tensor.set_data_from_numpy(np.array(rows, dtype=np.float32))
        result = client.infer("higgs", [tensor], headers=headers)
        output = meta["outputs"][0]["name"]
        return ready, meta, rows, result.as_numpy(output).ravel().tolist()
    finally:
        client.close()


def event_at_max(spec: dict) -> tuple[dict[str, Any], list[float]]:
    """One TFaaS ``/json`` event, each column at the training's maximum, and the features the
    training's normalisation ((x - min) / (max - min), x - min where they are equal) makes of it."""
    event: dict[str, Any] = {}
    row: list[float] = []
    for column in spec["columns"]:
        values = column["max"]
        event[column["name"]] = values if column["kind"] != "scalar" else values[0]
        for value, low in zip(values, column["min"], strict=True):
            if value is None:
                row.append(0.0)
                continue
            low = low or 0.0
            row.append((value - low) / (value - low) if value > low else value - low)
    return event, row


async def test_a_model_service_runs_as_a_slurm_job_and_answers_through_the_proxy(
        slurm_env, start_hub, sqlite_url, shared_tmp, slurm_cluster, train_runtime, serve_runtime,  # noqa: F811
        runtimes_root, root_files, tmp_path: Path):  # noqa: F811
    triton = pytest.importorskip("tritonclient.http")
    hub = await start_hub(sqlite_url, data_dir=shared_tmp / "data", bind=f"127.0.0.1:{_free_port()}",
                          runtimes_dir=runtimes_root)
    alice = await hub.user("alice")
    archive = folder_tarball(tmp_path, root_files, ["data/sig.root", "data/bkg.root"])
    uploaded = await alice.http.post("/api/v1/folders/luca/upload", params={"strip_top": "true"},
                                     content=archive.read_bytes())
    assert uploaded.status_code == 201, uploaded.text
    resp = await alice.http.post("/api/v1/instances", json={
        "template": "mlaas4hep", "name": "higgs-1", "input": "luca", "backend": "slurm",
        "params": {"files": "files_test.txt", "labels": "labels_test.txt", "model": "keras_model.py",
                   "params": "params_test.json", "fout": "higgs", "epochs": 1}})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    done = await hub.wait_status(alice, job["id"], {"succeeded", "failed"}, timeout=240)
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

    # v2 through the proxy, on the instance's own origin, with the owner's token
    origin = urlsplit(running["url"]).netloc
    headers = {"Host": origin, "Authorization": f"Bearer {alice.token}"}
    ready, meta, rows, v2 = await asyncio.to_thread(v2_infer, triton, urlsplit(hub.url).netloc, headers)
    assert ready and meta["name"] == "higgs" and meta["inputs"][0]["datatype"] == "FP32"

    output = hub.hub.jobs.output(job["id"])
    spec = json.loads((output / "higgs.json").read_text())
    event, features = event_at_max(spec)
    own = await asyncio.to_thread(subprocess.run, [str(serve_runtime.python), "-c", OWN_PREDICT,
                                                   str(output / "higgs.keras"), json.dumps(rows),
                                                   json.dumps([features])],
                                  capture_output=True, text=True, timeout=120, check=False)
    assert own.returncode == 0, own.stderr
    expected, expected_event = json.loads(own.stdout)
    assert v2 == pytest.approx(expected, abs=1e-5)

    # TF-Serving's v1 and TFaaS's /json, with curl on the instance's URL
    url, auth = running["url"].rstrip("/"), ["-H", f"Authorization: Bearer {alice.token}"]
    v1 = await curl_json(*auth, "-H", "Content-Type: application/json", "-d", json.dumps({"instances": rows}),
                         f"{url}/v1/models/higgs:predict")
    assert [p for row in v1["predictions"] for p in row] == pytest.approx(expected, abs=1e-5)
    [model] = await curl_json(*auth, f"{url}/models")
    assert model["name"] == "higgs" and model["format"] == "keras" and model["keys"] == list(event)
    answer = await curl_json(*auth, "-H", "Content-Type: application/json",
                             "-d", json.dumps({"keys": list(event), "values": list(event.values())}), f"{url}/json")
    assert answer == pytest.approx(expected_event, abs=1e-5)
    anonymous = await curl("-o", "/dev/null", "-w", "%{http_code}", "-d", json.dumps({"instances": rows}),
                           f"{url}/v1/models/higgs:predict")
    assert anonymous.stdout in ("401", "403")

    # a stop cancels the Slurm job; nothing answers there any more
    assert (await alice.http.delete(f"/api/v1/instances/{svc['id']}")).status_code == 202
    stopped = await hub.wait_status(alice, svc["id"], {"stopped"}, timeout=60)
    assert stopped["reason"] == "user"
    assert slurm_cluster.squeue_state(slurm_job) in ("CANCELLED", "COMPLETED", "GONE")
    after = await curl(*auth, "-o", "/dev/null", "-w", "%{http_code}", "-d", json.dumps({"instances": rows}),
                       f"{url}/v1/models/higgs:predict")
    assert after.stdout != "200"
