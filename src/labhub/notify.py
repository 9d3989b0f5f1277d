"""Notifications between hub replicas: PostgreSQL ``LISTEN/NOTIFY``, no extra server.

Sending happens inside the transaction that made the change (``pg_notify`` is
delivered on commit, and not at all on rollback); see :func:`send`.  Receiving
is one dedicated connection per replica, :class:`Listener`, which reconnects
when the connection drops and then calls ``on_connect`` so the replica can
catch up on whatever it missed meanwhile (routes, wakes) from the database.
SQLite has one replica: nothing is sent or received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "labhub"
RECONNECT_S = (0.2, 0.5, 1.0, 2.0)  # back-off between attempts; the last repeats


def shared(database_url: str) -> bool:
    """Whether replicas can share this database (and so need notifying)."""
    return database_url.startswith("postgresql")


def send(session: Session, payloads: list[str]) -> None:
    """Queue ``payloads`` on the session's transaction (a synchronous session, as in a before-commit hook)."""
    for payload in payloads:
        session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})


class Listener:
    """One replica's ``LISTEN`` connection.

    ``on_message(payload)`` runs for every notification on :data:`CHANNEL`
    (this replica's own included: callers skip those); ``on_connect(first)``
    after each (re)connection, ``first`` only for the initial one.
    """

    def __init__(self, database_url: str, on_message: Callable[[str], None],
                 on_connect: Callable[[bool], None]) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._on_message = on_message
        self._on_connect = on_connect
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.reconnects = 0

    async def start(self, within: float = 10.0) -> None:
        """Connect (and keep reconnecting in the background); waits up to ``within`` s for the first."""
        self._task = asyncio.create_task(self._run(), name="labhub-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._connected.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        import asyncpg

        attempt = 0
        first = True
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, payload: self._on_message(payload))
                attempt = 0
                self._connected.set()
                self._on_connect(first)
                if not first:
                    self.reconnects += 1
                first = False
                while not lost.is_set():
                    # a cheap round trip now and then: a silently dead connection is noticed
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5.0):
                            await lost.wait()
                    if not lost.is_set():
                        async with asyncio.timeout(5.0):
                            await conn.execute("SELECT 1")
                log.warning("notification connection lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database restarting, a network blip
                log.warning("notification connection failed: %s", exc)
            finally:
                if conn is not None:  # abruptly: it only listens, and a graceful close can be cut short
                    with contextlib.suppress(Exception):
                        conn.terminate()
            await asyncio.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
            attempt += 1
