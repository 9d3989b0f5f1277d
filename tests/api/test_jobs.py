"""Jobs on the real local backend: input folder in, status with exit code, log followed as it grows,
metrics, artifacts out (one by one and as a tar.gz), deleted with the job; and what another user
(or the job itself, as an attacker) can do about them."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import textwrap

import pytest

from tests.api.test_folders import targz

pytestmark = pytest.mark.asyncio

SCRIPT_TEMPLATE = textwrap.dedent("""\
    title: Python script
    kind: job
    input: optional
    command:
      - python3
      - -c
      - "import os, runpy, sys; runpy.run_path(os.path.join(os.environ.get('LABHUB_INPUT', '.'), sys.argv[1]), run_name='__main__')"
      - "{param:script}"
    params:
      - name: script
        default: main.py
    hours: {default: 1, max: 2}
""")

TRAIN = textwrap.dedent("""\
    import json, os, sys, time
    out, metrics = os.environ["LABHUB_OUTPUT"], os.environ["LABHUB_METRICS"]
    data = open(os.path.join(os.environ["LABHUB_INPUT"], "data.txt")).read()
    print("read", len(data), "bytes", flush=True)
    for epoch in range(1, 4):
        with open(metrics, "a") as fh:
            fh.write(json.dumps({"epoch": epoch, "loss": 1.0 / epoch, "accuracy": 0.5 + epoch / 10}) + "\\n")
        print(f"epoch {epoch} loss={1.0 / epoch:.3f}", flush=True)
        time.sleep(float(os.environ.get("PAUSE", "0")))
    os.makedirs(os.path.join(out, "sub"), exist_ok=True)
    open(os.path.join(out, "model.bin"), "wb").write(b"weights" * 1000)
    open(os.path.join(out, "sub", "notes.txt"), "w").write(data.upper())
    print("done", flush=True)
""")

ATTACK = textwrap.dedent("""\
    import os
    out = os.environ["LABHUB_OUTPUT"]
    os.symlink("/etc/shadow", os.path.join(out, "shadow"))
    os.symlink("/", os.path.join(out, "root"))
    os.mkfifo(os.path.join(out, "fifo"))
    open(os.path.join(out, "ok.txt"), "w").write("fine")
    try:
        os.link(SECRET, os.path.join(out, "secret"))
    except OSError as exc:
        print("link refused:", exc, flush=True)
""")

FAIL = textwrap.dedent("""\
    print("starting", flush=True)
    raise ValueError("model(idim) raised: bad layer")
""")


@pytest.fixture
async def hub(start_hub, sqlite_url, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "script.yaml").write_text(SCRIPT_TEMPLATE)
    return await start_hub(sqlite_url, templates_dir=templates)


async def user_id(hub, name: str) -> int:
    from labhub.services import users

    async with hub.hub.sessions() as session:
        return (await users.get_user(session, name=name)).id


async def make_folder(caller, name: str, files: dict[str, str]) -> dict:
    resp = await caller.http.post(f"/api/v1/folders/{name}/upload", content=targz(files))
    assert resp.status_code == 201, resp.text
    return resp.json()


async def submit(caller, name: str, *, folder: str | None, script: str = "main.py", **extra) -> dict:
    body = {"template": "script", "name": name, "params": {"script": script}, **extra}
    if folder is not None:
        body["input"] = folder
    resp = await caller.http.post("/api/v1/instances", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_a_job_reads_its_folder_reports_metrics_and_leaves_artifacts(hub):
    alice = await hub.user("alice")
    await make_folder(alice, "inputs", {"main.py": TRAIN, "data.txt": "hello world"})
    job = await submit(alice, "train-1", folder="inputs")
    assert job["kind"] == "job" and job["input"] == "inputs"
    done = await hub.wait_status(alice, job["id"], {"succeeded"})
    assert done["exit_code"] == 0 and "finished successfully" in done["message"]
    assert done["artifacts_bytes"] == 7000 + len("HELLO WORLD")

    log = (await alice.http.get(f"/api/v1/instances/{job['id']}/log", params={"follow": "false"})).text
    assert "read 11 bytes" in log and "epoch 3 loss=0.333" in log and log.rstrip().endswith("done")
    metrics = (await alice.http.get(f"/api/v1/instances/{job['id']}/metrics")).json()
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and metrics[2]["loss"] == pytest.approx(1 / 3)

    listing = (await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts")).json()
    assert [(a["path"], a["size"]) for a in listing["items"]] == [("model.bin", 7000), ("sub/notes.txt", 11)]
    assert listing["expires_at"] is not None
    one = await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts/sub/notes.txt")
    assert one.content == b"HELLO WORLD" and "attachment" in one.headers["content-disposition"]
    bundle = await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(bundle.content)) as tar:
        assert sorted(tar.getnames()) == ["train-1/model.bin", "train-1/sub/notes.txt"]
        assert tar.extractfile("train-1/model.bin").read() == b"weights" * 1000

    # deleted with the job
    home = hub.hub.jobs.home(job["id"])
    assert home.exists()
    assert (await alice.http.delete(f"/api/v1/instances/{job['id']}/record")).status_code == 204
    assert not home.exists()
    assert (await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts")).status_code == 404


async def test_a_failed_job_says_why_at_the_top_of_its_reason(hub):
    alice = await hub.user("alice")
    await make_folder(alice, "bad", {"main.py": FAIL})
    job = await submit(alice, "bad-1", folder="bad")
    done = await hub.wait_status(alice, job["id"], {"failed"})
    first = done["message"].splitlines()[0]
    assert done["exit_code"] == 1
    assert first == "exited with code 1: ValueError: model(idim) raised: bad layer"
    assert "Traceback (most recent call last)" in done["message"]


async def test_the_log_is_followed_while_the_job_runs(hub):
    alice = await hub.user("alice")
    slow = TRAIN.replace('float(os.environ.get("PAUSE", "0"))', "0.4")
    await make_folder(alice, "slow", {"main.py": slow, "data.txt": "x"})
    job = await submit(alice, "slow-1", folder="slow")
    chunks = []
    async with alice.http.stream("GET", f"/api/v1/instances/{job['id']}/log") as resp:
        assert resp.headers["content-type"].startswith("text/plain")
        async with asyncio.timeout(30):
            async for chunk in resp.aiter_text():
                chunks.append(chunk)
    text = "".join(chunks)
    assert len(chunks) >= 2  # it came as it was written, not at the end in one piece
    assert text.index("epoch 1") < text.index("epoch 3") < text.index("done")
    assert (await alice.http.get(f"/api/v1/instances/{job['id']}")).json()["status"] == "succeeded"


async def test_a_job_cannot_make_the_hub_serve_what_it_may_not_read(hub):
    """The job's account controls its output directory: links to the hub's or the system's files, a
    FIFO to hang the hub, a hard link: none is served, listed or counted."""
    alice = await hub.user("alice")
    secret = hub.hub.settings.data_dir / "secret.key"
    await make_folder(alice, "evil", {"main.py": f"SECRET = {str(secret)!r}\n" + ATTACK})
    job = await submit(alice, "evil-1", folder="evil")
    done = await hub.wait_status(alice, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["message"]
    listing = (await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts")).json()
    assert [a["path"] for a in listing["items"]] == ["ok.txt"]
    for path in ("shadow", "root/etc/shadow", "fifo", "secret", "../../secret.key", "%2e%2e/%2e%2e/secret.key"):
        resp = await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts/{path}")
        assert resp.status_code == 404, path
    async with asyncio.timeout(20):
        bundle = await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(bundle.content)) as tar:
        assert tar.getnames() == ["evil-1/ok.txt"]
    assert secret.read_bytes()  # untouched
    assert done["artifacts_bytes"] == 4


async def test_bob_reaches_none_of_alices_jobs_or_folders(hub):
    alice = await hub.user("alice")
    bob = await hub.user("bob")
    await make_folder(alice, "inputs", {"main.py": TRAIN, "data.txt": "secret data"})
    job = await submit(alice, "train-1", folder="inputs")
    await hub.wait_status(alice, job["id"], {"succeeded"})
    iid = job["id"]
    for path in (f"/api/v1/instances/{iid}/artifacts", f"/api/v1/instances/{iid}/artifacts/model.bin",
                 f"/api/v1/instances/{iid}/artifacts.tar.gz", f"/api/v1/instances/{iid}/metrics",
                 f"/api/v1/instances/{iid}/log"):
        assert (await bob.http.get(path)).status_code == 403, path
    assert (await bob.http.delete(f"/api/v1/instances/{iid}/record")).status_code == 403
    # folders are per user: bob's view has no "inputs", and he cannot submit with alice's
    assert (await bob.http.get("/api/v1/folders")).json() == []
    assert (await bob.http.get("/api/v1/folders/inputs")).status_code == 404
    assert (await bob.http.get("/api/v1/folders/inputs/files/data.txt")).status_code == 404
    assert (await bob.http.delete("/api/v1/folders/inputs")).status_code == 404
    resp = await bob.http.post("/api/v1/instances", json={"template": "script", "name": "steal", "input": "inputs"})
    assert resp.status_code == 422 and "no folder named" in resp.json()["fields"]["input"]
    assert (await alice.http.get("/api/v1/folders/inputs")).json()["files"] == 2


async def test_bob_cannot_read_alices_folder_from_his_own_job(hub):
    """Jobs run as per-user accounts: alice's folder is readable by alice's account alone."""
    if os.geteuid() != 0:
        pytest.skip("per-user accounts need root")
    alice = await hub.user("alice")
    bob = await hub.user("bob")
    await make_folder(alice, "inputs", {"main.py": TRAIN, "data.txt": "alice's secret"})
    job = await submit(alice, "train-1", folder="inputs")
    await hub.wait_status(alice, job["id"], {"succeeded"})
    target = hub.hub.folders.path(await user_id(hub, "alice"), "inputs") / "data.txt"
    snoop = f"print(open({str(target)!r}).read())"
    await make_folder(bob, "mine", {"main.py": snoop})
    theirs = await submit(bob, "snoop-1", folder="mine")
    done = await hub.wait_status(bob, theirs["id"], {"failed", "succeeded"})
    assert done["status"] == "failed" and "PermissionError" in done["message"].splitlines()[0]
    assert "alice's secret" not in (await bob.http.get(f"/api/v1/instances/{theirs['id']}/log",
                                                        params={"follow": "false"})).text


async def test_input_is_checked_against_the_template_and_the_callers_folders(hub):
    alice = await hub.user("alice")
    resp = await alice.http.post("/api/v1/instances", json={"template": "script", "name": "x", "input": "nope"})
    assert resp.status_code == 422 and resp.json()["fields"] == {"input": "you have no folder named 'nope'"}
    resp = await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "x", "input": "nope"})
    assert resp.status_code == 422 and resp.json()["fields"]["input"] == "this template reads no input folder"



async def test_a_job_whose_runtime_cannot_be_had_fails_saying_so(start_hub, sqlite_url, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "ghost.yaml").write_text(SCRIPT_TEMPLATE.replace("title: Python script", "title: Ghost\nruntime: ghost"))
    hub = await start_hub(sqlite_url, templates_dir=templates)
    alice = await hub.user("alice")
    job = (await alice.http.post("/api/v1/instances", json={"template": "ghost", "name": "g"})).json()
    done = await hub.wait_status(alice, job["id"], {"failed"})
    assert done["reason"] == "runtime"
    assert done["message"].startswith("runtime 'ghost' unavailable: no runtime named 'ghost' (known: ")
    assert "train" in done["message"].splitlines()[0]


async def test_artifacts_count_against_storage_and_expire_after_the_retention(start_hub, sqlite_url, tmp_path):
    import datetime as dt

    from labhub.models import utcnow
    from labhub.settings import StorageSettings

    class Clock:
        offset = dt.timedelta()

        def __call__(self) -> dt.datetime:
            return utcnow() + self.offset

    clock = Clock()
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "script.yaml").write_text(SCRIPT_TEMPLATE)
    hub = await start_hub(sqlite_url, templates_dir=templates, clock=clock,
                          storage=StorageSettings(max_user_bytes=12_000, artifact_days=2))
    alice = await hub.user("alice")
    await make_folder(alice, "inputs", {"main.py": TRAIN, "data.txt": "x" * 100})
    job = await submit(alice, "train-1", folder="inputs")
    done = await hub.wait_status(alice, job["id"], {"succeeded"})
    assert done["artifacts_bytes"] == 7100
    # 7,100 bytes of artifacts + the folder's ~1,000: another 5,000 would pass alice's 12,000
    over = await alice.http.post("/api/v1/folders/more/upload", params={"filename": "x"}, content=b"1" * 5000)
    assert over.status_code == 413

    clock.offset = dt.timedelta(days=3)  # past the retention: the next housekeeping pass deletes them
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while (await alice.http.get(f"/api/v1/instances/{job['id']}")).json()["artifacts_bytes"] is not None:
        assert loop.time() < deadline, "the artifacts did not expire"
        await asyncio.sleep(0.2)
    assert (await alice.http.get(f"/api/v1/instances/{job['id']}/artifacts")).json()["items"] == []
    assert not hub.hub.jobs.home(job["id"]).exists()
    again = await alice.http.post("/api/v1/folders/more/upload", params={"filename": "x"}, content=b"1" * 5000)
    assert again.status_code == 201


async def test_the_log_as_server_sent_events_resumes_at_its_offset(hub):
    alice = await hub.user("alice")
    await make_folder(alice, "inputs", {"main.py": TRAIN.replace('print("done"', 'print("d\\u00f6ne"'),
                                        "data.txt": "x"})
    job = await submit(alice, "train-1", folder="inputs")
    await hub.wait_status(alice, job["id"], {"succeeded"})

    async def read(headers: dict[str, str]) -> list[tuple[str, str, str]]:
        events, current = [], {"id": "", "event": "", "data": []}
        async with alice.http.stream("GET", f"/api/v1/instances/{job['id']}/log",
                                     headers={"Accept": "text/event-stream", **headers}) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            async for line in resp.aiter_lines():
                if not line:
                    events.append((current["id"], current["event"], "\n".join(current["data"])))
                    current = {"id": "", "event": "", "data": []}
                elif ":" in line:
                    key, _, value = line.partition(": ")
                    current[key].append(value) if key == "data" else current.__setitem__(key, value)
        return events

    events = await read({})
    assert events[-1][1] == "end"
    text = "".join(data for _, kind, data in events if kind == "log")
    assert "epoch 3" in text and "d\u00f6ne" in text
    first_id = int(events[0][0])
    again = await read({"Last-Event-ID": str(first_id - 10)})  # resume 10 bytes before the first event's end
    resumed = "".join(data for _, kind, data in again if kind == "log")
    assert resumed == text.encode()[first_id - 10:].decode()
