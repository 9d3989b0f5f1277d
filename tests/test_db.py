"""Migrations and models agree, and concurrent upgrades migrate once."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from labhub import db
from labhub.models import Base

pytestmark = pytest.mark.asyncio


async def test_the_migrated_schema_is_the_models(database_url):
    engine = db.make_engine(database_url)
    try:
        await db.upgrade(engine)
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
    finally:
        await engine.dispose()
    assert diff == []


async def test_replicas_upgrading_together_migrate_once(database_url):
    """Several replicas starting at once (or `labhub db upgrade` while they run) on one database."""
    engines = [db.make_engine(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(db.upgrade(e) for e in engines))
        async with engines[0].connect() as conn:
            versions = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalars().all()
    finally:
        for e in engines:
            await e.dispose()
    assert versions == [sorted(db._heads())[0]]
