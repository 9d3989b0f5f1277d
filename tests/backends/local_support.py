"""Fixtures and helpers for the local backend's tests (real processes, real accounts as root)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from labhub.backends import procinfo
from labhub.backends.base import Handle, LaunchSpec, Phase, Resources
from labhub.backends.local import LocalBackend

IS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not IS_ROOT, reason="needs root (system accounts, cgroups)")
SESSION_TAG = "t" + secrets.token_hex(3)
SLEEP = "import time; time.sleep(60)"


# -- helpers ----------------------------------------------------------------------


def make_spec(
    command: list[str],
    *,
    owner: str,
    instance_id: str | None = None,
    env: dict[str, str] | None = None,
    home: Path | None = None,
    memory_mb: int = 256,
    cpus: float = 1.0,
    gpus: int = 0,
    token: str = "tok-" + "s3cret",
) -> LaunchSpec:
    iid = instance_id or "i" + secrets.token_hex(6)
    return LaunchSpec(
        instance_id=iid,
        owner=owner,
        name="ws",
        kind="workspace",
        command=command,
        env=env or {},
        resources=Resources(cpus=cpus, memory_mb=memory_mb, gpus=gpus),
        base_url=f"/user/{owner}/{iid}/",
        token=token,
        time_limit_s=600,
        home=str(home) if home else None,
    )


def http_server(py: str) -> list[str]:
    return [py, "-m", "http.server", "--bind", "{ip}", "{port}"]


async def wait_until(cond: Callable[[], Any], within: float = 8.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_phase(backend: LocalBackend, handle: Handle, phase: Phase, within: float = 8.0):
    async def check():
        obs = await backend.observe(handle["instance_id"], handle)
        return obs if obs.phase == phase else None

    return await wait_until(check, within, f"phase {phase}")


async def wait_url(backend: LocalBackend, handle: Handle, within: float = 8.0):
    """The observation once the instance listens (and the backend has proven the listener its own)."""
    async def check():
        obs = await backend.observe(handle["instance_id"], handle)
        return obs if obs.url else None

    return await wait_until(check, within, "a URL")


async def log_lines(backend: LocalBackend, handle: Handle, tail: int = 100) -> list[str]:
    return [line async for line in backend.logs(handle, tail=tail)]


def group_members(pgid: int) -> list[int]:
    return [st.pid for st in procinfo.all_stats() if st.pgrp == pgid]


def read_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def write_log(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def read_text(path: str | Path) -> str:
    return Path(path).read_text()


def exists(path: str | Path) -> bool:
    return Path(path).exists()


def owner_uid(path: str | Path) -> int:
    return Path(path).stat().st_uid


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


async def cleanup_backend(backend: LocalBackend) -> None:
    for handle in await backend.list_owned():
        await backend.terminate(handle, grace=0.2)
    await backend.close()
