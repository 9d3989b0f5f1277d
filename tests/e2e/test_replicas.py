"""Two real hub replicas (``labhub serve`` processes) on one real PostgreSQL.

They share the data directory and the database, nothing else: the route
table, the event streams, the credentials cache and the work in flight of each
come from the database and its notifications.  The instances are real
processes (JupyterLab, or small Python servers), killed replicas are killed
with SIGKILL, and every check of "exactly once" counts the processes the
kernel has, not what the hub says.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from tests.conftest import POSTGRES_ADMIN_URL
from tests.e2e.conftest import run_code
from tests.hubprocess import HubProcess, wait_status

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres]

LEASE_S = 2.0  # short leases: takeover within a few seconds, in tests
PASSWORD = "correct horse battery\n"  # noqa: S105 (a test account)

# Starts listening after 2 s (so a replica can be killed mid-launch) and ignores SIGTERM (so a stop
# takes the whole grace period: a replica can be killed mid-stop).
SLOW = ("import http.server, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "time.sleep(2)\n"
        "http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port=int(sys.argv[1]), "
        "bind='127.0.0.1')\n")
IDLE = "import time\ntime.sleep(3600)\n"


def _templates(root: Path) -> Path:
    site = root / "templates"
    site.mkdir()
    (site / "slow.yaml").write_text(
        "title: Slow\nready_path: ''\nstart_timeout: 60\n"
        f"command: {json.dumps(['/usr/bin/python3', '-c', SLOW])}\n"
        "listen:\n  port: ['{port}']\n")
    idle = json.dumps(["/usr/bin/python3", "-c", IDLE])
    (site / "idle.yaml").write_text(f"title: Idle\nready_path: null\ncommand: {idle}\n")
    return site


def _replicas(root: Path, database_url: str, **extra: str) -> tuple[HubProcess, HubProcess]:
    env = {"LABHUB_LEASE_SECONDS": str(LEASE_S), "LABHUB_TEMPLATES_DIR": str(_templates(root)), **extra}
    data = root / "data"
    return (HubProcess(data, database_url, {**env, "LABHUB_REPLICA_ID": "a"}, name="a"),
            HubProcess(data, database_url, {**env, "LABHUB_REPLICA_ID": "b"}, name="b"))


def processes_of(data: Path, instance_id: str) -> list[int]:
    """Live processes whose output goes to the instance's log: the kernel's count, not the hub's."""
    log = str(data / "instances" / instance_id / "output.log")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "fd" / "1") == log:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def _db(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    name = database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def _client(hub: HubProcess, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


async def _statuses(http: httpx.AsyncClient, iid: str) -> list[str]:
    return [e["status"] for e in (await http.get(f"/api/v1/instances/{iid}/events")).json()]


async def _sse_until(url: str, token: str, want: str, seen: list[dict]) -> None:
    """A browser-style EventSource on ``url``: collect status events until one is ``want``."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    timeout = httpx.Timeout(30, read=60)
    async with httpx.AsyncClient(timeout=timeout) as http, http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                seen.append({**event, "received": time.time()})
                if event.get("status") == want:
                    return


@pytest.mark.jupyter
async def test_launch_on_one_replica_use_and_watch_it_through_the_other(postgres_url, shared_tmp):
    a, b = _replicas(shared_tmp, postgres_url)
    await a.start()
    await b.start()
    try:
        a.cli("user", "add", "alice", "--password-stdin", stdin=PASSWORD)
        token = a.cli("token", "issue", "alice").strip()
        async with _client(a, token) as via_a, _client(b, token) as via_b:
            inst = (await via_a.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws1"})).json()
            # B's event stream, opened while A is still starting it, sees A's events as they happen
            seen: list[dict] = []
            watcher = asyncio.create_task(_sse_until(f"{b.url}/api/v1/instances/{inst['id']}/events", token,
                                                     "running", seen))
            await wait_status(via_a, inst["id"], "running")
            await asyncio.wait_for(watcher, 20)
            assert [e["status"] for e in seen][-1] == "running"
            assert "starting" in [e["status"] for e in seen]
            running = seen[-1]
            pushed_after = running["received"] - dt.datetime.fromisoformat(running["at"]).timestamp()
            print(f"B's stream got A's 'running' event {pushed_after:.2f} s after it was written")
            assert pushed_after < 5  # pushed by notification, not found by a 15 s keep-alive re-read

            # the workspace through B's proxy: B's route came from A's commit, by notification
            on_origin = {"Host": urlsplit(inst["url"]).netloc}
            for _ in range(100):
                if (await via_b.get("/api/status", headers=on_origin)).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            kernel = (await via_b.post("/api/kernels", json={"name": "python3"}, headers=on_origin)).json()
            ws = f"ws://{on_origin['Host']}/api/kernels/{kernel['id']}/channels"
            assert await run_code(ws, token, "6*7", connect=b.url) == "42"

            # stopped through B: A holds the lease, so A (told by notification) stops it
            pids = processes_of(shared_tmp / "data", inst["id"])
            assert len(pids) >= 1
            assert (await via_b.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
            await wait_status(via_b, inst["id"], "stopped", within=30)
            assert processes_of(shared_tmp / "data", inst["id"]) == []
            assert (await _statuses(via_a, inst["id"])).count("stopped") == 1
    finally:
        a.kill(signal.SIGTERM)
        b.kill(signal.SIGTERM)


async def test_replica_killed_mid_launch_and_mid_stop(postgres_url, shared_tmp):
    a, b = _replicas(shared_tmp, postgres_url, LABHUB_STOP_GRACE="6")
    data = shared_tmp / "data"
    await a.start()
    await b.start()
    try:
        a.cli("user", "add", "alice", "--password-stdin", stdin=PASSWORD)
        token = a.cli("token", "issue", "alice").strip()
        async with _client(a, token) as via_a, _client(b, token) as via_b:
            inst = (await via_a.post("/api/v1/instances", json={"template": "slow", "name": "s1"})).json()
            iid = inst["id"]
            await wait_status(via_b, iid, "starting")
            assert [r["claimed_by"] for r in await _db(postgres_url, "SELECT claimed_by FROM instances")] == ["a"]
            first = processes_of(data, iid)
            assert len(first) == 1  # A started it and is watching it come up ...
            a.kill(signal.SIGKILL)  # ... and dies
            killed = time.monotonic()
            await wait_status(via_b, iid, "running", within=30)
            took = time.monotonic() - killed
            print(f"takeover mid-launch: running through the survivor {took:.2f} s after SIGKILL "
                  f"(lease {LEASE_S:g} s)")
            assert took < LEASE_S + 8
            rows = await _db(postgres_url, "SELECT claimed_by FROM instances WHERE id = $1", iid)
            assert rows[0]["claimed_by"] == "b"
            assert processes_of(data, iid) == first  # adopted, not started again
            assert (await _statuses(via_b, iid)).count("starting") == 1

            await a.start()  # A is back; B holds the lease and keeps it
            assert (await via_a.delete(f"/api/v1/instances/{iid}")).status_code == 202
            await wait_status(via_a, iid, "stopping")
            await asyncio.sleep(0.5)  # B has sent SIGTERM, which the instance ignores for the grace period
            assert processes_of(data, iid) == first
            b.kill(signal.SIGKILL)  # B dies mid-stop
            killed = time.monotonic()
            body: dict = {}
            for _ in range(300):
                body = (await via_a.get(f"/api/v1/instances/{iid}")).json()
                if body["status"] == "stopped":
                    break
                await asyncio.sleep(0.1)
            assert body["status"] == "stopped", body
            print(f"takeover mid-stop: stopped by the survivor {time.monotonic() - killed:.2f} s after SIGKILL")
            assert processes_of(data, iid) == []
            statuses = await _statuses(via_a, iid)
            assert statuses.count("stopped") == 1 and statuses.count("running") == 1, statuses
    finally:
        a.kill(signal.SIGTERM)
        b.kill(signal.SIGTERM)


async def test_fifty_launches_over_two_replicas_start_each_instance_once(postgres_url, shared_tmp):
    a, b = _replicas(shared_tmp, postgres_url)
    data = shared_tmp / "data"
    await a.start()
    await b.start()
    try:
        a.cli("user", "add", "alice", "--password-stdin", stdin=PASSWORD)
        token = a.cli("token", "issue", "alice").strip()
        async with _client(a, token) as via_a, _client(b, token) as via_b:
            launches = [(via_a if n % 2 else via_b).post("/api/v1/instances", json={
                "template": "idle", "name": f"i{n}", "hours": 1}) for n in range(50)]
            answers = await asyncio.gather(*launches)
            assert [r.status_code for r in answers] == [201] * 50, [r.text for r in answers if r.status_code != 201]
            ids = [r.json()["id"] for r in answers]
            for iid in ids:
                await wait_status(via_a, iid, "running", within=120)
            counts = {iid: len(processes_of(data, iid)) for iid in ids}
            assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
            rows = await _db(postgres_url, "SELECT e.instance_id, count(*) AS n FROM events e "
                                           "WHERE e.status = 'starting' GROUP BY e.instance_id")
            assert sorted(r["n"] for r in rows) == [1] * 50
            owners = await _db(postgres_url, "SELECT claimed_by, count(*) AS n FROM instances GROUP BY claimed_by")
            print("instances per replica:", {r["claimed_by"]: r["n"] for r in owners})

            stops = await asyncio.gather(*[(via_b if n % 2 else via_a).delete(f"/api/v1/instances/{iid}")
                                           for n, iid in enumerate(ids)])
            assert {r.status_code for r in stops} == {202}
            for iid in ids:
                await wait_status(via_a, iid, "stopped", within=60)
            assert all(processes_of(data, iid) == [] for iid in ids)
    finally:
        a.kill(signal.SIGTERM)
        b.kill(signal.SIGTERM)


NGINX_EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "nginx-replicas.conf"


async def test_documented_nginx_balances_two_replicas_and_survives_one(postgres_url, shared_tmp):
    """docs/examples/nginx-replicas.conf, run as it is (ports changed) in front of two replicas."""
    from tests.hubprocess import free_port

    front = free_port()
    public = f"http://127.0.0.1:{front}"
    a, b = _replicas(shared_tmp, postgres_url, LABHUB_PUBLIC_URL=public, LABHUB_TRUSTED_PROXIES="127.0.0.1")
    conf = NGINX_EXAMPLE.read_text()
    assert "127.0.0.1:8001" in conf and "127.0.0.1:8002" in conf and "listen 8000;" in conf
    conf = conf.replace("127.0.0.1:8001", f"127.0.0.1:{a.port}").replace("127.0.0.1:8002", f"127.0.0.1:{b.port}") \
        .replace("listen 8000;", f"listen 127.0.0.1:{front};")
    prefix = shared_tmp / "nginx"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(
        "daemon off; worker_processes 1; error_log logs/error.log; pid logs/nginx.pid;\n"
        "events { worker_connections 256; }\n"
        "http { access_log logs/access.log; client_body_temp_path logs; proxy_temp_path logs;\n"
        + conf + "\n}\n")
    await a.start()
    await b.start()
    nginx = await asyncio.create_subprocess_exec("/usr/sbin/nginx", "-p", str(prefix), "-c", "nginx.conf")
    try:
        a.cli("user", "add", "alice", "--password-stdin", stdin=PASSWORD)
        token = a.cli("token", "issue", "alice").strip()
        async with httpx.AsyncClient(base_url=public, headers={"Authorization": f"Bearer {token}"},
                                     timeout=30) as http:
            for _ in range(100):
                try:
                    if (await http.get("/api/v1/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            inst = (await http.post("/api/v1/instances", json={"template": "slow", "name": "web"})).json()
            await wait_status(http, inst["id"], "running", within=60)
            assert inst["url"].startswith("http://web--alice.localhost:") and inst["url"].endswith(f":{front}/")
            on_origin = {"Host": urlsplit(inst["url"]).netloc}
            answers = [(await http.get("/", headers=on_origin)).status_code for _ in range(10)]
            assert answers == [200] * 10  # the instance's page, through nginx and either replica
            log = (prefix / "logs" / "access.log").read_text()
            assert log.count("\n") >= 10

            a.kill(signal.SIGKILL)  # one replica gone: nginx moves on to the other
            answers = [(await http.get("/", headers=on_origin)).status_code for _ in range(10)]
            assert answers == [200] * 10
            assert (await http.get(f"/api/v1/instances/{inst['id']}")).json()["status"] == "running"
            assert (await http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
            body: dict = {}
            for _ in range(300):  # b takes a's lease over, then stops it (the instance ignores SIGTERM)
                body = (await http.get(f"/api/v1/instances/{inst['id']}")).json()
                if body["status"] == "stopped":
                    break
                await asyncio.sleep(0.1)
            assert body["status"] == "stopped", body
    finally:
        nginx.terminate()
        await nginx.wait()
        a.kill(signal.SIGTERM)
        b.kill(signal.SIGTERM)
