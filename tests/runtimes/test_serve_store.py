"""The serve program while it serves: default switching, uploads to and deletes from its --store, TF-Serving's
model status, and the per-model metrics at /metrics; real labhub_serve processes, curl over loopback.

Every answer is checked against what the model files predict in the runtime itself (serve_support's
make_models), and every refused upload against what it left behind: nothing served, nothing stored.
"""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.runtimes.serve_support import (
    Server,
    curl,
    last_stderr_line,
    post_json,
    run_to_exit,
    start_server,
)
from tests.runtimes.support import BuiltRuntime

LIMIT = 1_000_000  # the store server's --max-upload-bytes
ROW = 2  # the row of the drawn inputs /json requests send


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store server's --store, which the server makes."""
    return tmp_path_factory.mktemp("store") / "models"


@pytest.fixture(scope="module")
def server(serve_runtime: BuiltRuntime, models: tuple[Path, dict[str, Any]], store: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Any:
    """higgs in two versions (1 chosen as the default), metered (the metrics test's own), a store."""
    directory, _ = models
    args = ["--model", f"higgs@1={directory / 'higgs-1.keras'}", "--model", f"higgs@2={directory / 'higgs-2.keras'}",
            "--default", "higgs@1", "--model", f"metered={directory / 'clf.skops'}", "--store", str(store),
            "--max-upload-bytes", str(LIMIT), "--port", "0"]
    with start_server(serve_runtime, tmp_path_factory.mktemp("server"), args) as running:
        assert running.port, running.output()
        yield running


def f32(values: Any) -> list[Any]:
    return np.asarray(values, dtype=np.float32).tolist()


def upload(url: str, *form: str, chunked: bool = False) -> tuple[int, Any]:
    """``curl -F`` each of ``form`` (``name=value``, ``file=@path``) to ``url/upload``."""
    args = [arg for field in form for arg in ("-F", field)]
    return curl(*(["-H", "Transfer-Encoding: chunked"] if chunked else []), *args, f"{url}/upload")


def upload_archive(url: str, archive: Path, query: str) -> tuple[int, Any]:
    return curl("--data-binary", f"@{archive}", "-H", "content-type: application/octet-stream",
                f"{url}/upload?{query}")


def delete(url: str, body: Any) -> tuple[int, Any]:
    return curl("-X", "DELETE", "-H", "content-type: application/json", "--data-binary", json.dumps(body),
                f"{url}/delete")


def listed(server: Server) -> dict[str, Any]:
    status, body = curl(f"{server.url}/models")
    assert status == 200, body
    return {entry["name"]: entry for entry in body}


def v2_body(x: list[list[float]], name: str = "features", datatype: str = "FP32") -> dict[str, Any]:
    flat = [value for row in x for value in row]
    return {"inputs": [{"name": name, "shape": [len(x), len(x[0])], "datatype": datatype, "data": flat}]}


def onnx_v1(x: list[list[float]]) -> dict[str, Any]:
    return {"inputs": {"a": [row[:2] for row in x], "b": [row[2:] for row in x]}}


def assert_left_nothing(store: Path, name: str) -> None:
    assert not (store / name).exists()
    assert list((store / ".incoming").iterdir()) == []


def make_archive(path: Path, members: list[tuple[str, bytes | None, bytes]]) -> Path:
    """A .tar.gz of (name, data, type) members; a link's data is its target."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = (data or b"").decode()
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return path


# ---------------------------------------------------------------- switching the default


def test_switching_the_default_changes_every_protocol_s_answer(server: Server,
                                                              models: tuple[Path, dict[str, Any]]) -> None:
    expected = models[1]
    x, keys = expected["x"], ["f0", "f1", "f2", "f3"]

    def answers() -> tuple[Any, ...]:
        v1 = post_json(f"{server.url}/v1/models/higgs:predict", {"instances": x})
        v2 = post_json(f"{server.url}/v2/models/higgs/infer", v2_body(x))
        tfaas = post_json(f"{server.url}/json", {"keys": keys, "values": x[ROW], "model": "higgs"})
        assert (v1[0], v2[0], tfaas[0]) == (200, 200, 200), (v1, v2, tfaas)
        return v1[1]["predictions"], v2[1]["model_version"], v2[1]["outputs"][0]["data"], tfaas[1]

    def wanted(version: str) -> tuple[Any, ...]:
        predictions = f32(expected[f"keras{version}"])
        return predictions, version, [row[0] for row in predictions], predictions[ROW]

    assert listed(server)["higgs"]["default_version"] == "1"
    assert answers() == wanted("1")
    status, body = curl("-X", "PUT", "--data-binary", '{"version": "2"}', f"{server.url}/models/higgs/default")
    assert (status, body["default_version"], body["versions"]) == (200, "2", ["1", "2"])
    assert listed(server)["higgs"]["default_version"] == "2"
    assert answers() == wanted("2")
    for bad in ('{"version": 0}', '{"version": true}', '{"version": "two"}', "{}", "[2]", "not json"):
        status, body = curl("-X", "PUT", "--data-binary", bad, f"{server.url}/models/higgs/default")
        assert status == 400 and set(body) == {"error"}, (bad, body)
    assert curl("-X", "PUT", "--data-binary", '{"version": 9}', f"{server.url}/models/higgs/default")[0] == 404
    assert curl("-X", "PUT", "--data-binary", '{"version": 1}', f"{server.url}/models/nope/default")[0] == 404
    assert answers() == wanted("2")
    status, body = curl("-X", "PUT", "--data-binary", '{"version": 1}', f"{server.url}/models/higgs/default")
    assert (status, body["default_version"]) == (200, "1")
    assert answers() == wanted("1")


# ---------------------------------------------------------------- uploading


def test_uploaded_models_are_served_at_once(server: Server, store: Path, models: tuple[Path, dict[str, Any]]) -> None:
    directory, expected = models
    x = expected["x"]
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    status, body = upload(server.url, "name=net", f"file=@{directory / 'tiny.onnx'}")
    assert status == 201, body
    assert (body["name"], body["version"], body["format"], body["uploaded_versions"]) == ("net", "1", "onnx", ["1"])
    assert (store / "net" / "1" / "model.onnx").read_bytes() == (directory / "tiny.onnx").read_bytes()
    status, body = post_json(f"{server.url}/v1/models/net:predict", onnx_v1(x))
    assert (status, body["outputs"]["prob"]) == (200, f32(expected["onnx"]["prob"]))

    status, body = upload(server.url, "name=net", f"file=@{directory / 'tiny.onnx'}")  # no version: the next one
    assert (status, body["version"], body["default_version"]) == (201, "2", "2")
    assert upload(server.url, "name=net", "version=2", f"file=@{directory / 'tiny.onnx'}")[0] == 409

    status, body = upload(server.url, "name=labels", "version=3", f"file=@{directory / 'clf.skops'}")
    assert (status, body["versions"], body["format"]) == (201, ["3"], "sklearn"), body
    status, body = post_json(f"{server.url}/v2/models/labels/versions/3/infer", v2_body(x, "input-0", "FP64"))
    assert (status, body["outputs"][0]["data"]) == (200, expected["sklearn"])
    assert post_json(f"{server.url}/json", {"keys": list("abcd"), "values": x[ROW], "model": "labels"}) == \
        (200, [expected["sklearn"][ROW]])
    status, body = curl(f"{server.url}/v1/models/labels")
    assert (status, [entry["version"] for entry in body["model_version_status"]]) == (200, ["3"])


def test_an_uploaded_keras_model_takes_its_labhub_train_spec(server: Server, store: Path, tmp_path: Path,
                                                            models: tuple[Path, dict[str, Any]]) -> None:
    directory, expected = models
    columns = [{"name": name, "kind": "scalar", "width": 1, "min": [0.0], "max": [1.0]}
               for name in ("pt", "eta", "phi", "mass")]
    spec = tmp_path / "higgs.json"
    spec.write_text(json.dumps({"format": "labhub-train/1", "columns": columns, "features": 4}))
    status, body = upload(server.url, "name=trained", f"file=@{directory / 'higgs-1.keras'}", f"spec=@{spec}")
    assert (status, body["keys"]) == (201, ["pt", "eta", "phi", "mass"]), body
    assert (store / "trained" / "1" / "model.json").read_text() == spec.read_text()
    row = dict(zip(["mass", "pt", "phi", "eta"], [expected["x"][ROW][i] for i in (3, 0, 2, 1)], strict=True))
    assert post_json(f"{server.url}/json", {"keys": list(row), "values": list(row.values()), "model": "trained"}) == \
        (200, f32(expected["keras1"][ROW]))

    spec.write_text(json.dumps({"format": "labhub-train/1", "columns": columns[:3], "features": 3}))
    status, body = upload(server.url, "name=misfit", f"file=@{directory / 'higgs-1.keras'}", f"spec=@{spec}")
    assert status == 400 and "model.json: ValueError: it describes 3 features" in body["error"], body
    assert_left_nothing(store, "misfit")


@pytest.mark.parametrize("case", ["truncated", "untrusted", "pickle", "suffix", "no file", "unknown field",
                                  "bad name", "bad version"])
def test_an_upload_that_does_not_load_is_a_400_that_leaves_nothing(server: Server, store: Path, tmp_path: Path,
                                                                  models: tuple[Path, dict[str, Any]],
                                                                  case: str) -> None:
    directory = models[0]
    truncated = tmp_path / "broken.onnx"
    truncated.write_bytes((directory / "tiny.onnx").read_bytes()[:100])
    (tmp_path / "notes.txt").write_text("not a model")
    form, message = {
        "truncated": (["name=broken", f"file=@{truncated}"], "cannot load broken@1: model.onnx: "),
        "untrusted": (["name=broken", f"file=@{directory / 'sneaky.skops'}"], "skops does not trust"),
        "pickle": (["name=broken", f"file=@{directory / 'clf.joblib'}"], "pickled models run code"),
        "suffix": (["name=broken", f"file=@{tmp_path / 'notes.txt'}"], "unknown model format '.txt'"),
        "no file": (["name=broken"], "no model file"),
        "unknown field": (["name=broken", "labels=x", f"file=@{truncated}"], "'labels' is not one"),
        "bad name": (["name=../broken", f"file=@{directory / 'tiny.onnx'}"], "is not a model name"),
        "bad version": (["name=broken", "version=0", f"file=@{directory / 'tiny.onnx'}"], "positive integer"),
    }[case]
    status, body = upload(server.url, *form)
    assert status == 400 and set(body) == {"error"} and message in body["error"], body
    assert "broken" not in listed(server)
    assert curl(f"{server.url}/v2/models/broken/ready")[0] == 404
    assert_left_nothing(store, "broken")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_upload_past_the_limit_is_a_413(server: Server, store: Path, tmp_path: Path, chunked: bool) -> None:
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\0" * (LIMIT + 1))
    status, body = upload(server.url, "name=big", f"file=@{big}", chunked=chunked)
    assert status == 413 and set(body) == {"error"}, body
    assert "big" not in listed(server)
    assert_left_nothing(store, "big")


def test_an_archive_upload(server: Server, store: Path, tmp_path: Path, models: tuple[Path, dict[str, Any]]) -> None:
    """TFaaS's raw form: a .tar.gz of the model (and a spec), regular files at its top level only."""
    directory, expected = models
    onnx = (directory / "tiny.onnx").read_bytes()
    good = make_archive(tmp_path / "good.tar.gz", [("./", b"", tarfile.DIRTYPE),
                                                   ("./packed.onnx", onnx, tarfile.REGTYPE)])
    status, body = upload_archive(server.url, good, "name=archived&version=4")
    assert (status, body["versions"]) == (201, ["4"]), body
    assert (store / "archived" / "4" / "model.onnx").read_bytes() == onnx
    status, body = post_json(f"{server.url}/v1/models/archived/versions/4:predict", onnx_v1(expected["x"]))
    assert (status, body["outputs"]["logits"]) == (200, f32(expected["onnx"]["logits"]))
    status, body = upload_archive(server.url, good, "")  # its name from the file's, the version the first
    assert (status, body["name"], body["version"]) == (201, "packed", "1"), body

    hostile = {
        "parent": [("../evil.onnx", onnx, tarfile.REGTYPE)],
        "absolute": [(str(tmp_path / "evil.onnx"), onnx, tarfile.REGTYPE)],
        "nested": [("sub/evil.onnx", onnx, tarfile.REGTYPE)],
        "symlink": [("evil.onnx", onnx, tarfile.REGTYPE), ("evil.json", b"/etc/passwd", tarfile.SYMTYPE)],
        "hardlink": [("evil.onnx", onnx, tarfile.REGTYPE), ("evil.json", b"evil.onnx", tarfile.LNKTYPE)],
        "folder": [("evil", b"", tarfile.DIRTYPE), ("evil.onnx", onnx, tarfile.REGTYPE)],
        "two models": [("evil.onnx", onnx, tarfile.REGTYPE), ("other.onnx", onnx, tarfile.REGTYPE)],
        "no model": [("evil.json", b"{}", tarfile.REGTYPE)],
    }
    for case, members in hostile.items():
        status, body = upload_archive(server.url, make_archive(tmp_path / "hostile.tar.gz", members), "name=evil")
        assert status == 400 and set(body) == {"error"}, (case, body)
        assert_left_nothing(store, "evil")
    assert not (tmp_path / "evil.onnx").exists() and not list(store.glob("**/evil*"))
    bomb = make_archive(tmp_path / "bomb.tar.gz", [("evil.onnx", b"\0" * (LIMIT + 1), tarfile.REGTYPE)])
    assert bomb.stat().st_size < LIMIT  # small sent, too large unpacked
    assert upload_archive(server.url, bomb, "name=evil")[0] == 413
    (tmp_path / "plain.tar.gz").write_bytes(b"not gzip at all")
    assert upload_archive(server.url, tmp_path / "plain.tar.gz", "name=evil")[0] == 400
    assert curl("-H", "content-type: text/plain", "--data-binary", "x", f"{server.url}/upload")[0] == 415
    assert "evil" not in listed(server)
    assert_left_nothing(store, "evil")


# ---------------------------------------------------------------- deleting


def test_deleting_uploaded_versions(server: Server, store: Path, models: tuple[Path, dict[str, Any]]) -> None:
    onnx = models[0] / "tiny.onnx"
    for _ in range(3):
        assert upload(server.url, "name=gone", f"file=@{onnx}")[0] == 201
    assert curl("-X", "PUT", "--data-binary", '{"version": 2}', f"{server.url}/models/gone/default")[0] == 200
    assert delete(server.url, {"model": "gone", "version": "2"}) == \
        (200, {"name": "gone", "deleted": ["2"], "versions": ["1", "3"], "default_version": "3"})
    assert not (store / "gone" / "2").exists() and (store / "gone" / "3").is_dir()
    assert post_json(f"{server.url}/v2/models/gone/versions/2/infer", v2_body([[1.0, 2.0]], "a"))[0] == 404
    status, body = curl(f"{server.url}/v1/models/gone")
    assert [entry["version"] for entry in body["model_version_status"]] == ["1", "3"]
    assert delete(server.url, {"model": "gone@1"})[1]["deleted"] == ["1"]
    assert delete(server.url, {"model": "gone"}) == \
        (200, {"name": "gone", "deleted": ["3"], "versions": [], "default_version": None})
    assert "gone" not in listed(server) and not (store / "gone").exists()
    assert curl(f"{server.url}/v2/models/gone/ready")[0] == 404
    assert curl(f"{server.url}/v1/models/gone")[0] == 404
    assert post_json(f"{server.url}/json", {"keys": ["a"], "values": [1], "model": "gone"})[0] == 404
    assert delete(server.url, {"model": "gone"})[0] == 404


def test_versions_given_on_the_command_line_cannot_be_deleted(server: Server) -> None:
    for body in ({"model": "higgs", "version": 1}, {"model": "higgs@2"}, {"model": "higgs"}):
        status, answer = delete(server.url, body)
        assert status == 403 and "--model" in answer["error"], answer
    for body in ({"model": "higgs", "version": 7}, {"model": "nope"}):
        assert delete(server.url, body)[0] == 404
    for body in ({}, {"model": 3}, {"model": "higgs@1", "version": 2}, [1]):
        assert delete(server.url, body)[0] == 400
    assert listed(server)["higgs"]["versions"] == ["1", "2"]


# ---------------------------------------------------------------- a restart


def test_a_restart_serves_what_was_uploaded(serve_runtime: BuiltRuntime, models: tuple[Path, dict[str, Any]],
                                            tmp_path: Path) -> None:
    directory, expected = models
    store = tmp_path / "store"
    base = ["--store", str(store), "--port", "0"]
    with start_server(serve_runtime, tmp_path / "first", base) as first:  # a store alone: nothing yet
        assert first.port and listed(first) == {}, first.output()
        assert upload(first.url, "name=kept", f"file=@{directory / 'clf.skops'}")[0] == 201
        assert upload(first.url, "name=kept", f"file=@{directory / 'tiny.onnx'}")[0] == 201
    (store / ".incoming" / "tmp-left-by-a-crash").mkdir()
    with start_server(serve_runtime, tmp_path / "second", [*base, "--default", "kept@1"]) as second:
        kept = listed(second)["kept"]
        assert (kept["versions"], kept["uploaded_versions"], kept["default_version"]) == (["1", "2"], ["1", "2"], "1")
        assert post_json(f"{second.url}/v1/models/kept:predict", {"instances": expected["x"]}) == \
            (200, {"predictions": expected["sklearn"]})
        status, body = post_json(f"{second.url}/v1/models/kept/versions/2:predict", onnx_v1(expected["x"]))
        assert (status, body["outputs"]["prob"]) == (200, f32(expected["onnx"]["prob"]))
        assert list((store / ".incoming").iterdir()) == []
    clash = run_to_exit(serve_runtime, tmp_path / "third", ["--model", f"kept@2={directory / 'tiny.onnx'}", *base])
    assert clash.process.returncode == 1
    assert last_stderr_line(clash) == f"ValueError: --store {store} holds kept@2, which a --model gives too"


# ---------------------------------------------------------------- metrics


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at /metrics, by name and (sorted) labels."""
    status, text = curl(f"{server.url}/metrics")
    assert status == 200 and isinstance(text, str), text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_exactly_the_requests_made(server: Server, models: tuple[Path, dict[str, Any]]) -> None:
    x = models[1]["x"]
    before = scrape(server)
    assert not [key for key in before if ("model", "metered") in key[1]]
    assert ("process_cpu_seconds_total", ()) in before  # kserve's registry is served too
    good, bad = v2_body(x, "input-0", "FP64"), v2_body([row[:3] for row in x], "input-0", "FP64")
    answers = [post_json(f"{server.url}/v2/models/metered/infer", good)[0] for _ in range(2)]
    answers.append(post_json(f"{server.url}/v2/models/metered/versions/1/infer", good)[0])
    answers.append(post_json(f"{server.url}/v2/models/metered/infer", bad)[0])
    answers.append(post_json(f"{server.url}/v2/models/metered/versions/7/infer", good)[0])
    answers += [post_json(f"{server.url}/v1/models/metered:predict", {"instances": x})[0] for _ in range(2)]
    answers.append(post_json(f"{server.url}/json", {"keys": list("abcd"), "values": x[0], "model": "metered"})[0])
    answers.append(post_json(f"{server.url}/json", {"keys": ["a"], "values": [1], "model": "metered"})[0])
    answers.append(curl(f"{server.url}/v2/models/metered/ready")[0])  # not an inference: not counted
    assert answers == [200, 200, 200, 400, 404, 200, 200, 200, 400, 200]

    after = scrape(server)
    ours = {key: value for key, value in after.items() if ("model", "metered") in key[1]}
    counts = {tuple(dict(labels)[k] for k in ("protocol", "version", "code")): value
              for (name, labels), value in ours.items() if name == "labhub_serve_requests_total"}
    assert counts == {("v2", "1", "200"): 3, ("v2", "1", "400"): 1, ("v2", "", "404"): 1, ("v1", "1", "200"): 2,
                      ("tfaas", "1", "200"): 1, ("tfaas", "1", "400"): 1}
    v2 = (("model", "metered"), ("protocol", "v2"), ("version", "1"))
    assert ours[("labhub_serve_request_seconds_count", v2)] == 4
    assert 0 < ours[("labhub_serve_request_seconds_sum", v2)] < 60
    buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in ours.items()
                     if name == "labhub_serve_request_seconds_bucket" and ("protocol", "v2") in labels
                     and ("version", "1") in labels)
    assert [le for le, _ in buckets] == [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                         10, float("inf")]
    assert buckets[-1][1] == 4 and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False))
    assert {name for name, _ in ours} == {"labhub_serve_requests_total", "labhub_serve_request_seconds_count",
                                          "labhub_serve_request_seconds_sum", "labhub_serve_request_seconds_bucket"}
