"""The systems under test, each started as its operator would start it.

* :class:`LabHub`: ``labhub serve`` (proxy and app in one process), local backend,
  ``LABHUB_ISOLATION=none`` (instances run as the hub's user, like
  SimpleLocalProcessSpawner), SQLite in a fresh data directory.
* :class:`JupyterHub`: ``jupyterhub -f benchmarks/jupyterhub_config.py`` from
  ``benchmarks/.env``; it starts CHP from ``benchmarks/node`` itself.
* :class:`CHP`: configurable-http-proxy alone, with one route (what JupyterHub's
  data plane is), for the proxy figures.
* :func:`bare_lab`: ``jupyter lab`` started by hand, the baseline of the launch figures.

Every process is started under ``taskset -c $BENCH_CPUS`` (children inherit it).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from lib import (
    CHP_BIN,
    HERE,
    LABHUB_PY,
    PEER_ENV,
    REPO,
    Proc,
    free_port,
    http_request,
    log,
    sse_until,
    tree,
    wait_ready,
)

HOST = "127.0.0.1"


def peers_installed() -> bool:
    return (PEER_ENV / "bin" / "jupyterhub").exists() and CHP_BIN.exists()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants_matching(root: int, needle: str) -> list[int]:
    """Top-level descendants of ``root`` whose command line contains ``needle``."""
    found = []
    for pid in tree(root)[1:]:
        if needle in _cmdline(pid):
            found.append(pid)
    # keep only the topmost ones (a lab's own children are counted with it)
    tops = []
    for pid in found:
        if not any(pid in tree(other) and pid != other for other in found):
            tops.append(pid)
    return tops


#: as root, the benchmarks run LabHub as this unprivileged account: with isolation "none" (instances as the
#: hub's own user, like JupyterHub's SimpleLocalProcessSpawner) LabHub refuses to run user code as root
LABHUB_RUN_AS = "nobody" if os.geteuid() == 0 else None


class LabHub:
    name = "labhub"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.data = work / "labhub-data"
        self.urls: dict[tuple[str, str], str] = {}  # (user, instance name) -> its URL as the API gives it
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.templates = work / "labhub-templates"
        self.templates.mkdir(parents=True, exist_ok=True)
        (self.templates / "bench-echo.yaml").write_text(json.dumps({
            "title": "Benchmark echo backend",
            "description": "The trivial HTTP/WebSocket upstream of the proxy benchmarks",
            "kind": "service",
            "command": ["python", str(HERE / "backend.py"), "--port", "{port}"],
            "ready_path": "api",
            "hours": {"default": 4, "max": 24},
        }))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LABHUB_")},
            "LABHUB_DATA_DIR": str(self.data), "LABHUB_ISOLATION": "none", "LABHUB_LOG_LEVEL": "warning",
            "LABHUB_TEMPLATES_DIR": str(self.templates), "LABHUB_BIND": f"{HOST}:{self.port}",
        }
        if os.environ.get("BENCH_LABHUB_SRC"):  # measure another checkout's src/ (e.g. a "before" snapshot)
            self.env["PYTHONPATH"] = os.environ["BENCH_LABHUB_SRC"]
        self.proc: Proc | None = None
        self.admin_token = ""
        self.tokens: dict[str, str] = {}
        if LABHUB_RUN_AS:  # its data directory is its own; what lies above it, traversable
            self.data.mkdir(mode=0o700, parents=True, exist_ok=True)
            account = pwd.getpwnam(LABHUB_RUN_AS)
            os.chown(self.data, account.pw_uid, account.pw_gid)
            for parent in self.data.parents:
                if parent == Path("/tmp") or parent == parent.parent:  # noqa: S108 - a comparison, nothing made there
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
            self.env["HOME"] = str(self.data)

    def _ids(self) -> dict:
        if not LABHUB_RUN_AS:
            return {}
        return {"user": LABHUB_RUN_AS, "group": pwd.getpwnam(LABHUB_RUN_AS).pw_gid, "extra_groups": []}

    def seed(self, *, users: int = 0, instances: int = 0, token_users: int = 0) -> None:
        out = subprocess.run([str(LABHUB_PY), str(HERE / "lh_seed.py"), "--users", str(users), "--instances",
                              str(instances), "--token-users", str(token_users)], env=self.env, capture_output=True,
                             text=True, check=True, timeout=300, **self._ids())
        data = json.loads(out.stdout.strip().splitlines()[-1])
        self.admin_token = data["admin_token"]
        self.tokens.update(data["tokens"])

    def start(self) -> Proc:
        self.proc = Proc([str(LABHUB_PY), "-m", "labhub.cli.main", "serve"], env=self.env,
                         log_path=self.work / "labhub.log", user=LABHUB_RUN_AS)
        return self.proc

    async def wait_healthy(self, timeout: float = 60) -> float:
        return await wait_ready(HOST, self.port, "/api/v1/health", timeout=timeout, interval=0.005, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def auth(self, user: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user] if user else self.admin_token}"}

    async def api(self, method: str, path: str, user: str | None = None, body: object = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {**self.auth(user), "Content-Type": "application/json"}
        status, raw = await http_request(HOST, self.port, method, path, hdrs, data)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    async def launch(self, user: str, name: str, template: str = "jupyterlab") -> str:
        status, body = await self.api("POST", "/api/v1/instances", user, {"template": template, "name": name})
        if status != 201:
            raise RuntimeError(f"labhub launch failed: {status} {body}")
        self.urls[(user, name)] = body["url"]  # type: ignore[index]
        return body["id"]  # type: ignore[index]

    def instance_origin(self, user: str, name: str) -> str | None:
        """``host:port`` of the instance's own origin (None: a LabHub serving instances under /user/...)."""
        url = self.urls.get((user, name), "")
        return urlsplit(url).netloc if url.startswith("http") and "--" in url else None

    async def wait_instance(self, user: str, name: str, path: str = "api", want: bytes | None = b"version",
                            timeout: float = 180, iid: str | None = None) -> float:
        """Until ``path`` under the instance answers 200 through the proxy.  With ``iid``, first
        follow the instance's event stream until it is running (as the web UI does), then ask."""
        if iid is not None:
            def running(ev: dict) -> bool:
                if ev.get("status") in ("failed", "stopped", "expired"):
                    raise RuntimeError(f"labhub: instance {iid} {ev.get('status')}: {ev.get('message')}")
                return ev.get("status") == "running"

            await sse_until(HOST, self.port, f"/api/v1/instances/{iid}/events", self.auth(user), running,
                            timeout=timeout)
        origin = self.instance_origin(user, name)
        if origin is not None:  # its own origin, reached at the hub's address (Python cannot resolve *.localhost)
            return await wait_ready(HOST, self.port, f"/{path}", {**self.auth(user), "Host": origin},
                                    timeout=timeout, interval=0.01, proc=self.proc, want=want)
        return await wait_ready(HOST, self.port, f"/user/{user}/{name}/{path}", self.auth(user), timeout=timeout,
                                interval=0.01, proc=self.proc, want=want)

    async def stop_instance(self, user: str, iid: str, timeout: float = 60) -> None:
        await self.api("DELETE", f"/api/v1/instances/{iid}", user)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, body = await self.api("GET", f"/api/v1/instances/{iid}", user)
            if isinstance(body, dict) and body.get("status") in ("stopped", "failed", "expired"):
                return
            await asyncio.sleep(0.1)
        log(f"labhub: instance {iid} did not stop")

    def instance_pid(self, iid: str) -> int | None:
        try:
            return int(json.loads((self.data / "instances" / iid / "handle.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def instance_port(self, iid: str) -> int:
        return int(json.loads((self.data / "instances" / iid / "handle.json").read_text())["port"])


class JupyterHub:
    name = "jupyterhub"

    def __init__(self, work: Path) -> None:
        self.work = work / "jupyterhub"
        (self.work / "homes").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = secrets.token_hex(32)
        self.env = {
            **os.environ,
            "PATH": f"{PEER_ENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "VIRTUAL_ENV": str(PEER_ENV),
            "BENCH_JH_WORK": str(self.work), "BENCH_JH_PORT": str(self.port),
            "BENCH_JH_HUB_PORT": str(free_port()), "BENCH_JH_PROXY_API_PORT": str(free_port()),
            "BENCH_JH_CHP": str(CHP_BIN), "BENCH_JH_TOKEN": self.token,
        }
        self.env.pop("PYTHONPATH", None)
        self.proc: Proc | None = None
        self.user_tokens: dict[str, str] = {}

    def seed(self, *, users: int, instances: int) -> None:
        subprocess.run([str(PEER_ENV / "bin" / "python"), str(HERE / "jh_seed.py"),
                        f"sqlite:///{self.work}/jupyterhub.sqlite", str(users), str(instances)],
                       env=self.env, capture_output=True, text=True, check=True, timeout=300)

    def start(self) -> Proc:
        self.proc = Proc([str(PEER_ENV / "bin" / "jupyterhub"), "-f", str(HERE / "jupyterhub_config.py")],
                         env=self.env, log_path=self.work / "jupyterhub.log", cwd=self.work)
        return self.proc

    async def wait_healthy(self, timeout: float = 120) -> float:
        return await wait_ready(HOST, self.port, "/hub/health", timeout=timeout, interval=0.005, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=30)
            self.proc = None

    def auth(self, user: str | None = None) -> dict[str, str]:
        """The bench service's token (admin scopes), or with ``user`` that user's own (see :meth:`user_token`)."""
        return {"Authorization": f"token {self.user_tokens[user] if user else self.token}"}

    async def api(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {**self.auth(), "Content-Type": "application/json"}
        status, raw = await http_request(HOST, self.port, method, "/hub/api" + path, hdrs, data, timeout=300)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    async def user_token(self, user: str) -> str:
        """A token of ``user``'s own (JupyterHub's default: the owner's ``self`` scopes), made by the service."""
        status, body = await self.api("POST", f"/users/{user}/tokens", {"note": "bench"})
        if status != 201 or not isinstance(body, dict):
            raise RuntimeError(f"jupyterhub: token for {user} failed: {status} {body}")
        self.user_tokens[user] = body["token"]
        return body["token"]

    async def ensure_users(self, names: list[str]) -> None:
        status, body = await self.api("POST", "/users", {"usernames": names})
        if status not in (201, 409):
            raise RuntimeError(f"jupyterhub: creating users failed: {status} {body}")

    async def launch(self, user: str) -> None:
        status, body = await self.api("POST", f"/users/{user}/server")
        if status not in (201, 202):
            raise RuntimeError(f"jupyterhub spawn failed: {status} {body}")

    async def wait_instance(self, user: str, timeout: float = 180, progress: bool = True) -> float:
        """Until the server's /api answers 200 through CHP.  With ``progress``, first follow
        the spawn's progress event stream until it says ready (as the spawn page does)."""
        if progress:
            def ready(ev: dict) -> bool:
                if ev.get("failed"):
                    raise RuntimeError(f"jupyterhub: spawn of {user} failed: {ev.get('message')}")
                return bool(ev.get("ready"))

            await sse_until(HOST, self.port, f"/hub/api/users/{user}/server/progress", self.auth(), ready,
                            timeout=timeout)
        return await wait_ready(HOST, self.port, f"/user/{user}/api", self.auth(), timeout=timeout, interval=0.01,
                                proc=self.proc, want=b"version")

    async def stop_instance(self, user: str, timeout: float = 60) -> None:
        await self.api("DELETE", f"/users/{user}/server")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = await self.api("GET", f"/users/{user}")
            if isinstance(body, dict) and not body.get("servers") and not body.get("pending"):
                return
            await asyncio.sleep(0.1)
        log(f"jupyterhub: server of {user} did not stop")

    def chp_pid(self) -> int | None:
        if self.proc is None:
            return None
        pids = descendants_matching(self.proc.pid, "configurable-http-proxy")
        return pids[0] if pids else None


class CHP:
    """configurable-http-proxy alone, routing ``/user/bench1/echo`` to the backend."""

    name = "chp"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.api_port = free_port()
        self.token = secrets.token_hex(16)
        self.proc: Proc | None = None

    async def start(self, target_port: int, prefix: str = "/user/bench1/echo") -> None:
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": self.token}
        dead = free_port()  # the "hub": nothing listens there, as in JupyterHub's default route
        self.proc = Proc([str(CHP_BIN), "--ip", HOST, "--port", str(self.port), "--api-ip", HOST, "--api-port",
                          str(self.api_port), "--default-target", f"http://{HOST}:{dead}",
                          "--error-target", f"http://{HOST}:{dead}/hub/error", "--log-level", "error"],
                         env=env, log_path=self.work / "chp.log")
        body = json.dumps({"target": f"http://{HOST}:{target_port}"}).encode()
        for _ in range(400):
            try:
                status, _ = await http_request(HOST, self.api_port, "POST", f"/api/routes{prefix}",
                                               {"Authorization": f"token {self.token}"}, body)
                if status == 201:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.025)
        raise RuntimeError("CHP did not come up: " + self.proc.tail())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def bare_lab(work: Path, port: int, token: str) -> Proc:
    """``jupyter lab`` as a user would start it (JupyterLab from LabHub's environment,
    the same install the LabHub template runs; only what the machine needs: port,
    token, no browser, root allowed)."""
    home = work / f"bare-home-{port}"
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{LABHUB_PY.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home),
           "LANG": "C.UTF-8", "JUPYTER_TOKEN": token, "USER": os.environ.get("USER", "root")}
    return Proc([str(LABHUB_PY.parent / "jupyter-lab"), "--no-browser", f"--ServerApp.ip={HOST}",
                 f"--ServerApp.port={port}", "--ServerApp.allow_root=True", f"--ServerApp.root_dir={home}"],
                env=env, log_path=work / f"bare-lab-{port}.log", cwd=home)


def repo_versions() -> dict:
    def run(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    out = {
        "labhub": run([str(LABHUB_PY), "-c", "import labhub; print(labhub.__version__)"]),
        "labhub_git": run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "jupyterlab_labhub_env": run([str(LABHUB_PY.parent / "jupyter-lab"), "--version"]),
        "python": run([str(LABHUB_PY), "-c", "import sys; print(sys.version.split()[0])"]),
        "node": run(["node", "--version"]),
        "wrk": run(["sh", "-c", "wrk -v 2>&1 | head -1"]),
    }
    if peers_installed():
        out["jupyterhub"] = run([str(PEER_ENV / "bin" / "jupyterhub"), "--version"])
        out["jupyterlab_peer_env"] = run([str(PEER_ENV / "bin" / "jupyter-lab"), "--version"])
        pkg = CHP_BIN.resolve().parent.parent / "package.json"
        try:
            out["configurable-http-proxy"] = json.loads(pkg.read_text())["version"]
        except (OSError, ValueError, KeyError):
            out["configurable-http-proxy"] = run([str(CHP_BIN), "--version"])
    return out
