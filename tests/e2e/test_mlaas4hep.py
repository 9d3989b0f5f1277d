"""MLaaS4HEP's own curl recipe against LabHub, end to end: a real hub, the local backend with
per-user accounts, the built `train` runtime (Keras on JAX), ROOT files written with uproot.

upload -> submit -> status_docker until done -> logs -> model (a tar.gz whose model loads and
predicts) -> delete_specs -> delete_folder; then the same job reading its ROOT files from a real
XRootD server and an HTTP server; and what bob (or a web page) can do with alice's.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.e2e.services_support import check_the_three_protocols, curl, curl_json
from tests.runtimes.conftest import root_files, runtimes_root, serve_runtime, train_runtime  # noqa: F401 - fixtures
from tests.runtimes.servers import http_server, xrootd_server
from tests.runtimes.support import MODEL, PARAMS

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def hub(start_hub, sqlite_url, train_runtime, runtimes_root):  # noqa: F811
    return await start_hub(sqlite_url, runtimes_dir=runtimes_root)


def folder_tarball(tmp_path: Path, root_files: dict[str, Path], file_list: list[str]) -> Path:  # noqa: F811
    """MLaaS4HEP's folder_to_upload.tar.gz: one top directory holding the lists, model, params, data."""
    top = tmp_path / "folder_to_upload"
    (top / "data").mkdir(parents=True)
    for name, path in root_files.items():
        shutil.copyfile(path, top / "data" / name)
    (top / "files_test.txt").write_text("\n".join(file_list) + "\n")
    (top / "labels_test.txt").write_text("1\n0\n")
    (top / "keras_model.py").write_text(MODEL)
    (top / "params_test.json").write_text(json.dumps({**PARAMS, "epochs": 2}))
    archive = tmp_path / "folder_to_upload.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(top, arcname="folder_to_upload")
    return archive


async def wait_done(url: str, token: str, process: str, timeout: float = 300) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        status = await curl_json("-H", f"Authorization: Bearer {token}", f"{url}/status_docker?process_name={process}")
        if status["status"] in ("succeeded", "failed", "stopped", "expired"):
            return status
        await asyncio.sleep(0.5)
    raise AssertionError(f"{process} did not end within {timeout} s: {status}")


async def test_the_seed_recipe_end_to_end(hub, tmp_path, root_files, train_runtime):  # noqa: F811
    alice = await hub.user("alice")
    bob = await hub.user("bob")
    url, auth = hub.url, ["-H", f"Authorization: Bearer {alice.token}"]
    archive = folder_tarball(tmp_path, root_files, ["data/sig.root", "data/bkg.root"])

    uploaded = await curl_json(*auth, "-F", f"file=@{archive}", f"{url}/upload?name=luca")
    assert uploaded["folder"]["name"] == "luca" and uploaded["folder"]["files"] == 6
    spec = {"name": "luca", "files": "files_test.txt", "labels": "labels_test.txt", "model": "keras_model.py",
            "params": "params_test.json", "fout": "higgs", "memory": "2gb", "cpus": 1, "device": "cpu"}
    (tmp_path / "input_new.json").write_text(json.dumps(spec))
    submitted = await curl_json(*auth, "-H", "Content-Type: application/json", "-d", f"@{tmp_path / 'input_new.json'}",
                                f"{url}/submit")
    assert submitted["process_name"] == "luca_1"
    status = await wait_done(url, alice.token, "luca_1")
    logs = (await curl(*auth, "-L", "-o", str(tmp_path / "logs.txt"), f"{url}/logs?process_name=luca_1"))
    assert logs.returncode == 0
    log_text = (tmp_path / "logs.txt").read_text()
    assert status["status"] == "succeeded", f"{status}\n{log_text}"
    assert status["exit_code"] == 0 and "epoch" in log_text

    got = await curl(*auth, "-L", "-o", str(tmp_path / "luca_1.tar.gz"), f"{url}/model?process_name=luca_1")
    assert got.returncode == 0
    with tarfile.open(tmp_path / "luca_1.tar.gz") as tar:
        names = tar.getnames()
        assert "luca_1/higgs.keras" in names and "luca_1/higgs.json" in names
        tar.extractall(tmp_path / "model")  # noqa: S202 - our own hub's bundle, checked above
    predict = ("import json, os, sys; os.environ['KERAS_BACKEND'] = 'jax'; import keras, numpy as np; "
               "m = keras.saving.load_model(sys.argv[1]); spec = json.load(open(sys.argv[2])); "
               "width = m.inputs[0].shape[-1]; p = m.predict(np.random.rand(4, width), verbose=0); "
               "assert ((0 <= p) & (p <= 1)).all(), p; print('ok', p.shape)")
    checked = subprocess.run([str(train_runtime.python), "-c", predict, str(tmp_path / "model/luca_1/higgs.keras"),
                              str(tmp_path / "model/luca_1/higgs.json")], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0 and "ok (4, 1)" in checked.stdout, checked.stderr

    # bob reaches none of it, and a page cannot delete with the cookie
    theirs = ["-H", f"Authorization: Bearer {bob.token}"]
    for path in ("/status_docker?process_name=luca_1", "/logs?process_name=luca_1", "/model?process_name=luca_1",
                 "/delete_specs?name=luca", "/delete_folder?name=luca"):
        denied = await curl(*theirs, "-o", "/dev/null", "-w", "%{http_code}", f"{url}{path}")
        assert denied.stdout == "404", path
    submit_bobs = await curl(*theirs, "-H", "Content-Type: application/json", "-d", json.dumps(spec), "-o", "/dev/null",
                             "-w", "%{http_code}", f"{url}/submit")
    assert submit_bobs.stdout == "404"
    cookie = await curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Cookie: labhub_session=x",
                        f"{url}/delete_folder?name=luca")
    assert cookie.stdout == "401"

    assert (await curl_json(*auth, f"{url}/delete_specs?name=luca"))["name"] == "luca"
    assert (await curl_json(*auth, f"{url}/delete_folder?name=luca"))["deleted"] is True
    assert (await alice.http.get("/api/v1/folders/luca")).status_code == 404


async def test_bad_submits_name_the_field(hub, tmp_path, root_files):  # noqa: F811
    alice = await hub.user("alice")
    archive = folder_tarball(tmp_path, root_files, ["data/sig.root", "data/bkg.root"])
    await curl_json("-H", f"Authorization: Bearer {alice.token}", "-F", f"file=@{archive}",
                    f"{hub.url}/upload?name=luca")
    good = {"name": "luca", "files": "files_test.txt", "labels": "labels_test.txt", "model": "keras_model.py",
            "params": "params_test.json"}
    for change, field in (({"name": "nobody"}, "name"), ({"files": "missing.txt"}, "files"),
                          ({"memory": "3 potatoes"}, "memory"), ({"memory": "9000gb"}, "memory"),
                          ({"device": "gpu"}, "device")):
        resp = await alice.http.post("/submit", json={**good, **change})
        assert resp.status_code in (404, 422) and field in resp.json().get("fields", {}), (change, resp.text)


@pytest.mark.parametrize("where", ["xrootd", "http"])
async def test_training_reads_remote_root_files(hub, tmp_path, root_files, where):  # noqa: F811
    if where == "xrootd" and shutil.which("xrootd") is None:
        pytest.skip("Debian's xrootd-server is not installed (scripts/system-deps.sh installs it)")
    alice = await hub.user("alice")
    files = [root_files["sig.root"], root_files["bkg.root"]]
    if where == "xrootd":
        server = xrootd_server(files)
        remote = server.__enter__()
        urls = [remote.url(p.name) for p in files]
    else:
        server = http_server(files[0].parent)
        base, _ = server.__enter__()
        urls = [f"{base}/{p.name}" for p in files]
    try:
        archive = folder_tarball(tmp_path, {}, urls)
        buf = io.BytesIO(archive.read_bytes())
        assert (await alice.http.post("/upload", params={"name": "remote"},
                                      files={"file": ("f.tar.gz", buf)})).status_code == 200
        submitted = (await alice.http.post("/submit", json={
            "name": "remote", "files": "files_test.txt", "labels": "labels_test.txt", "model": "keras_model.py",
            "params": "params_test.json", "fout": "m"})).json()
        status = await wait_done(hub.url, alice.token, submitted["process_name"])
        log = (await alice.http.get("/logs", params={"process_name": submitted["process_name"]})).text
        assert status["status"] == "succeeded", f"{status}\n{log}"
        assert urls[0] in log  # it says what it read
    finally:
        server.__exit__(None, None, None)


async def test_the_same_training_through_the_cli_with_an_epochs_override(hub, tmp_path, root_files):  # noqa: F811
    from typer.testing import CliRunner

    from labhub.cli.main import app

    alice = await hub.user("alice")
    archive = folder_tarball(tmp_path, root_files, ["data/sig.root", "data/bkg.root"])
    env = {"LABHUB_URL": hub.url, "LABHUB_TOKEN": alice.token}
    runner = CliRunner()

    def cli(*args: str):
        return asyncio.to_thread(runner.invoke, app, list(args), env=env, catch_exceptions=False)

    up = await cli("upload", str(archive), "--name", "luca", "--strip-top")
    assert up.exit_code == 0 and "luca: 6 files" in up.output, up.output
    done = await cli("submit", "mlaas4hep", "--input", "luca", "--param", "files=files_test.txt",
                     "--param", "labels=labels_test.txt", "--param", "model=keras_model.py",
                     "--param", "params=params_test.json", "--param", "fout=higgs", "--param", "epochs=1",
                     "--wait")
    assert done.exit_code == 0, done.output
    assert "mlaas4hep-1: succeeded (exit code 0)" in done.output
    [job] = (await alice.http.get("/api/v1/instances", params={"name": "mlaas4hep-1"})).json()
    metrics = (await alice.http.get(f"/api/v1/instances/{job['id']}/metrics")).json()
    assert [m["epoch"] for m in metrics] == [1]  # params_test.json says 2; the job's parameter wins
    got = await cli("download", "mlaas4hep-1", "-o", str(tmp_path / "out"))
    assert got.exit_code == 0, got.output
    assert (tmp_path / "out" / "mlaas4hep-1" / "higgs.keras").stat().st_size > 0


async def test_a_trained_model_deployed_as_a_service_answers_through_the_proxy(
        start_hub, sqlite_url, tmp_path, root_files, train_runtime, serve_runtime, runtimes_root):  # noqa: F811
    """Train with the MLaaS4HEP template, deploy the artifact with the model-service template (the serve
    runtime's KServe server on the instance's own origin), call it through the hub's proxy with tritonclient
    (v2), curl (TF-Serving's v1, TFaaS's /json): each answer is the model's own prediction; without the
    token there is none."""
    serve = serve_runtime
    hub = await start_hub(sqlite_url, runtimes_dir=runtimes_root)
    alice = await hub.user("alice")
    archive = folder_tarball(tmp_path, root_files, ["data/sig.root", "data/bkg.root"])
    assert (await alice.http.post("/api/v1/folders/luca/upload", params={"strip_top": "true"},
                                  content=archive.read_bytes())).status_code == 201
    job = (await alice.http.post("/api/v1/instances", json={
        "template": "mlaas4hep", "name": "higgs-1", "input": "luca",
        "params": {"files": "files_test.txt", "labels": "labels_test.txt", "model": "keras_model.py",
                   "params": "params_test.json", "fout": "higgs", "epochs": 1}})).json()
    await hub.wait_status(alice, job["id"], {"succeeded"}, timeout=240)

    missing = (await alice.http.post("/api/v1/instances", json={
        "template": "model-service", "name": "nope", "params": {"model": "higgs-1/absent.keras"}})).json()
    failed = await hub.wait_status(alice, missing["id"], {"failed"})
    assert failed["message"].startswith("cannot start: model: job 'higgs-1' has no artifact 'absent.keras'")

    svc = (await alice.http.post("/api/v1/instances", json={
        "template": "model-service", "name": "higgs", "params": {"model": "higgs-1/higgs.keras"}})).json()
    running = await hub.wait_status(alice, svc["id"], {"running"}, timeout=180)
    assert running["kind"] == "service"
    await check_the_three_protocols(hub, alice, running, job, serve)
