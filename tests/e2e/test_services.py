"""Model services end to end on the local backend: model files uploaded into a folder (ONNX, a
scikit-learn estimator saved with skops, TorchScript), served by the built-in model-service template in the real
serve runtime, called through the hub's proxy with tritonclient (v2), curl (TF-Serving's v1, TFaaS's
/json); public calls; models that do not load; scaling to zero with the real runtime.

What each model predicts is computed by its own library in the serve runtime
(tests/runtimes/serve_support.py); every answer must equal it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.conftest import OffsetClock
from tests.e2e.test_mlaas4hep import curl, curl_json
from tests.runtimes.conftest import runtimes_root, serve_runtime  # noqa: F401 - fixtures
from tests.runtimes.serve_support import make_models

pytestmark = pytest.mark.asyncio
triton = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def models(serve_runtime, tmp_path_factory) -> tuple[Path, dict[str, Any]]:  # noqa: F811
    directory = tmp_path_factory.mktemp("models")
    expected = make_models(serve_runtime, directory)
    (directory / "broken.onnx").write_bytes(b"not a graph at all")
    return directory, expected



async def upload(caller, folder: str, path: Path) -> None:
    answer = await caller.http.post(f"/api/v1/folders/{folder}/upload", params={"filename": path.name},
                                    content=path.read_bytes())
    assert answer.status_code == 201, answer.text


async def deploy(caller, name: str, model: str, **extra) -> dict:
    answer = await caller.http.post("/api/v1/instances", json={
        "template": "model-service", "name": name, "params": {"model": model}, **extra})
    assert answer.status_code == 201, answer.text
    return answer.json()


def onnx_infer(hub_address: str, headers: dict[str, str], x: list[list[float]]) -> dict[str, Any]:
    """tritonclient's v2 call of the two-input ONNX model (in a thread: its gevent hub is per thread)."""
    client = triton.InferenceServerClient(hub_address, network_timeout=120)
    try:
        data = np.asarray(x, dtype=np.float32)
        inputs = []
        for name, part in (("a", data[:, :2]), ("b", data[:, 2:])):
            tensor = triton.InferInput(name, list(part.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(part))
            inputs.append(tensor)
        result = client.infer("tiny", inputs, headers=headers)
        meta = client.get_model_metadata("tiny", headers=headers)
        return {"logits": result.as_numpy("logits").tolist(), "prob": result.as_numpy("prob").tolist(),
                "inputs": [i["name"] for i in meta["inputs"]]}
    finally:
        client.close()


def torch_infer(hub_address: str, headers: dict[str, str], x: list[list[float]]) -> list[list[float]]:
    client = triton.InferenceServerClient(hub_address, network_timeout=120)
    try:
        tensor = triton.InferInput("x", [len(x), 4], "FP32")
        tensor.set_data_from_numpy(np.asarray(x, dtype=np.float32))
        return client.infer("net", [tensor], headers=headers).as_numpy("output-0").tolist()
    finally:
        client.close()


async def test_uploaded_onnx_skops_and_torchscript_models_answer_every_protocol(
        start_hub, sqlite_url, models, runtimes_root):  # noqa: F811
    directory, expected = models
    hub = await start_hub(sqlite_url, runtimes_dir=runtimes_root)
    alice, bob = await hub.user("alice"), await hub.user("bob")
    for name in ("tiny.onnx", "clf.skops", "net.pt", "broken.onnx", "sneaky.skops"):
        await upload(alice, "models", directory / name)
    tiny = await deploy(alice, "tiny", "folder:models/tiny.onnx")
    net = await deploy(alice, "net", "folder:models/net.pt")
    clf = await deploy(alice, "clf", "folder:models/clf.skops")
    broken = await deploy(alice, "broken", "folder:models/broken.onnx")
    sneaky = await deploy(alice, "sneaky", "folder:models/sneaky.skops")
    absent = await deploy(alice, "absent", "folder:models/absent.onnx")

    failed = await hub.wait_status(alice, absent["id"], {"failed"})
    assert failed["message"].startswith("cannot start: model: folder 'models' has no file 'absent.onnx'")
    for inst, says in ((broken, "broken.onnx: "), (sneaky, "skops does not trust")):
        failed = await hub.wait_status(alice, inst["id"], {"failed"}, timeout=180)
        assert says in failed["message"], failed["message"]  # the loader's own error
    tiny = await hub.wait_status(alice, tiny["id"], {"running"}, timeout=180)
    clf = await hub.wait_status(alice, clf["id"], {"running"}, timeout=180)
    net = await hub.wait_status(alice, net["id"], {"running"}, timeout=180)

    x = expected["x"]
    address = urlsplit(hub.url).netloc
    owner = {"Host": urlsplit(tiny["url"]).netloc, "Authorization": f"Bearer {alice.token}"}
    got = await asyncio.to_thread(onnx_infer, address, owner, x)
    assert got["inputs"] == ["a", "b"]
    assert np.allclose(got["logits"], expected["onnx"]["logits"], atol=1e-6)
    assert np.allclose(got["prob"], expected["onnx"]["prob"], atol=1e-6)

    # TF-Serving's and TFaaS's forms with curl, on the service's own URL
    url, auth = clf["url"].rstrip("/"), ["-H", f"Authorization: Bearer {alice.token}"]
    v1 = await curl_json(*auth, "-d", json.dumps({"instances": x}), f"{url}/v1/models/clf:predict")
    assert v1 == {"predictions": expected["sklearn"]}
    one = await curl_json(*auth, "-d", json.dumps({"keys": ["f0", "f1", "f2", "f3"], "values": x[0]}), f"{url}/json")
    assert one == [expected["sklearn"][0]]
    status = await curl_json(*auth, f"{url}/v1/models/clf")
    assert status["model_version_status"][0]["state"] == "AVAILABLE"

    # TorchScript, with tritonclient
    torch_out = await asyncio.to_thread(torch_infer, address, {**owner, "Host": urlsplit(net["url"]).netloc}, x)
    assert np.allclose(torch_out, expected["torch"], atol=1e-6)

    # a wrong shape is the protocol's 400 with its error body, through the proxy
    wrong = await curl(*auth, "-w", "\n%{http_code}", "-d", json.dumps({"inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}),
        f"{tiny['url'].rstrip('/')}/v2/models/tiny/infer")
    body, code = wrong.stdout.rsplit("\n", 1)
    assert code == "400" and "shape" in json.loads(body)["error"]

    # bob may not; once alice makes it public, anyone may infer without a token (and nothing else)
    others = {"Host": owner["Host"], "Authorization": f"Bearer {bob.token}"}
    with pytest.raises(triton.InferenceServerException):  # noqa: PT012 - one call
        await asyncio.to_thread(onnx_infer, address, others, x)
    assert (await alice.http.patch(f"/api/v1/instances/{tiny['id']}", json={"public": True})).status_code == 200
    public = await asyncio.to_thread(onnx_infer, address, {"Host": owner["Host"]}, x)
    assert np.allclose(public["prob"], expected["onnx"]["prob"], atol=1e-6)
    closed = await curl("-o", "/dev/null", "-w", "%{http_code}", f"{tiny['url'].rstrip('/')}/metrics")
    assert closed.stdout == "401"

    # the service's page's data: its model and the counters of the calls above
    seen = (await alice.http.get(f"/api/v1/instances/{tiny['id']}/service")).json()
    assert [m["name"] for m in seen["models"]] == ["tiny"] and seen["public"] is True
    counters = seen["metrics"]["models"]["tiny@1"]
    assert counters["requests"] >= 3 and counters["errors"] == 1  # two good v2 calls, the bad shape


async def test_a_service_scaled_to_zero_is_woken_by_the_next_inference(
        start_hub, sqlite_url, models, runtimes_root):  # noqa: F811
    directory, expected = models
    clock = OffsetClock()
    hub = await start_hub(sqlite_url, runtimes_dir=runtimes_root, clock=clock)
    alice = await hub.user("alice")
    await upload(alice, "models", directory / "tiny.onnx")
    tiny = await deploy(alice, "tiny", "folder:models/tiny.onnx", min_replicas=0)
    tiny = await hub.wait_status(alice, tiny["id"], {"running"}, timeout=180)
    clock.offset = dt.timedelta(hours=1)  # past the template's idle_s
    await hub.wait_status(alice, tiny["id"], {"sleeping"}, timeout=60)

    owner = {"Host": urlsplit(tiny["url"]).netloc, "Authorization": f"Bearer {alice.token}"}
    got = await asyncio.to_thread(onnx_infer, urlsplit(hub.url).netloc, owner, expected["x"])
    assert np.allclose(got["prob"], expected["onnx"]["prob"], atol=1e-6)
    assert (await alice.http.get(f"/api/v1/instances/{tiny['id']}")).json()["status"] == "running"
