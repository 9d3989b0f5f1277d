"""`labhub serve` in a child process, as an operator runs it (for kill-and-restart tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubProcess:
    """A hub on its own port and data dir; ``extra`` adds environment settings."""

    def __init__(self, data_dir: Path, database_url: str, extra: dict[str, str] | None = None, *,
                 name: str = "hub") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LABHUB_LOG_LEVEL": "warning", "LABHUB_RECONCILE_INTERVAL": "0.3",
                    **(extra or {}), "LABHUB_DATA_DIR": str(data_dir), "LABHUB_DATABASE_URL": database_url,
                    "LABHUB_BIND": f"127.0.0.1:{self.port}"}
        self.log = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, stdin: str = "") -> str:
        return subprocess.run([sys.executable, "-m", "labhub.cli.main", *args], env=self.env, input=stdin,
                              capture_output=True, text=True, timeout=60, check=True).stdout

    async def start(self, within: float = 30.0) -> None:
        """Start and wait for /api/v1/health (a loaded 2-core machine can take seconds to import the hub)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "labhub.cli.main", "serve"], env=self.env,
                                         stdout=log, stderr=log)
        async with httpx.AsyncClient() as http:
            for _ in range(int(within / 0.05)):
                try:
                    if (await http.get(f"{self.url}/api/v1/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert self.proc.poll() is None, self.log.read_text()
                await asyncio.sleep(0.05)
        raise AssertionError("hub did not come up: " + self.log.read_text())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


async def wait_status(http: httpx.AsyncClient, iid: str, want: str, within: float = 90) -> dict:
    """Poll the API until instance ``iid`` is ``want``; fail at once if it ends otherwise."""
    body: dict = {}
    for _ in range(int(within / 0.1)):
        body = (await http.get(f"/api/v1/instances/{iid}")).json()
        if body["status"] == want:
            return body
        assert body["status"] not in {"failed", "stopped", "expired"}, body
        await asyncio.sleep(0.1)
    raise AssertionError(f"not {want}: {body}")
