"""The serve program end to end: real labhub_serve processes in the serve runtime, clients over loopback.

The models are made in the runtime itself (a Keras net in two versions, a hand-built ONNX graph
with two inputs and two outputs, a scikit-learn classifier saved with skops and with joblib), and
what each predicts is computed there by its own library; every answer the server gives must be
exactly that. v2 goes through tritonclient, TF-Serving's v1 and TFaaS's routes through curl.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.runtimes.rootdata import BRANCHES
from tests.runtimes.serve_support import (
    Server,
    curl,
    last_stderr_line,
    post_json,
    run_to_exit,
    start_server,
)
from tests.runtimes.support import BuiltRuntime, TrainJob, run_train

IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def server(serve_runtime: BuiltRuntime, models: tuple[Path, dict[str, Any]],
           tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every format at once, on a free loopback port; higgs in two versions, 1 the default."""
    directory, _ = models
    args = ["--model", f"higgs@1={directory / 'higgs-1.keras'}", "--model", f"higgs@2={directory / 'higgs-2.keras'}",
            "--default", "higgs@1", "--model", str(directory / "tiny.onnx"),
            "--model", f"clf={directory / 'clf.skops'}", "--model", f"pickled={directory / 'clf.joblib'}",
            "--allow-pickle", "--port", "0"]
    with start_server(serve_runtime, tmp_path_factory.mktemp("server"), args) as running:
        assert running.port, running.output()
        yield running


@pytest.fixture(scope="module")
def triton() -> Any:
    """tritonclient's HTTP client (``tritonclient[http]`` in the test extras): the v2 tests' client."""
    return pytest.importorskip("tritonclient.http")


@pytest.fixture
def client(server: Server, triton: Any) -> Any:
    connection = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield connection
    connection.close()


def f32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def v2_input(name: str, array: np.ndarray, datatype: str, *, binary: bool = True) -> Any:
    import tritonclient.http as triton

    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


# ---------------------------------------------------------------- Open Inference Protocol v2


def test_v2_health_and_metadata(server: Server, client: Any) -> None:
    assert curl(f"{server.url}/v2/health/ready") == (200, {"ready": True})
    assert client.is_server_live() and client.is_model_ready("higgs") and client.is_model_ready("higgs", "2")
    metadata = client.get_model_metadata("tiny")
    assert metadata["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1, 2]},
                                  {"name": "b", "datatype": "FP32", "shape": [-1, 2]}]
    assert [output["name"] for output in metadata["outputs"]] == ["logits", "prob"]
    assert client.get_model_metadata("higgs", "2")["inputs"] == [{"name": "features", "datatype": "FP32",
                                                                  "shape": [-1, 4]}]
    assert curl(f"{server.url}/v2/models/higgs/versions/3/ready")[0] == 404


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_infer_gives_what_each_model_predicts(client: Any, triton: Any, models: tuple[Path, dict[str, Any]],
                                                 binary: bool) -> None:
    expected = models[1]
    x = f32(expected["x"])
    wanted = [triton.InferRequestedOutput("output-0", binary_data=binary)]
    default = client.infer("higgs", [v2_input("features", x, "FP32", binary=binary)], outputs=wanted)
    assert default.get_response()["model_name"] == "higgs" and default.get_response()["model_version"] == "1"
    assert np.array_equal(default.as_numpy("output-0"), f32(expected["keras1"]))
    second = client.infer("higgs", [v2_input("features", x, "FP32", binary=binary)], model_version="2")
    assert second.get_response()["model_version"] == "2"
    assert np.array_equal(second.as_numpy("output-0"), f32(expected["keras2"]))

    onnx = client.infer("tiny", [v2_input("b", x[:, 2:], "FP32", binary=binary),  # by name, in any order
                                 v2_input("a", x[:, :2], "FP32", binary=binary)])
    assert np.array_equal(onnx.as_numpy("logits"), f32(expected["onnx"]["logits"]))
    assert np.array_equal(onnx.as_numpy("prob"), f32(expected["onnx"]["prob"]))
    only = client.infer("tiny", [v2_input("a", x[:, :2], "FP32"), v2_input("b", x[:, 2:], "FP32")],
                        outputs=[triton.InferRequestedOutput("prob", binary_data=binary)])
    assert [output["name"] for output in only.get_response()["outputs"]] == ["prob"]

    for name in ("clf", "pickled"):
        labels = client.infer(name, [v2_input("input-0", x.astype(np.float64), "FP64", binary=binary)])
        assert labels.as_numpy("output-0").tolist() == expected["sklearn"]


# ---------------------------------------------------------------- TF-Serving v1 and TFaaS


def test_tf_serving_predict(server: Server, models: tuple[Path, dict[str, Any]]) -> None:
    expected = models[1]
    x = expected["x"]
    assert post_json(f"{server.url}/v1/models/higgs:predict", {"instances": x}) == \
        (200, {"predictions": f32(expected["keras1"]).tolist()})
    assert post_json(f"{server.url}/v1/models/higgs/versions/2:predict", {"inputs": x}) == \
        (200, {"outputs": f32(expected["keras2"]).tolist()})
    status, body = post_json(f"{server.url}/v1/models/tiny:predict",
                             {"instances": [{"a": row[:2], "b": row[2:]} for row in x]})
    assert status == 200
    assert [row["prob"] for row in body["predictions"]] == f32(expected["onnx"]["prob"]).tolist()
    status, body = post_json(f"{server.url}/v1/models/tiny:predict",
                             {"inputs": {"a": [row[:2] for row in x], "b": [row[2:] for row in x]}})
    assert (status, body["outputs"]["logits"]) == (200, f32(expected["onnx"]["logits"]).tolist())
    assert post_json(f"{server.url}/v1/models/clf:predict", {"instances": x}) == \
        (200, {"predictions": expected["sklearn"]})


def test_tf_serving_model_status(server: Server) -> None:
    """TF-Serving's GetModelStatus: one entry per version, or the one a /versions/V path names."""
    def available(version: str) -> dict[str, Any]:
        return {"version": version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}

    assert curl(f"{server.url}/v1/models/higgs") == (200, {"model_version_status": [available("1"), available("2")]})
    assert curl(f"{server.url}/v1/models/higgs/versions/2") == (200, {"model_version_status": [available("2")]})
    assert curl(f"{server.url}/v1/models/tiny") == (200, {"model_version_status": [available("1")]})
    for missing in ("higgs/versions/3", "nope"):
        status, body = curl(f"{server.url}/v1/models/{missing}")
        assert status == 404 and set(body) == {"error"}, body


def test_tfaas_models_and_json(server: Server, models: tuple[Path, dict[str, Any]]) -> None:
    expected = models[1]
    status, listed = curl(f"{server.url}/models")
    assert status == 200
    by_name = {entry["name"]: entry for entry in listed}
    assert sorted(by_name) == ["clf", "higgs", "pickled", "tiny"]
    assert (by_name["higgs"]["versions"], by_name["higgs"]["default_version"]) == (["1", "2"], "1")
    assert by_name["tiny"]["format"] == "onnx" and by_name["clf"]["format"] == "sklearn"
    row = expected["x"][2]
    keys = ["f0", "f1", "f2", "f3"]
    assert post_json(f"{server.url}/json", {"keys": keys, "values": row, "model": "higgs"}) == \
        (200, f32(expected["keras1"][2]).tolist())
    assert post_json(f"{server.url}/json", {"keys": keys, "values": row, "model": "higgs@2"}) == \
        (200, f32(expected["keras2"][2]).tolist())
    assert post_json(f"{server.url}/json", {"keys": keys, "values": row, "model": "clf"}) == \
        (200, [expected["sklearn"][2]])
    assert post_json(f"{server.url}/json", {"keys": keys, "values": row, "model": "nope"})[0] == 404


# ---------------------------------------------------------------- what a client gets wrong


def test_tritonclient_gets_400s_for_a_wrong_shape_or_datatype(client: Any, triton: Any,
                                                              models: tuple[Path, dict[str, Any]]) -> None:
    x = f32(models[1]["x"])
    with pytest.raises(triton.InferenceServerException) as caught:
        client.infer("higgs", [v2_input("features", x[:, :3], "FP32")])
    assert caught.value.status() == "400" and "shape [-1, 4]" in caught.value.message()
    with pytest.raises(triton.InferenceServerException) as caught:
        client.infer("higgs", [v2_input("features", x.astype(np.float64), "FP64")])
    assert caught.value.status() == "400" and "FP32" in caught.value.message()


def test_requests_the_models_cannot_take_are_400s_with_the_protocol_error_body(server: Server) -> None:
    infer = f"{server.url}/v2/models/higgs/infer"
    status, body = post_json(infer, {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32",
                                                 "data": [1, 2, 3]}]})
    assert (status, body) == (400, {"error": "input 'features' of higgs@1 has shape [-1, 4]; the request gives [1, 3]"})
    status, body = post_json(infer, {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP64",
                                                 "data": [1, 2, 3, 4]}]})
    assert (status, body) == (400, {"error": "input 'features' of higgs@1 is FP32; the request gives FP64"})
    status, body = post_json(infer, {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
                                                 "data": [1, 2, 3]}]})
    assert status == 400 and set(body) == {"error"} and "does not fill its shape" in body["error"]
    status, body = post_json(infer, {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "BYTES",
                                                 "data": ["a", "b", "c", "d"]}]})
    assert status == 400 and set(body) == {"error"}
    status, body = post_json(f"{server.url}/v2/models/tiny/infer",
                             {"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})
    assert status == 400 and "missing: ['b']" in body["error"]
    for bad in ({"instances": [[1, 2, 3, 4], [1, 2]]}, {"instances": [["a", "b", "c", "d"]]}, {"rows": []}):
        status, body = post_json(f"{server.url}/v1/models/higgs:predict", bad)
        assert status == 400 and set(body) == {"error"}, (bad, body)
    status, body = post_json(f"{server.url}/json", {"keys": ["a"], "values": [1.0], "model": "higgs"})
    assert status == 400 and set(body) == {"error"}
    assert post_json(f"{server.url}/v2/models/higgs/versions/9/infer", {"inputs": []})[0] == 404


def test_models_cannot_be_unloaded_or_loaded(server: Server, models: tuple[Path, dict[str, Any]]) -> None:
    """kserve's repository extension never; uploads and deletes only with a --store, which this server has not."""
    for action in ("unload", "load"):
        status, body = curl("-X", "POST", f"{server.url}/v2/repository/models/higgs/{action}")
        assert status == 403 and set(body) == {"error"}
    status, body = curl("-F", "name=extra", "-F", f"file=@{models[0] / 'tiny.onnx'}", f"{server.url}/upload")
    assert status == 403 and "--store" in body["error"], body
    status, body = curl("-X", "DELETE", "--data-binary", '{"model": "higgs", "version": "2"}', f"{server.url}/delete")
    assert status == 403 and "--store" in body["error"], body
    assert curl(f"{server.url}/v2/models/higgs/ready") == (200, {"name": "higgs", "ready": True})
    assert [entry["name"] for entry in curl(f"{server.url}/models")[1]] == ["clf", "higgs", "pickled", "tiny"]


# ---------------------------------------------------------------- where it listens, how it stops


def test_a_unix_socket_only_its_account_can_use(serve_runtime: BuiltRuntime, models: tuple[Path, dict[str, Any]],
                                                 tmp_path: Path) -> None:
    """Mode 0600 from the start; the highest version is the default; SIGTERM stops it."""
    onnx = models[0] / "tiny.onnx"
    top = Path(tempfile.mkdtemp(prefix="labhub-serve-socket-"))
    try:
        os.chmod(top, 0o755)  # noqa: S103 - the directory lets anyone in: only the socket's mode keeps them out
        path = top / "server.sock"
        path_socket = socket.socket(socket.AF_UNIX)
        path_socket.bind(str(path))  # a stale socket from an earlier run is replaced
        path_socket.close()
        with start_server(serve_runtime, tmp_path, ["--model", f"tiny@1={onnx}", "--model", f"tiny@3={onnx}",
                                                    "--socket", str(path)]) as running:
            assert running.socket_path == path, running.output()
            assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
            status, listed = curl("--unix-socket", str(path), "http://serve/models")
            assert (status, listed[0]["versions"], listed[0]["default_version"]) == (200, ["1", "3"], "3")
            assert post_json("http://serve/v1/models/tiny/versions/1:predict",
                             {"inputs": {"a": [[1, 2]], "b": [[3, 4]]}}, "--unix-socket", str(path))[0] == 200
            if IS_ROOT:  # another account may enter the directory, yet cannot connect
                connect = f"import socket; socket.socket(socket.AF_UNIX).connect({str(path)!r})"
                other = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                                        "/usr/bin/python3", "-c", connect], capture_output=True, text=True, timeout=30)
                assert other.returncode != 0 and "PermissionError" in other.stderr, other
            started = time.monotonic()
            assert running.stop() in (0, -signal.SIGTERM), running.output()
            assert time.monotonic() - started < 10
    finally:
        shutil.rmtree(top)


def test_an_inherited_listening_socket(serve_runtime: BuiltRuntime, models: tuple[Path, dict[str, Any]],
                                       tmp_path: Path) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    try:
        running = start_server(serve_runtime, tmp_path, ["--model", str(models[0] / "tiny.onnx"),
                                                         "--fd", str(listening.fileno())],
                               pass_fds=[listening.fileno()])
    finally:
        listening.close()  # the server holds its own copy
    with running:
        assert curl(f"http://127.0.0.1:{port}/v2/health/ready") == (200, {"ready": True}), running.output()


# ---------------------------------------------------------------- models that must not start


@pytest.mark.parametrize("name", ["higgs.keras", "higgs.onnx", "higgs.skops"])
def test_a_model_that_does_not_load_ends_the_start(serve_runtime: BuiltRuntime, models: tuple[Path, dict[str, Any]],
                                                   tmp_path: Path, name: str) -> None:
    source = {"higgs.keras": "higgs-1.keras", "higgs.onnx": "tiny.onnx", "higgs.skops": "clf.skops"}[name]
    corrupt = tmp_path / name
    corrupt.write_bytes((models[0] / source).read_bytes()[:200])
    ended = run_to_exit(serve_runtime, tmp_path / "run", ["--model", str(models[0] / "tiny.onnx"),
                                                           "--model", str(corrupt), "--port", "0"])
    assert ended.process.returncode == 1
    assert "Traceback (most recent call last)" in ended.stderr.read_text()
    assert last_stderr_line(ended).startswith(f"ValueError: {name}: "), ended.output()
    assert "serving" not in ended.stdout.read_text()  # it never listened


def test_pickles_load_only_when_allowed(serve_runtime: BuiltRuntime, models: tuple[Path, dict[str, Any]],
                                        tmp_path: Path) -> None:
    ended = run_to_exit(serve_runtime, tmp_path, ["--model", str(models[0] / "clf.joblib"), "--port", "0"])
    assert ended.process.returncode == 1
    assert last_stderr_line(ended).startswith("ValueError: clf.joblib: ValueError: pickled models run code"), \
        ended.output()


def test_a_skops_file_with_types_skops_does_not_trust_is_refused(serve_runtime: BuiltRuntime,
                                                                  models: tuple[Path, dict[str, Any]],
                                                                  tmp_path: Path) -> None:
    ended = run_to_exit(serve_runtime, tmp_path, ["--model", str(models[0] / "sneaky.skops"), "--port", "0"])
    assert ended.process.returncode == 1
    assert last_stderr_line(ended).startswith("ValueError: sneaky.skops: ValueError: holds types skops does not "
                                              "trust by default, which this server refuses: ['__main__.Sneaky']"), \
        ended.output()


def test_a_torchscript_model_answers_as_torch_computes(serve_runtime: BuiltRuntime, models: tuple[Path, dict[str, Any]],
                                                        tmp_path: Path) -> None:
    """TorchScript declares no signature: v2 takes the request's datatype, v1's JSON numbers are FP32."""
    directory, expected = models
    with start_server(serve_runtime, tmp_path, ["--model", str(directory / "net.pt"), "--port", "0"]) as running:
        assert running.port, running.output()
        x = expected["x"]
        status, body = post_json(f"{running.url}/v2/models/net/infer", {"inputs": [
            {"name": "x", "shape": [len(x), 4], "datatype": "FP32", "data": [v for row in x for v in row]}]})
        assert status == 200, body
        got = np.asarray(body["outputs"][0]["data"]).reshape(body["outputs"][0]["shape"])
        assert np.allclose(got, expected["torch"], atol=1e-6) and body["outputs"][0]["datatype"] == "FP32"
        status, body = post_json(f"{running.url}/v1/models/net:predict", {"instances": x})
        assert status == 200 and np.allclose(body["predictions"], expected["torch"], atol=1e-6)
        status, body = post_json(f"{running.url}/v2/models/net/infer", {"inputs": [
            {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
        assert status == 400 and "mat1 and mat2 shapes cannot be multiplied" in body["error"]
    (tmp_path / "bad.pt").write_bytes(b"not a TorchScript archive")
    ended = run_to_exit(serve_runtime, tmp_path / "run", ["--model", str(tmp_path / "bad.pt"), "--port", "0"])
    assert ended.process.returncode == 1
    assert last_stderr_line(ended).startswith("ValueError: bad.pt: "), ended.output()


# ---------------------------------------------------------------- a LabHub job's artifact

# Run with the serve runtime's python: what the saved model predicts for the features in argv[2].
PREDICT = """
import json, os, sys
os.environ["KERAS_BACKEND"] = "jax"
import keras, numpy as np
model = keras.saving.load_model(sys.argv[1], compile=False)
x = np.asarray(json.loads(sys.argv[2]), dtype="float32")
print(json.dumps([model.predict(row[None, :], verbose=0)[0].tolist() for row in x]))
"""


def test_serves_a_trained_artifact_with_its_preprocessing(train_runtime: BuiltRuntime, serve_runtime: BuiltRuntime,
                                                          train_job: TrainJob, tmp_path: Path) -> None:
    """labhub_train's NAME.keras + NAME.json: /json takes raw branch values and scales them as training did."""
    import awkward as ak
    import uproot

    trained = run_train(train_runtime, train_job, fout="higgs")
    assert trained.returncode == 0, trained.stderr
    spec = json.loads((train_job.output / "higgs.json").read_text())
    with uproot.open(train_job.input / "data" / "sig.root") as file:
        events = file["events"].arrays(list(BRANCHES), entry_stop=4)
    raw = [{name: ak.to_list(events[name][i]) for name in BRANCHES} for i in range(len(events))]
    features = []  # the documented preprocessing, done here independently of the server
    for event in raw:
        row: list[float] = []
        for column in spec["columns"]:
            values = event[column["name"]] if isinstance(event[column["name"]], list) else [event[column["name"]]]
            values = (values + [np.nan] * column["width"])[: column["width"]]
            low, high = np.array(column["min"], dtype=float), np.array(column["max"], dtype=float)
            scaled = (np.array(values, dtype=float) - low) / np.where(high > low, high - low, 1.0)
            row += np.where(np.isfinite(scaled), scaled, 0.0).tolist()
        features.append(row)
    oracle = subprocess.run([str(serve_runtime.python), "-c", PREDICT, str(train_job.output / "higgs.keras"),
                             json.dumps(features)], capture_output=True, text=True, timeout=120)
    assert oracle.returncode == 0, oracle.stderr
    expected = json.loads(oracle.stdout.splitlines()[-1])

    with start_server(serve_runtime, tmp_path, ["--model", str(train_job.output / "higgs.keras"),
                                                "--port", "0"]) as running:
        status, listed = curl(f"{running.url}/models")
        assert (status, listed[0]["keys"]) == (200, list(BRANCHES)), running.output()
        for event, want in zip(raw, expected, strict=True):
            status, got = post_json(f"{running.url}/json", {"keys": list(event), "values": list(event.values())})
            assert status == 200, got
            assert np.allclose(got, want, rtol=1e-6, atol=1e-7), (got, want)
        missing = {"keys": list(BRANCHES[:-1]), "values": [raw[0][name] for name in BRANCHES[:-1]]}
        status, body = post_json(f"{running.url}/json", missing)
        assert status == 400 and "missing: ['jet_pt']" in body["error"]
        # The protocols take the model's own input: the scaled features.
        status, body = post_json(f"{running.url}/v1/models/higgs:predict", {"instances": features})
        assert status == 200 and np.allclose(body["predictions"], expected, rtol=1e-6, atol=1e-7)
