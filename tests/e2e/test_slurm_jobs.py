"""Jobs on the real Slurm cluster, through the hub's API: a site's script template runs the system
``python3`` on a script from the job's input folder; its log is followed while it runs, its metrics
and artifacts come back, a failure says why, a stop stops it; and what the job's own account (or
another user) can do about the files the hub reads.

The cluster and the hub's settings are those of ``test_slurm.py`` (the session's single-node Slurm,
found through ``LABHUB_SLURM__*`` as a site would configure it).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import tarfile
import textwrap
from pathlib import Path

import pytest

from tests.api.test_jobs import SCRIPT_TEMPLATE, make_folder, user_id
from tests.backends.conftest import slurm_cluster  # noqa: F401 - the session's cluster fixture
from tests.e2e.test_slurm import _job_id, _slurm_hub, slurm_env  # noqa: F401 - slurm_env is a fixture
from tests.runtimes.conftest import root_files, runtimes_root, train_runtime  # noqa: F401 - fixtures

pytestmark = [pytest.mark.asyncio, pytest.mark.slurm]
IS_ROOT = os.geteuid() == 0

TRAIN = textwrap.dedent("""\
    import json, os, sys, time
    out, metrics = os.environ["LABHUB_OUTPUT"], os.environ["LABHUB_METRICS"]
    data = open(os.path.join(os.environ["LABHUB_INPUT"], "data.txt")).read()
    print("read", len(data), "bytes as", os.getuid(), "in job", os.environ["SLURM_JOB_ID"], flush=True)
    print("ENV", json.dumps([os.environ["PATH"], os.environ.get("VIRTUAL_ENV"), sys.executable]), flush=True)
    for epoch in range(1, 4):
        with open(metrics, "a") as fh:
            fh.write(json.dumps({"epoch": epoch, "loss": 1.0 / epoch}) + "\\n")
        print(f"epoch {epoch} loss={1.0 / epoch:.3f}", flush=True)
        time.sleep(0.4)
    os.makedirs(os.path.join(out, "sub"))
    open(os.path.join(out, "model.bin"), "wb").write(b"weights" * 1000)
    open(os.path.join(out, "sub", "notes.txt"), "w").write(data.upper())
    print("done", flush=True)
""")

FAIL = textwrap.dedent("""\
    print("starting", flush=True)
    raise ValueError("model(idim) raised: bad layer")
""")

SLEEP = textwrap.dedent("""\
    import time
    print("started", flush=True)
    time.sleep(120)
""")

# The job's account owns the directory of its Slurm output file: it swaps the file for a link to
# a file only root may read, then ends.  The hub, reading the log as root, must not follow it.
SWAP = textwrap.dedent("""\
    import os
    out = os.readlink("/proc/self/fd/1")
    print("swapping", out, flush=True)
    os.unlink(out)
    os.symlink(SECRET, out)
""")


@pytest.fixture
async def hub(slurm_env, start_hub, sqlite_url, shared_tmp):  # noqa: F811
    (Path(slurm_env["LABHUB_TEMPLATES_DIR"]) / "script.yaml").write_text(SCRIPT_TEMPLATE)
    return await _slurm_hub(start_hub, sqlite_url, shared_tmp)


async def submit(caller, name: str, folder: str) -> dict:
    resp = await caller.http.post("/api/v1/instances", json={"template": "script", "name": name, "input": folder,
                                                             "backend": "slurm"})
    assert resp.status_code == 201, resp.text
    return resp.json()


async def _output(hub, iid: str) -> str:
    from labhub.models import Instance

    async with hub.hub.sessions() as session:
        return (await session.get(Instance, iid)).handle["output"]


async def log_of(caller, iid: str) -> str:
    return (await caller.http.get(f"/api/v1/instances/{iid}/log", params={"follow": "false"})).text


async def test_a_job_on_slurm_reports_follows_and_leaves_artifacts(hub, slurm_cluster):  # noqa: F811
    alice = await hub.user("alice")
    await make_folder(alice, "inputs", {"main.py": TRAIN, "data.txt": "hello world"})
    job = await submit(alice, "train-1", "inputs")
    chunks = []
    async with alice.http.stream("GET", f"/api/v1/instances/{job['id']}/log") as resp:  # followed from the start
        async with asyncio.timeout(40):
            async for chunk in resp.aiter_text():
                chunks.append(chunk)
    text = "".join(chunks)
    assert len(chunks) >= 2, chunks  # it came as it was written, not at the end in one piece
    assert text.index("epoch 1") < text.index("epoch 3") < text.index("done")

    done = await hub.wait_status(alice, job["id"], {"succeeded"}, timeout=30)
    assert done["exit_code"] == 0 and "finished successfully" in done["message"]
    assert done["artifacts_bytes"] == 7000 + len("HELLO WORLD")
    log = await log_of(alice, job["id"])
    assert log == text and log.rstrip().endswith("done")
    slurm_job = await _job_id(hub, job["id"])
    assert f"in job {slurm_job}" in log and "read 11 bytes" in log
    path, venv, _ = json.loads(log.split("ENV ", 1)[1].splitlines()[0])
    assert path == "/usr/local/bin:/usr/bin:/bin" and venv is None  # the system's, not the hub's venv
    uid = int(log.split(" as ", 1)[1].split()[0])
    if IS_ROOT:  # the owner's own account: its input folder was opened to it, its files are its own
        assert uid == pwd.getpwnam("labhub-alice").pw_uid
        assert os.stat(hub.hub.jobs.output(job["id"])).st_uid == uid
    assert (await alice.http.get(f"/api/v1/instances/{job['id']}")).json()["status"] == "succeeded"

    metrics = (await alice.http.get(f"/api/v1/instances/{job['id']}/metrics")).json()
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    listing = (await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts")).json()
    assert [(a["path"], a["size"]) for a in listing["items"]] == [("model.bin", 7000), ("sub/notes.txt", 11)]
    one = await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts/sub/notes.txt")
    assert one.content == b"HELLO WORLD"
    bundle = await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(bundle.content)) as tar:
        assert sorted(tar.getnames()) == ["train-1/model.bin", "train-1/sub/notes.txt"]
    assert slurm_cluster.squeue_state(slurm_job) in ("COMPLETED", "GONE")


async def test_a_failing_job_fails_with_its_exit_code_and_exception(hub):
    alice = await hub.user("alice")
    await make_folder(alice, "bad", {"main.py": FAIL})
    job = await submit(alice, "bad-1", "bad")
    done = await hub.wait_status(alice, job["id"], {"failed"}, timeout=30)
    first = done["message"].splitlines()[0]
    assert done["exit_code"] == 1
    assert first.startswith("exited with code 1") and first.endswith(": ValueError: model(idim) raised: bad layer")
    assert "Traceback (most recent call last)" in done["message"]
    assert "starting" in await log_of(alice, job["id"])


async def test_a_running_job_is_stopped(hub, slurm_cluster):  # noqa: F811
    alice = await hub.user("alice")
    await make_folder(alice, "slow", {"main.py": SLEEP})
    job = await submit(alice, "slow-1", "slow")
    await hub.wait_status(alice, job["id"], {"running"}, timeout=30)
    seen = ""
    async with alice.http.stream("GET", f"/api/v1/instances/{job['id']}/log") as resp, asyncio.timeout(20):
        async for chunk in resp.aiter_text():  # followed until it has really started
            seen += chunk
            if "started" in seen:
                break
    slurm_job = await _job_id(hub, job["id"])
    assert slurm_cluster.squeue_state(slurm_job) == "RUNNING"
    assert (await alice.http.delete(f"/api/v1/instances/{job['id']}")).status_code == 202
    stopped = await hub.wait_status(alice, job["id"], {"stopped"}, timeout=30)
    assert stopped["reason"] == "user"
    assert slurm_cluster.squeue_state(slurm_job) in ("CANCELLED", "COMPLETED", "GONE")


@pytest.mark.skipif(not IS_ROOT, reason="per-user accounts need root")
async def test_a_job_cannot_make_the_hub_read_for_it(hub, shared_tmp):
    """Its own log swapped for a link to a root-only file: nothing of it is shown.  Another user's
    job cannot read alice's input folder (opened to alice's account alone)."""
    secret = shared_tmp / "root-only"
    secret.write_text("the root-only secret\n")
    secret.chmod(0o600)
    alice = await hub.user("alice")
    bob = await hub.user("bob")
    await make_folder(alice, "evil", {"main.py": f"SECRET = {str(secret)!r}\n" + SWAP})
    await make_folder(alice, "inputs", {"main.py": "print('mine')", "data.txt": "alice's data"})
    target = hub.hub.folders.path(await user_id(hub, "alice"), "inputs") / "data.txt"
    await make_folder(bob, "snoop", {"main.py": f"print(open({str(target)!r}).read())"})
    evil = await submit(alice, "evil-1", "evil")
    mine = await submit(alice, "mine-1", "inputs")  # the folder is opened to alice's account ...
    theirs = await submit(bob, "snoop-1", "snoop")  # ... and to hers alone
    done = await hub.wait_status(alice, evil["id"], {"succeeded", "failed"}, timeout=30)
    assert await asyncio.to_thread(os.path.islink, await _output(hub, evil["id"]))  # the swap happened
    assert "root-only secret" not in done["message"]
    assert "root-only secret" not in await log_of(alice, evil["id"])
    assert (await hub.wait_status(alice, mine["id"], {"succeeded"}, timeout=30))["exit_code"] == 0
    snooped = await hub.wait_status(bob, theirs["id"], {"failed", "succeeded"}, timeout=30)
    assert snooped["status"] == "failed" and "PermissionError" in snooped["message"].splitlines()[0]
    assert "alice's data" not in await log_of(bob, theirs["id"])


async def test_the_mlaas4hep_training_runs_as_a_slurm_job(slurm_env, start_hub, sqlite_url, shared_tmp,  # noqa: F811
                                                          train_runtime, runtimes_root, root_files, tmp_path):  # noqa: F811
    """The seed's workflow on the cluster: the train runtime on the node's PATH, artifacts back."""
    hub, alice, job, done = await train_on_slurm(start_hub, sqlite_url, shared_tmp, runtimes_root, root_files,
                                                 tmp_path)
    log = (await alice.http.get(f"/api/v1/instances/{job['id']}/log", params={"follow": "false"})).text
    assert done["status"] == "succeeded", f"{done['message']}\n{log}"
    assert done["exit_code"] == 0 and "epoch 1/1" in log
    names = {a["path"] for a in (await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts")).json()["items"]}
    assert {"higgs.keras", "higgs.json"} <= names


async def train_on_slurm(start_hub, sqlite_url, shared_tmp, runtimes_root, root_files, tmp_path):  # noqa: ANN001, ANN201, F811
    """A hub on the cluster, alice, and her MLaaS4HEP training (one epoch) as a Slurm job, waited for:
    ``(hub, alice, job, job as it ended)``."""
    from tests.e2e.test_mlaas4hep import folder_tarball
    from tests.e2e.test_slurm import _free_port

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
    return hub, alice, job, await hub.wait_status(alice, job["id"], {"succeeded", "failed"}, timeout=240)
