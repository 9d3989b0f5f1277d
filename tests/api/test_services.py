"""Services through the proxy: who may call them (tokens, the ``infer`` scope, public services and
their rate limit), and scaling to zero (an idle service sleeps; the next request wakes it).

The service here is a small stdlib HTTP server on the instance's Unix socket that answers every
request with what it received, so each test sees exactly what reached the upstream.  The real
serving runtime is exercised in tests/e2e/test_services.py and tests/runtimes/.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select

from labhub.models import Instance, User
from labhub.services import credentials
from labhub.settings import ServicesSettings
from tests.conftest import OffsetClock

pytestmark = pytest.mark.asyncio

ECHO = textwrap.dedent("""\
    import http.server, json, os, socketserver, sys, time
    if os.path.exists("slow-start"):
        time.sleep(float(open("slow-start").read()))
    class Echo(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def answer(self):
            size = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(size).decode()
            data = json.dumps({"method": self.command, "path": self.path, "body": body, "pid": os.getpid(),
                               "authorization": self.headers.get("authorization")}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        do_GET = do_POST = do_PUT = do_DELETE = answer
        def log_message(self, *args):
            pass
    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
        def get_request(self):
            return self.socket.accept()[0], ("local", 0)
    Server(sys.argv[1], Echo).serve_forever()
""")

TEMPLATE = {
    "title": "Echo service",
    "kind": "service",
    "command": ["python3", "-c", ECHO],
    "listen": {"socket": ["{socket}"]},
    "ready_path": "v2/health/ready",
    "service": {"min_replicas": 1, "idle_s": 30, "max_replicas": 2},
}
INFER = "/v2/models/echo/infer"


@pytest.fixture
def clock():
    return OffsetClock()


@pytest.fixture
async def hub(start_hub, sqlite_url, tmp_path: Path, clock):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "echo.yaml").write_text(json.dumps(TEMPLATE))  # JSON is YAML
    return await start_hub(sqlite_url, templates_dir=templates, clock=clock,
                           services=ServicesSettings(public_rate=0.2, public_burst=3, wake_timeout_s=30))


async def launch(hub, caller, name: str = "echo", **extra) -> dict:
    answer = await caller.http.post("/api/v1/instances", json={"template": "echo", "name": name, **extra})
    assert answer.status_code == 201, answer.text
    return await hub.wait_status(caller, answer.json()["id"], {"running"})


async def token(hub, name: str, scopes: list[str]) -> str:
    async with hub.hub.tx() as session:
        user = (await session.execute(select(User).where(User.name == name))).scalar_one()
        _, secret = await credentials.issue_token(session, user=user, note="scoped", scopes=scopes)
    return secret


async def test_who_may_call_a_service(hub):
    alice, bob = await hub.user("alice"), await hub.user("bob")
    admin = await hub.user("root", admin=True)
    svc = await launch(hub, alice)
    assert svc["public"] is False and svc["min_replicas"] == 1
    anonymous = hub.instance_client(None, svc, headers={"Accept": "application/json"})
    infer_token = await token(hub, "alice", ["infer"])
    infer_only = hub.instance_client(None, svc, headers={"Authorization": f"Bearer {infer_token}"})
    reader = hub.instance_client(None, svc, headers={"Authorization": f"Bearer {await token(hub, 'alice', ['read'])}"})
    owner, other = hub.instance_client(alice, svc), hub.instance_client(bob, svc)

    assert (await anonymous.post(INFER, json={})).status_code == 401
    assert (await reader.post(INFER, json={})).status_code == 403  # a token, but no scope that calls services
    assert (await other.post(INFER, json={})).status_code == 403  # someone else's service
    called = await infer_only.post(INFER, json={"inputs": []})
    assert called.status_code == 200, called.text
    seen = called.json()
    assert seen["path"] == INFER and seen["body"] == '{"inputs":[]}'
    assert seen["authorization"] == f"token {hub.hub.instance_token(svc['id'])}"  # never the caller's token
    for method, path in (("GET", "/v2/models/echo"), ("POST", "/v1/models/echo:predict"), ("GET", "/models"),
                         ("POST", "/json")):
        assert (await infer_only.request(method, path)).status_code == 200, (method, path)
    # the owner's business, not a script's that may only infer
    for method, path in (("POST", "/upload"), ("DELETE", "/delete"), ("PUT", "/models/echo/default"),
                         ("GET", "/metrics"), ("POST", "/v2/repository/models/echo/load"), ("GET", "/v2/%2e%2e/x"),
                         ("POST", "/models")):
        assert (await infer_only.request(method, path)).status_code == 403, (method, path)
        assert (await owner.request(method, path)).status_code == 200, (method, path)

    # public: anyone may infer, without a token, within the rate limit; nothing else opens
    made = await alice.http.patch(f"/api/v1/instances/{svc['id']}", json={"public": True})
    assert made.status_code == 200 and made.json()["public"] is True
    assert (await bob.http.patch(f"/api/v1/instances/{svc['id']}", json={"public": False})).status_code == 403
    assert (await other.post(INFER, json={})).status_code == 200  # bob, as anyone
    assert (await anonymous.post("/upload")).status_code == 401
    assert (await other.post("/upload")).status_code == 403
    answers = [(await anonymous.post(INFER, json={})) for _ in range(3)]
    # bob's call and these come from one address: the burst of 3 is spent by the third
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert (await owner.post(INFER, json={})).status_code == 200  # the owner is never limited

    # admins may make it private again; it is recorded
    assert (await admin.http.patch(f"/api/v1/instances/{svc['id']}", json={"public": False})).status_code == 200
    assert (await anonymous.post(INFER, json={})).status_code == 401
    events = (await alice.http.get(f"/api/v1/instances/{svc['id']}/events")).json()
    changes = [e["message"] for e in events if e["reason"] == "changed"]
    assert changes[0].startswith("made public") and changes[1] == "made private: callers need a token (by admin root)"
    audit = (await admin.http.get("/api/v1/audit")).json()
    assert any(e["action"] == "service.change" and e["target"] == "alice/echo" for e in audit["events"])


async def test_infer_tokens_open_no_workspace_and_no_api(hub, tmp_path):
    alice = await hub.user("alice")
    secret = await token(hub, "alice", ["infer"])
    api = hub.client(headers={"Authorization": f"Bearer {secret}"})
    assert (await api.get("/api/v1/instances")).status_code == 403
    assert (await api.post("/api/v1/instances", json={"template": "echo", "name": "x"})).status_code == 403
    refused = await alice.http.post("/api/v1/instances", json={"template": "echo", "name": "x", "min_replicas": 2,
                                                               "replicas": 3})
    assert refused.status_code == 422 and set(refused.json()["fields"]) == {"min_replicas", "replicas"}
    assert refused.json()["fields"]["replicas"] == "must be 1 to 2"


async def test_an_idle_service_sleeps_and_the_next_request_wakes_it(hub, clock):
    alice = await hub.user("alice")
    svc = await launch(hub, alice, min_replicas=0)
    assert svc["min_replicas"] == 0
    owner = hub.instance_client(alice, svc)
    first = (await owner.post(INFER, json={})).json()["pid"]

    clock.offset = dt.timedelta(seconds=60)  # past idle_s (30): the next pass puts it to sleep
    slept = await hub.wait_status(alice, svc["id"], {"sleeping"}, timeout=30)
    assert slept["reason"] == "scale_to_zero"
    status = (await alice.http.get(f"/api/v1/instances/{svc['id']}/service")).json()
    assert status["status"] == "sleeping" and status["models"] is None and status["metrics"] is None
    async with hub.hub.sessions() as session:
        row = await session.get(Instance, svc["id"])
        assert row.handle is None and row.upstream is None  # no process left

    woken = await owner.post(INFER, json={"n": 1})  # waits for the start, then is answered
    assert woken.status_code == 200, woken.text
    assert woken.json()["pid"] != first and woken.json()["body"] == '{"n":1}'
    again = (await alice.http.get(f"/api/v1/instances/{svc['id']}")).json()
    assert again["status"] == "running"
    status = (await alice.http.get(f"/api/v1/instances/{svc['id']}/service")).json()
    # the echo server is not labhub_serve: it has no model list and no Prometheus counters
    assert status["status"] == "running" and status["models"] is None and status["metrics"]["models"] == {}
    reasons = [e["reason"] for e in (await alice.http.get(f"/api/v1/instances/{svc['id']}/events")).json()]
    assert reasons.index("woken") > reasons.index("scale_to_zero") and reasons[-1] == "ready", reasons

    # it may no longer sleep: it stays up however long it idles
    assert (await alice.http.patch(f"/api/v1/instances/{svc['id']}", json={"min_replicas": 1})).status_code == 200
    clock.offset = dt.timedelta(seconds=200)
    await asyncio.sleep(0.5)  # a few reconcile passes (0.2 s each) with the clock past idle_s
    assert (await alice.http.get(f"/api/v1/instances/{svc['id']}")).json()["status"] == "running"


async def test_a_wake_that_takes_too_long_is_a_503_with_retry_after(start_hub, sqlite_url, tmp_path, clock):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "echo.yaml").write_text(json.dumps(TEMPLATE))  # JSON is YAML
    hub = await start_hub(sqlite_url, templates_dir=templates, clock=clock,
                          services=ServicesSettings(wake_timeout_s=0.5, wake_retry_after_s=7))
    alice = await hub.user("alice")
    svc = await launch(hub, alice, min_replicas=0)
    clock.offset = dt.timedelta(seconds=60)
    await hub.wait_status(alice, svc["id"], {"sleeping"}, timeout=30)
    home = hub.hub.home_for("alice")
    (home / "slow-start").write_text("3")  # its next start takes 3 s, past the 0.5 s a request may wait
    (home / "slow-start").chmod(0o644)
    owner = hub.instance_client(alice, svc, headers={"Accept": "application/json"})
    refused = await owner.post(INFER, json={})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
    await hub.wait_status(alice, svc["id"], {"running"}, timeout=30)  # it went on starting
    assert (await owner.post(INFER, json={})).status_code == 200

    # a sleeping service is stopped like any other (nothing to terminate)
    clock.offset = dt.timedelta(seconds=200)
    await hub.wait_status(alice, svc["id"], {"sleeping"}, timeout=30)
    assert (await alice.http.delete(f"/api/v1/instances/{svc['id']}")).status_code == 202
    assert (await hub.wait_status(alice, svc["id"], {"stopped"}))["reason"] == "user"
