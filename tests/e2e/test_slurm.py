"""LabHub on a real Slurm cluster, configured by settings alone, used through the API and the proxy.

The cluster is the session's single-node Slurm (``tests/slurmcluster.py``).
The hub finds it through ``LABHUB_BACKENDS`` and ``LABHUB_SLURM__*``, exactly
as a site would, and jobs call home to the hub's bind address.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.backends.conftest import slurm_cluster  # noqa: F401 - the session's cluster fixture
from tests.e2e.conftest import run_code
from tests.hubprocess import HubProcess, wait_status

pytestmark = [pytest.mark.asyncio, pytest.mark.slurm]
IS_ROOT = os.geteuid() == 0
SERVE = """\
import http.server, os, sys
print("CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "-"), flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from " + os.environ.get("SLURM_JOB_ID", "?")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[1])), H).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _templates(root: Path) -> Path:
    """A site template: a tiny web server that prints the GPUs it sees, ready at once."""
    site = root / "templates"
    site.mkdir(exist_ok=True)
    python = "/usr/bin/python3" if IS_ROOT else sys.executable
    (site / "web.yaml").write_text(yaml.safe_dump({
        "title": "Tiny web server", "kind": "workspace", "ready_path": "", "start_timeout": 60,
        "command": [python, "-c", SERVE, "{port}", "{ip}"],
    }))
    return site


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch, shared_tmp: Path) -> dict[str, str]:  # noqa: F811
    """Settings, as environment variables, that point a hub at the test cluster."""
    env = {
        "LABHUB_BACKENDS": "local,slurm",
        "LABHUB_SLURM__CONF": str(slurm_cluster.conf),
        "LABHUB_SLURM__MAX_GPUS": str(slurm_cluster.gpus),
        "LABHUB_SLURM__POLL_INTERVAL": "0.2",
        "LABHUB_SLURM__KILL_WAIT": "20",
        "LABHUB_TEMPLATES_DIR": str(_templates(shared_tmp)),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


async def _slurm_hub(start_hub, sqlite_url: str, shared_tmp: Path):
    return await start_hub(sqlite_url, data_dir=shared_tmp / "data", bind=f"127.0.0.1:{_free_port()}")


async def _launch(hub, user, template: str, name: str, **extra) -> dict:
    resp = await user.http.post("/api/v1/instances", json={"template": template, "name": name,
                                                           "backend": "slurm", **extra})
    assert resp.status_code == 201, resp.text
    return resp.json()


async def _job_id(hub, iid: str) -> str:
    from labhub.models import Instance

    async with hub.hub.sessions() as session:
        return (await session.get(Instance, iid)).handle["job_id"]


@pytest.mark.jupyter
async def test_jupyterlab_on_slurm_through_the_proxy(slurm_env, start_hub, sqlite_url, shared_tmp, slurm_cluster):  # noqa: F811
    hub = await _slurm_hub(start_hub, sqlite_url, shared_tmp)
    alice = await hub.user("alice")
    inst = await _launch(hub, alice, "jupyterlab", "lab1", size="small")
    assert inst["backend"] == "slurm"
    await hub.wait_status(alice, inst["id"], {"running"}, timeout=90)

    lab = hub.instance_client(alice, inst)
    api = await lab.get("/api")
    assert api.status_code == 200 and "version" in api.json()
    kernel = await lab.post("/api/kernels", json={"name": "python3"})
    assert kernel.status_code == 201, kernel.text
    ws_url = inst["url"].replace("http://", "ws://") + f"api/kernels/{kernel.json()['id']}/channels"
    assert await run_code(ws_url, alice.token, "import os; int(os.environ['SLURM_JOB_ID'])", connect=hub.url) == \
           await _job_id(hub, inst["id"])

    job = await _job_id(hub, inst["id"])
    user, state = slurm_cluster.run("squeue", "-h", "-j", job, "-o", "%u|%T").stdout.strip().split("|")
    assert state == "RUNNING" and (user == "labhub-alice" or not IS_ROOT)  # the owner's own account
    events = (await alice.http.get(f"/api/v1/instances/{inst['id']}/events")).json()
    assert "called_home" in [e["reason"] for e in events]
    assert any(f"job id {job}" in e["message"] for e in events)

    assert (await alice.http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
    await hub.wait_status(alice, inst["id"], {"stopped"}, timeout=60)
    assert slurm_cluster.squeue_state(job) in ("CANCELLED", "COMPLETED", "GONE")
    logs = await alice.http.get(f"/api/v1/instances/{inst['id']}/logs")
    assert "Jupyter Server" in logs.text and "labhub: listening on 127.0.0.1:" in logs.text


async def test_a_gpu_workspace_sees_exactly_one_device(slurm_env, start_hub, sqlite_url, shared_tmp):
    hub = await _slurm_hub(start_hub, sqlite_url, shared_tmp)
    alice = await hub.user("alice")
    inst = await _launch(hub, alice, "web", "gpu1", size="gpu")
    await hub.wait_status(alice, inst["id"], {"running"}, timeout=60)
    resp = await hub.instance_client(alice, inst).get("/")
    assert resp.status_code == 200 and resp.text == f"hello from {await _job_id(hub, inst['id'])}"
    logs = (await alice.http.get(f"/api/v1/instances/{inst['id']}/logs")).text
    devices = logs.split("CUDA_VISIBLE_DEVICES=", 1)[1].split()[0]
    assert devices == "0", logs  # one device, the one Slurm assigned
    on_local = await alice.http.post("/api/v1/instances", json={"template": "web", "name": "gpu2", "size": "gpu",
                                                                "backend": "local"})
    assert on_local.status_code == 422 and "GPU" in on_local.json()["fields"]["size"]


async def test_scancel_from_outside_fails_the_instance_with_slurms_reason(
        slurm_env, start_hub, sqlite_url, shared_tmp, slurm_cluster):  # noqa: F811
    hub = await _slurm_hub(start_hub, sqlite_url, shared_tmp)
    alice = await hub.user("alice")
    inst = await _launch(hub, alice, "web", "web1")
    await hub.wait_status(alice, inst["id"], {"running"}, timeout=60)
    job = await _job_id(hub, inst["id"])
    slurm_cluster.run("scancel", job)
    failed = await hub.wait_status(alice, inst["id"], {"failed"}, timeout=30)
    assert failed["reason"] == "CANCELLED"
    assert "Slurm says CANCELLED" in failed["message"] and f"job {job}" in failed["message"]
    assert "CANCELLED AT" in failed["message"]  # the tail of the job's output file
    assert (await hub.instance_client(alice, inst).get("/")).status_code != 200  # the route is gone


async def test_controller_outage_makes_instances_unknown_and_they_come_back(
        slurm_env, start_hub, sqlite_url, shared_tmp, slurm_cluster):  # noqa: F811
    hub = await _slurm_hub(start_hub, sqlite_url, shared_tmp)
    alice = await hub.user("alice")
    inst = await _launch(hub, alice, "web", "web1")
    await hub.wait_status(alice, inst["id"], {"running"}, timeout=60)
    slurm_cluster.stop_controller()
    try:
        unknown = await hub.wait_status(alice, inst["id"], {"unknown"}, timeout=30)
        assert "slurm backend unreachable" in unknown["message"]
        resp = await hub.instance_client(alice, inst).get("/")  # not killed, not forgotten: still served
        assert resp.status_code == 200 and resp.text.startswith("hello from")
    finally:
        slurm_cluster.start_controller()
    back = await hub.wait_status(alice, inst["id"], {"running"}, timeout=30)
    assert back["reason"] == "recovered"
    assert (await hub.instance_client(alice, inst).get("/")).text == f"hello from {await _job_id(hub, inst['id'])}"
    assert (await alice.http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
    await hub.wait_status(alice, inst["id"], {"stopped"}, timeout=60)


async def test_a_restarted_hub_readopts_slurm_instances(slurm_env, sqlite_url, shared_tmp, slurm_cluster):  # noqa: F811
    hub = HubProcess(shared_tmp / "data", sqlite_url, slurm_env)
    await hub.start()
    try:
        hub.cli("user", "add", "alice", "--password-stdin", stdin="correct horse battery\n")
        token = hub.cli("token", "issue", "alice").strip()
        async with httpx.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {token}"},
                                     timeout=30) as http:
            resp = await http.post("/api/v1/instances", json={"template": "web", "name": "web1", "backend": "slurm"})
            inst = resp.json()
            running = await wait_status(http, inst["id"], "running")
            on_origin = {"Host": urlsplit(inst["url"]).netloc}
            first = (await http.get("/", headers=on_origin)).text
            assert first.startswith("hello from ")
            job = first.removeprefix("hello from ")

            hub.kill(signal.SIGKILL)
            assert slurm_cluster.squeue_state(job) == "RUNNING"  # the job outlived the hub
            await hub.start()
            again = await wait_status(http, inst["id"], "running", within=15)
            assert (await http.get("/", headers=on_origin)).text == first  # same job, through the new proxy
            assert again["started_at"] == running["started_at"]
            events = (await http.get(f"/api/v1/instances/{inst['id']}/events")).json()
            assert [e["reason"] for e in events].count("submitted") == 1  # never submitted twice
            jobs = slurm_cluster.run("squeue", "-h", "-o", "%j").stdout.split()
            assert jobs.count(f"labhub-{inst['id']}") == 1

            assert (await http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
            await wait_status(http, inst["id"], "stopped")
            assert slurm_cluster.squeue_state(job) in ("CANCELLED", "GONE")
    finally:
        hub.kill(signal.SIGTERM)
