"""What the service tests share: calling a deployed MLaaS4HEP model (``higgs``) with the three
protocols through the hub's proxy, and what the model itself predicts for the same input."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest


async def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, ["curl", "-sS", "--max-time", "120", *args],
                                   capture_output=True, text=True, check=False)


async def curl_json(*args: str) -> dict:
    done = await curl(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


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



async def check_the_three_protocols(hub: Any, caller: Any, running: dict, job: dict, serve_runtime: Any) -> list:
    """``running`` serves ``job``'s higgs.keras: v2 with tritonclient, TF-Serving's v1 and TFaaS's /json with
    curl on its URL, each equal to the model's own predict (in the serve runtime); no token, no answer.
    Returns the rows it sent (v1's ``instances``)."""
    triton = pytest.importorskip("tritonclient.http")
    alice = caller
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

    return rows
