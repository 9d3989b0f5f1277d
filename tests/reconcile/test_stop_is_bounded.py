"""Closing the hub must not wait for a start watcher's start_timeout (teardowns of 300 s / 120 s)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from labhub import server
from labhub.backends.fake import FakeBackend
from labhub.reconcile.probe import listening
from tests.conftest import make_settings

pytestmark = pytest.mark.asyncio


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_a_readiness_probe_is_always_cancellable():
    """Cancel at every point of the connect/sleep cycle; on 3.11 wait_for() lost some of these."""
    url = f"http://127.0.0.1:{_closed_port()}"
    for k in range(40):
        task = asyncio.create_task(listening(url, wait=30.0))
        for _ in range(k):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(1.0):
                await task


async def test_stop_recancels_work_that_swallowed_a_cancel(start_hub, sqlite_url):
    harness = await start_hub(sqlite_url, backends={"fake": FakeBackend()})
    rec = harness.hub.reconciler

    async def stubborn() -> None:
        try:
            await asyncio.sleep(300)
        except asyncio.CancelledError:
            pass  # what a lost cancellation looks like from outside
        await asyncio.sleep(300)

    rec._spawn("stubborn", stubborn())
    await asyncio.sleep(0)
    t0 = time.monotonic()
    await asyncio.wait_for(rec.stop(), 5)
    assert time.monotonic() - t0 < 5


async def test_closing_a_hub_with_an_instance_still_starting_is_quick(tmp_path, sqlite_url):
    """An instance whose upstream never listens (start_timeout 300 s): close() is bounded."""
    for _ in range(5):
        running = await server.start(make_settings(tmp_path, sqlite_url),
                                     backends={"fake": FakeBackend(url=f"http://127.0.0.1:{_closed_port()}")})
        from labhub.services import instances, users
        async with running.hub.tx() as session:
            alice = await users.get_user(session, name="alice") or await users.create_user(
                session, name="alice", password="password123")
            await instances.launch(session, user=alice, catalog=running.hub.catalog,
                                          sizes=running.hub.settings.sizes, backends=running.hub.backends,
                                          template="jupyterlab", name=f"ws{_}", now=running.hub.clock())
        # the commit woke the reconciler: no kick needed
        await asyncio.sleep(0.3)  # the watcher is now probing the closed port
        t0 = time.monotonic()
        await asyncio.wait_for(running.close(), 10)
        assert time.monotonic() - t0 < 10
