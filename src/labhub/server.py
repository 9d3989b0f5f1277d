"""Running the hub: the app behind a unix socket, the proxy on the public port.

The proxy (``labhub.proxy``) is the front door: it serves ``/user/...``
routes itself and passes everything else to the FastAPI app, which uvicorn
serves on a unix socket in the data directory.  Both run in one process and
one event loop, sharing the route table and the authentication cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import uvicorn

from labhub.api.app import create_app
from labhub.backends.base import Backend
from labhub.hub import Hub
from labhub.proxy import ProxyServer
from labhub.settings import Settings

log = logging.getLogger(__name__)


def _socket_path(data_dir: Path) -> Path:
    """This process's app socket: one per replica (several may share a data directory), and
    those of replicas that are gone are removed."""
    run_dir = data_dir / "run"
    path = run_dir / f"hub-{os.getpid()}.sock"
    if len(str(path)) > 100:  # AF_UNIX paths are limited to 108 bytes
        path = Path(tempfile.mkdtemp(prefix="labhub-")) / "hub.sock"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in run_dir.glob("hub*.sock") if run_dir.is_dir() else ():
        pid = old.stem.removeprefix("hub-")
        if old == path or not pid.isdigit() or not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunningHub:
    """A started hub: its parts and how to stop it."""

    def __init__(self, hub: Hub, proxy: ProxyServer, server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        self.hub = hub
        self.proxy = proxy
        self.server = server
        self._task = task

    @property
    def url(self) -> str:
        """Where the hub listens (users may reach it at ``hub.public_url``, behind a proxy)."""
        host = self.hub.settings.host
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104
        return f"http://{f'[{host}]' if ':' in host else host}:{self.proxy.port}"

    async def close(self) -> None:
        await self.proxy.close()
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.hub.close()


async def start(settings: Settings, *, reconcile: bool = True, backends: dict[str, Backend] | None = None,
                clock: Callable[[], dt.datetime] | None = None) -> RunningHub:
    """Start everything; returns once the proxy is listening and the app answers.

    ``backends`` and ``clock`` replace the configured ones (tests inject fakes).
    """
    hub = Hub(settings, backends=backends, **({"clock": clock} if clock else {}))
    await hub.start(reconcile=reconcile)
    sock = _socket_path(settings.data_dir)
    config = uvicorn.Config(
        create_app(hub, lazy=True), uds=str(sock), log_level=settings.log_level, access_log=False,
        proxy_headers=True, forwarded_allow_ips="*", lifespan="off", loop="none", http="httptools",
        ws="none", timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # we own signals
    task = asyncio.create_task(server.serve(), name="labhub-app")
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("the hub app failed to start")
        await asyncio.sleep(0.005)
    os.chmod(sock, 0o600)
    cookies = hub.cookies
    proxy = ProxyServer(
        routes=hub.routes, auth=hub.auth, hub_upstream=str(sock), session_cookie=cookies.session,
        strip_cookies=cookies.all, origin_cookie=cookies.origin,
        apps_domain=settings.apps_domain if hub.subdomains else None,
        hub_url=settings.public_url or "", trusted_proxies=settings.trusted_proxies,
        wake=hub.wake, public_rate=settings.services.public_rate, public_burst=settings.services.public_burst,
        wake_retry_after=settings.services.wake_retry_after_s,
    )
    await proxy.start(settings.host, settings.port)
    hub.public_url = proxy.hub_url.decode()
    return RunningHub(hub, proxy, server, task)


def login_instructions(running: RunningHub) -> str:
    hub = running.hub
    base = hub.public_url
    lines = [f"LabHub is running at {base}"]
    if hub.subdomains:
        lines.append(f"Instances are served on origins of their own: http(s)://<instance>--<user>.{hub.settings.apps_domain}")
    else:
        lines.append("Instances are served under /user/<user>/<instance>/ on the hub's origin (path mode: user code "
                     "shares the hub's origin; admins cannot open other users' instances in the browser)")
    for name, backend in hub.backends.items():
        lines.append(f"Backend {name}: {backend.describe_isolation()}")
    if hub.setup_token:
        lines += ["No admin exists yet. Create the first admin (this link works once):",
                  f"  {base}/setup?token={hub.setup_token}",
                  "or on this machine: labhub user add NAME --admin --password-stdin"]
    else:
        lines.append(f"Log in at {base}/login")
    return "\n".join(lines)


async def serve(settings: Settings, *, announce: Callable[[str], None] = print) -> None:
    """Run until SIGINT/SIGTERM.  Instances keep running across restarts."""
    running = await start(settings)
    announce(login_instructions(running))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (instances keep running)")
    await running.close()


def run(settings: Settings) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
