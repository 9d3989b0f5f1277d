"""Another account's process takes the port (or socket) meant for bob's starting instance.

The hub must start bob's instance on a listener proven to be its own, or fail
it with a clear reason; the squatter never receives bob's instance token (the
readiness probe's ``Authorization``) nor any of bob's traffic.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from labhub.models import Instance

pytestmark = [pytest.mark.asyncio, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (other accounts)")]

# Binds its port only after two seconds: the window a squatter reading /proc/*/cmdline gets.
SLOW_SERVER = (
    "import sys, time, http.server\n"
    "time.sleep(float(sys.argv[2]))\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
)
# Logs every request line and header it receives to stdout.
SQUATTER = (
    "import sys, http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        print(self.requestline, dict(self.headers), flush=True)\n"
    "        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers(); self.wfile.write(b'ok')\n"
    "s = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H)\n"
    "print('listening', flush=True)\n"
    "s.serve_forever()\n"
)


def _templates(tmp: Path, delay: float) -> Path:
    site = tmp / "templates"
    site.mkdir(exist_ok=True)
    command = json.dumps(["/usr/bin/python3", "-c", SLOW_SERVER, "{port}", str(delay)])
    (site / "web.yaml").write_text(f"title: Web\nready_path: ''\nstart_timeout: 30\ncommand: {command}\n")
    return site


async def _handle(hub, iid: str) -> dict:
    for _ in range(200):
        async with hub.hub.sessions() as session:
            inst = await session.get(Instance, iid)
            if inst.handle and inst.handle.get("port"):
                return inst.handle
        await asyncio.sleep(0.02)
    raise AssertionError("the instance never got a port")


async def test_a_squatter_on_the_port_fails_the_launch_and_never_gets_the_token(start_hub, sqlite_url, shared_tmp):
    hub = await start_hub(sqlite_url, data_dir=shared_tmp / "data", templates_dir=_templates(shared_tmp, 2.0))
    bob = await hub.user("bob")
    inst = (await bob.http.post("/api/v1/instances", json={"template": "web", "name": "w1"})).json()
    handle = await _handle(hub, inst["id"])
    squatter = subprocess.Popen(["/usr/bin/python3", "-c", SQUATTER, str(handle["port"])], user="nobody", group="nogroup",
                                extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd="/")
    try:
        assert squatter.stdout.readline().strip() == "listening"
        failed = await hub.wait_status(bob, inst["id"], {"failed"}, timeout=20)
        assert failed["reason"] == "listener_not_ours"
        assert f"port {handle['port']} is held by another process" in failed["message"]
        assert "did not connect" in failed["message"]
        # bob's own process was ended with the launch
        assert not Path(f"/proc/{handle['pid']}").exists() or \
            Path(f"/proc/{handle['pid']}/stat").read_text().split(") ")[1][0] in "ZX"
    finally:
        squatter.terminate()
        received = squatter.communicate(timeout=10)[0]
    assert "GET" not in received and hub.hub.instance_token(inst["id"]) not in received


async def test_the_same_template_without_a_squatter_starts_and_is_reachable(start_hub, sqlite_url, shared_tmp):
    hub = await start_hub(sqlite_url, data_dir=shared_tmp / "data", templates_dir=_templates(shared_tmp, 0.2))
    bob = await hub.user("bob")
    inst = (await bob.http.post("/api/v1/instances", json={"template": "web", "name": "w1"})).json()
    running = await hub.wait_status(bob, inst["id"], {"running"}, timeout=20)
    page = await hub.instance_client(bob, running).get("/")
    assert page.status_code == 200 and "Directory listing" in page.text


async def test_nobody_else_can_enter_the_socket_directory(start_hub, sqlite_url, shared_tmp):
    """JupyterLab listens on a Unix socket in a directory only the instance's account can enter."""
    site = shared_tmp / "templates"
    site.mkdir()
    listen = "import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); time.sleep(60)"
    command = json.dumps(["/usr/bin/python3", "-c", listen, "{socket}"])
    (site / "sock.yaml").write_text(f"title: Socket\nready_path: null\nstart_timeout: 30\ncommand: {command}\n")
    hub = await start_hub(sqlite_url, data_dir=shared_tmp / "data", templates_dir=site)
    bob = await hub.user("bob")
    inst = (await bob.http.post("/api/v1/instances", json={"template": "sock", "name": "s1"})).json()
    await hub.wait_status(bob, inst["id"], {"running"}, timeout=20)
    async with hub.hub.sessions() as session:
        handle = (await session.get(Instance, inst["id"])).handle
    path = handle["socket"]
    probe = ("import os, socket, sys\n"
             "try:\n    os.listdir(os.path.dirname(sys.argv[1])); print('listed')\nexcept PermissionError: print('no list')\n"
             "c = socket.socket(socket.AF_UNIX)\n"
             "try:\n    c.connect(sys.argv[1]); print('connected')\nexcept PermissionError: print('no connect')\n")
    out = subprocess.run(["/usr/bin/python3", "-c", probe, path], user="nobody", group="nogroup", extra_groups=[],
                         capture_output=True, text=True, cwd="/", timeout=10).stdout.split()
    assert out == ["no", "list", "no", "connect"]
    st = os.stat(os.path.dirname(path))
    assert st.st_mode & 0o077 == 0 and st.st_uid == handle["uid"] != 0
    with socket.socket(socket.AF_UNIX) as c:  # the hub itself can
        c.connect(path)
