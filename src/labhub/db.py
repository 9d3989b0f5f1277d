"""Engine, sessions and migrations.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy
timeout; PostgreSQL works through asyncpg.  Migrations are Alembic's, run at
start by :func:`upgrade` (and by ``labhub db upgrade``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """Create the engine; for SQLite also set the pragmas we rely on."""
    kwargs: dict[str, Any] = {"echo": echo}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def make_sessionmaker(engine: AsyncEngine, *, sync_session_class: type[Session] | None = None,
                      ) -> async_sessionmaker[AsyncSession]:
    if sync_session_class is None:
        return async_sessionmaker(engine, expire_on_commit=False)
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=sync_session_class)


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


_REVISION_RE = re.compile(r"^revision\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN_RE = re.compile(r"^down_revision\s*(?::[^=]*)?=(.*)$", re.M)


def _heads() -> set[str] | None:
    """The newest revisions, read from the version files without importing Alembic
    (importing it costs a third of a second and 8 MiB at every start); None if unsure."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev, down = _REVISION_RE.search(text), _DOWN_RE.search(text)
        if rev is None or down is None:
            return None
        revisions.add(rev.group(1))
        parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    return (revisions - parents) or None


def _at_head(connection: Connection) -> bool:
    """Whether the schema is at the newest revision (the common case: nothing to migrate)."""
    heads = _heads()
    if heads is None or not inspect(connection).has_table("alembic_version"):
        return False
    return set(connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars()) == heads


MIGRATION_LOCK = 0x4C616248  # "LabH": one PostgreSQL advisory lock, so concurrent upgrades run one at a time


def _upgrade_sync(connection: Connection) -> None:
    if _at_head(connection):
        return
    if connection.dialect.name == "postgresql":
        # Replicas starting together (or `labhub db upgrade` while they run): the first migrates,
        # the others wait here, then find the schema at head.  Released when this transaction ends.
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        if _at_head(connection):
            return
    logging.getLogger("alembic").setLevel(logging.WARNING)  # before its import logs plugin set-up
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(connection)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return
    log.info("migrating database from %s to %s", current, head)
    command.upgrade(cfg, "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there).

    Safe to run while other processes do the same: PostgreSQL serialises them with an
    advisory lock (in :func:`_upgrade_sync`), a SQLite file with a lock file beside it."""
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_sync)
        return
    lock = await asyncio.to_thread(_lock_file, Path(f"{database}.migrate-lock"))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_sync)
    finally:
        os.close(lock)  # releases the lock


def _lock_file(path: Path) -> int:
    """An exclusive lock on ``path`` (created private), waiting for it; returns the descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A short unit of work: commits on success, rolls back on error."""
    async with sessions() as session, session.begin():
        yield session
