"""Clean-up (ML Hub's clean-up service): what the hub's machines hold that nothing accounts for any
more, found by :func:`survey` and removed by :func:`apply`, each removal audited.

What is looked for:

* ``orphan``: a backend job or process of this hub whose instance is not active;
* ``expired``: an active instance past its expiry that has not been stopped yet;
* ``home``: a directory under ``homes/`` of no existing user (a deleted account's);
* ``folders``: uploaded folders of no existing user;
* ``job_files``: a job's directory (its artifacts) of no existing instance record;
* ``instance_files``: a local instance's state directory (its log, handle) of no existing record;
* ``artifacts``: artifacts past their retention.

Every kind is safe to apply on several replicas at once, and again: what is already gone is skipped.
A launch in flight is never taken for a leftover, because an instance's row is committed before
anything of it exists on disk or in a backend.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Callable, Container
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.backends.base import BackendError, Handle
from labhub.files import tree
from labhub.models import ACTIVE, AuditEvent, Instance, Kind, Status, User
from labhub.reconcile import housekeeping
from labhub.services.instances import request_stop

if TYPE_CHECKING:
    from labhub.reconcile.reconciler import Parts

log = logging.getLogger(__name__)
Tx = Callable[[], AbstractAsyncContextManager[AsyncSession]]
ACTIVE_VALUES = tuple(s.value for s in ACTIVE)
_INSTANCE_ID = re.compile(r"[0-9a-f]{32}")
MAX_ITEMS = 10_000  # per survey: a report stays readable, and the next one finds the rest


@dataclass
class Item:
    """One thing to remove: its kind, what it is (a path, an instance id) and a line about it."""

    kind: str
    target: str
    detail: str = ""
    done: bool = False
    handle: Handle | None = None  # orphans: what the backend terminates
    backend: str = ""

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("handle",)}


async def survey(parts: Parts, busy: Container[str], now: dt.datetime) -> list[Item]:
    """Everything :func:`apply` would remove, oldest kinds first; reads only."""
    async with parts.sessions() as session:
        users = {row.id: row.name for row in (await session.execute(select(User.id, User.name))).all()}
        active = {row.id: row for row in (await session.execute(
            select(Instance.id, Instance.status, Instance.expires_at).where(
                Instance.status.in_(ACTIVE_VALUES)))).all()}
        known = set((await session.execute(select(Instance.id))).scalars())
        due = list(await session.scalars(select(Instance.id).where(
            Instance.kind == Kind.JOB, Instance.output_bytes.is_not(None), Instance.artifacts_expire_at <= now)
            .limit(MAX_ITEMS)))
    items: list[Item] = []
    for backend, handle in await housekeeping.orphans(parts, busy):
        what = next((f"{k} {handle[k]}" for k in ("pid", "job_id", "pod") if k in handle), "")
        items.append(Item("orphan", str(handle["instance_id"]), f"{backend.name} backend: {what}".rstrip(": "),
                          handle=handle, backend=backend.name))
    items += [Item("expired", iid, f"expired {row.expires_at:%Y-%m-%d %H:%M} UTC, still {row.status}")
              for iid, row in active.items() if row.status != Status.STOPPING and row.expires_at <= now]
    homes = parts.launch.home_for("-").parent
    names = set(users.values())
    items += [Item("home", str(path), "no user of that name") for path in _dirs(homes) if path.name not in names]
    items += [Item("folders", str(path), "no user with that id") for path in _dirs(parts.launch.folders.root)
              if not (path.name.isdigit() and int(path.name) in users)]
    items += [Item("job_files", str(path), "no instance record") for path in _dirs(parts.launch.jobs.root)
              if _INSTANCE_ID.fullmatch(path.name) and path.name not in known]
    for backend in parts.backends.values():
        state = getattr(backend, "state_dir", None)
        if isinstance(state, Path):
            items += [Item("instance_files", str(path), f"{backend.name} backend; no instance record")
                      for path in _dirs(state) if _INSTANCE_ID.fullmatch(path.name) and path.name not in known]
    items += [Item("artifacts", iid, "past their retention") for iid in due]
    return items[:MAX_ITEMS]


def _dirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except FileNotFoundError:
        return []


async def apply(parts: Parts, tx: Tx, items: list[Item], *, actor: str) -> list[Item]:
    """Remove each item (``done`` says which were), auditing each as ``cleanup.<kind>`` by ``actor``."""
    for item in items:
        try:
            item.done = await _remove(parts, tx, item)
        except (OSError, BackendError) as exc:
            item.detail += f" (not removed: {exc})"
            log.warning("clean-up of %s %s failed: %s", item.kind, item.target, exc)
            continue
        if item.done:
            async with tx() as session:
                session.add(AuditEvent(actor=actor, action=f"cleanup.{item.kind}", target=item.target[:255],
                                       detail={"detail": item.detail}))
            log.info("clean-up: %s %s removed (%s)", item.kind, item.target, item.detail)
    return items


async def _remove(parts: Parts, tx: Tx, item: Item) -> bool:
    if item.kind == "orphan":
        assert item.handle is not None
        return await parts.backends[item.backend].terminate(item.handle, grace=parts.settings.stop_grace)
    if item.kind == "expired":
        async with tx() as session:
            inst = await session.get(Instance, item.target)
            return inst is not None and request_stop(session, inst, actor=None, reason="expired")
    if item.kind == "artifacts":
        await parts.launch.jobs.remove(item.target)
        async with tx() as session:
            inst = await session.get(Instance, item.target)
            if inst is not None:
                inst.output_bytes = None
        return True
    path = Path(item.target)
    if not path.exists():
        return False
    await asyncio.to_thread(tree.remove_tree, path)
    return True
