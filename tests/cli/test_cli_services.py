"""`labhub deploy` and `labhub service` against a running hub (the local backend, the stand-in model
server of tests/web/test_service_pages.py): a job's only model, a job with two (refused, naming both),
one artifact, an uploaded file, a local file uploaded first; public, sleeping, and `labhub ls`."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import pytest
from typer.testing import CliRunner

from labhub.cli.main import app
from labhub.client import Hub, HubError
from tests.web.test_service_pages import Clock, site_templates

runner = CliRunner()
pytestmark = pytest.mark.asyncio


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def hub(start_hub, sqlite_url, tmp_path, clock):
    return await start_hub(sqlite_url, templates_dir=site_templates(tmp_path), clock=clock)


async def job(hub, caller, name: str, files: str) -> dict:
    made = await caller.http.post("/api/v1/instances", json={"template": "writer", "name": name,
                                                             "params": {"files": files}})
    assert made.status_code == 201, made.text
    return await hub.wait_status(caller, made.json()["id"], {"succeeded"})


async def test_deploy_from_jobs_folders_and_local_files(hub, tmp_path, clock):
    alice = await hub.user("alice")
    env = {"LABHUB_URL": hub.url, "LABHUB_TOKEN": alice.token}

    def cli(*args: str):
        return asyncio.to_thread(runner.invoke, app, list(args), env=env, catch_exceptions=False)

    await job(hub, alice, "one-1", "higgs.keras,notes.txt")
    await job(hub, alice, "two-1", "a.keras,deep/b.onnx")

    # JOB: its only model; waits until it serves, then says how to call it (the model's name as served)
    one = await cli("deploy", "one-1", "--wait")
    assert one.exit_code == 0, one.output
    assert "higgs: requested" in one.output and "serving one-1/higgs.keras" in one.output  # named after the model
    url = re.search(r"^URL: (\S+)$", one.output, re.M).group(1)
    assert re.fullmatch(r"http://higgs--alice\.localhost:\d+/", url)
    assert f"{url}v2/models/higgs/infer" in one.output and f"{url}v1/models/higgs:predict" in one.output
    assert f"{url}json" in one.output and '"keys": ["pt", "eta"]' in one.output  # the keys it reported
    assert one.output.count('-H "Authorization: Bearer $TOKEN"') >= 3 and "infer scope" in one.output

    # JOB with two models: refused, naming both; nothing launched
    two = await cli("deploy", "two-1", "--name", "two")
    assert two.exit_code == 1
    assert "two-1/a.keras" in two.output and "two-1/deep/b.onnx" in two.output
    assert not [r for r in (await alice.http.get("/api/v1/instances", params={"name": "two"})).json()]
    missing = await cli("deploy", "nope")
    assert missing.exit_code == 1 and "no instance named 'nope'" in missing.output

    # JOB/PATH, public
    refused = await cli("deploy", "two-1/deep/b.onnx", "--name", "b", "--replicas", "3")
    assert refused.exit_code == 1 and "replicas: must be 1 to 2" in refused.output
    b = await cli("deploy", "two-1/deep/b.onnx", "--name", "b", "--public", "--size", "medium", "--replicas", "2")
    assert b.exit_code == 0, b.output
    assert "Public: anyone may call it" in b.output and "Authorization" not in b.output
    assert "b: requested" in b.output and f"{url.replace('higgs--', 'b--')}v2/models/b/infer" in b.output

    # a local file: uploaded into a folder (models, or --folder), then served from there; may sleep
    local = tmp_path / "Clf Model.skops"
    local.write_bytes(b"a local model")
    up = await cli("deploy", str(local), "--sleep-when-idle", "--folder", "mine")
    assert up.exit_code == 0, up.output
    # (as a name a model's path may have)
    assert "as folder:mine/Clf_Model.skops" in up.output and "clf-model: requested" in up.output
    folder = (await alice.http.get("/api/v1/folders/mine")).json()
    assert [(f["path"], f["size"]) for f in folder["items"]] == [("Clf_Model.skops", 13)]
    # folder:FOLDER/PATH as it is
    again = await cli("deploy", "folder:mine/Clf_Model.skops", "--name", "clf2")
    assert again.exit_code == 0, again.output

    def drive() -> None:
        with Hub(hub.url, alice.token) as client:
            rows = {r["name"]: r for r in client.instances()}
            assert rows["higgs"]["params"] == {"model": "one-1/higgs.keras"}
            assert rows["b"]["params"] == {"model": "two-1/deep/b.onnx"} and rows["b"]["public"] is True
            assert rows["b"]["size"] == "medium" and rows["b"]["replicas"] == 2
            assert rows["clf-model"]["params"] == {"model": "folder:mine/Clf_Model.skops"}
            assert rows["clf-model"]["min_replicas"] == 0 and rows["clf-model"]["public"] is False
            assert rows["clf2"]["params"] == {"model": "folder:mine/Clf_Model.skops"}
            assert rows["clf2"]["min_replicas"] == 1
            for name in ("b", "clf-model", "clf2"):
                client.wait(rows[name]["id"], until={"running"})
            served = client.service(rows["clf-model"]["id"])
            assert served["models"][0]["name"] == "Clf_Model" and served["models"][0]["bytes"] == 13
            changed = client.change_service(rows["clf2"]["id"], public=True, sleep_when_idle=True)
            assert changed["public"] is True and changed["min_replicas"] == 0
            client.change_service(rows["clf2"]["id"], public=False, sleep_when_idle=False)
            try:
                client.service(rows["one-1"]["id"])
            except HubError as exc:
                assert exc.status == 404
            else:
                raise AssertionError("a job has no service answer")

    await asyncio.to_thread(drive)

    public = await cli("service", "public", "higgs", "on")
    assert public.exit_code == 0 and "higgs is public" in public.output
    bad = await cli("service", "public", "higgs", "maybe")
    assert bad.exit_code == 2
    not_one = await cli("service", "sleep", "one-1", "on")
    assert not_one.exit_code == 1 and "not a service" in not_one.output
    shown = await cli("service", "show", "higgs")
    assert shown.exit_code == 0 and "higgs: running, public" in shown.output
    assert "model higgs: versions 1 (default 1), keras" in shown.output and "Authorization" not in shown.output

    clock.offset = dt.timedelta(seconds=120)  # past idle_s (30): clf-model, which may sleep, sleeps
    rows = {r["name"]: r for r in (await alice.http.get("/api/v1/instances")).json()}
    await hub.wait_status(alice, rows["clf-model"]["id"], {"sleeping"}, timeout=30)
    listed = await cli("ls")
    assert listed.exit_code == 0, listed.output
    lines = {line.split()[0]: line for line in listed.output.splitlines()[1:]}
    assert re.search(r"\bsleeping\s+private, sleeps when idle\s", lines["clf-model"])
    assert re.search(r"\brunning\s+public, 2 replicas\s", lines["b"])
    assert re.search(r"\brunning\s+public\s", lines["higgs"])
    assert re.search(r"\brunning\s+private\s", lines["clf2"])
    assert re.search(r"\bsucceeded\s+-\s", lines["one-1"])
    woken = await cli("service", "sleep", "clf-model", "off")  # may no longer sleep: woken
    assert woken.exit_code == 0 and "keeps running when idle" in woken.output
    await hub.wait_status(alice, rows["clf-model"]["id"], {"running"}, timeout=30)
