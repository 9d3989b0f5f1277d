"""The reconciler's housekeeping, on every replica: orphaned backend jobs, account deletions, and
jobs' artifacts past their retention.  Each is safe to run on several replicas at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
from collections.abc import Callable, Container
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.backends.base import Backend, BackendError, Handle
from labhub.models import ACTIVE, Instance, Kind, User
from labhub.services import users
from labhub.services.errors import ServiceError

if TYPE_CHECKING:
    from labhub.reconcile.reconciler import Parts

log = logging.getLogger(__name__)
ACTIVE_VALUES = tuple(s.value for s in ACTIVE)
Tx = Callable[[], AbstractAsyncContextManager[AsyncSession]]


async def orphans(parts: Parts, busy: Container[str]) -> list[tuple[Backend, Handle]]:
    """The backend jobs of this hub that no active instance accounts for (nor work in flight).

    The jobs are listed first and the database read after: a job exists only once its
    instance's row was committed, so a launch in flight on any replica is never taken
    for an orphan."""
    found = []
    for backend in parts.backends.values():
        try:
            owned = await backend.list_owned()
        except BackendError as exc:
            log.warning("%s backend: cannot list instances: %s", backend.name, exc)
            continue
        ids = sorted({str(h.get("instance_id")) for h in owned if h.get("instance_id")})
        if not ids:
            continue
        async with parts.sessions() as session:
            known = set((await session.execute(select(Instance.id).where(
                Instance.id.in_(ids), Instance.status.in_(ACTIVE_VALUES)))).scalars())
        found += [(backend, h) for h in owned if h.get("instance_id") and h["instance_id"] not in known
                  and h["instance_id"] not in busy]
    return found


async def clean_orphans(parts: Parts, busy: Container[str]) -> None:
    """Terminate :func:`orphans`."""
    for backend, handle in await orphans(parts, busy):
        log.warning("%s backend: terminating orphan %s", backend.name, handle["instance_id"])
        await backend.terminate(handle, grace=parts.settings.stop_grace)


async def finish_deletions(parts: Parts, tx: Tx) -> None:
    """Delete the accounts waiting for it whose instances have all ended (any replica may;
    the deletion is one transaction, so two replicas cannot both do it)."""
    async with parts.sessions() as session:
        waiting = list((await session.execute(
            select(User.name, User.deleting_by).where(User.deleting_by.is_not(None)))).all())
    for name, by in waiting:
        try:
            async with tx() as session:
                actor = await users.get_user(session, name=by)
                if actor is None or not actor.is_admin:
                    log.warning("deleting %s: %s is no longer an admin; the account stays disabled", name, by)
                    user = await users.get_user(session, name=name)
                    if user is not None:
                        user.deleting_by = None
                    continue
                owner_id = await session.scalar(select(User.id).where(User.name == name))
                job_ids = list(await session.scalars(select(Instance.id).where(
                    Instance.owner_id == owner_id, Instance.kind == Kind.JOB)))
                result = await users.delete_user(session, actor=actor, name=name)
        except ServiceError as exc:  # deleted meanwhile, or no longer deletable
            log.info("deleting %s: %s", name, exc)
            continue
        if result.deleted:
            home = parts.launch.home_for(name)
            if home.exists():
                await asyncio.to_thread(shutil.rmtree, home, ignore_errors=True)
            if owner_id is not None:  # their folders and their jobs' artifacts
                await parts.launch.folders.remove_all(owner_id)
            for job_id in job_ids:
                await parts.launch.jobs.remove(job_id)
            log.info("deleted account %s (asked by %s)", name, by)


async def expire_artifacts(parts: Parts, tx: Tx, now: dt.datetime) -> None:
    """Delete the artifacts of jobs ended longer ago than the retention period (the job's record
    and events stay; its artifacts read as gone and no longer count against its owner)."""
    async with parts.sessions() as session:
        due = list(await session.scalars(select(Instance.id).where(
            Instance.kind == Kind.JOB, Instance.output_bytes.is_not(None), Instance.artifacts_expire_at <= now)
            .limit(500)))
    for iid in due:
        await parts.launch.jobs.remove(iid)
        async with tx() as session:
            await session.execute(update(Instance).where(Instance.id == iid).values(output_bytes=None))
        log.info("instance %s: artifacts expired and deleted", iid)
