"""Idle culling and scale-to-zero: which of a replica's running instances have been idle too long.

An instance is idle when nothing used it for longer than its template allows (``idle_timeout_hours``,
never less than the site's ``LABHUB_IDLE_MIN_HOURS``; a service that may sleep: ``service.idle_s``).
Use is the latest of what any replica's proxy saw (flushed to the database), what this replica's
proxy saw since, and, for ``idle_check: jupyter`` templates, what JupyterLab itself says
(:mod:`labhub.reconcile.idle`): a busy kernel keeps the instance whatever the traffic.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from labhub.models import Instance, Status
from labhub.reconcile import idle

if TYPE_CHECKING:
    from labhub.reconcile.reconciler import Parts


async def cull(parts: Parts, now: dt.datetime, running: list[Any],
               request_stop: Callable[[str, str, str], Awaitable[None]]) -> None:
    """Ask ``request_stop(instance_id, why, message)`` for each of ``running`` (pass rows) that is idle:
    ``why`` ``idle`` (stopped, the message says which signal decided) or ``scale_to_zero`` (put to sleep)."""
    catalog = parts.catalog()
    candidates = []
    for inst in running:
        template = catalog.get(inst.template)
        if inst.status != Status.RUNNING or template is None:
            continue
        if template.service is not None and inst.min_replicas == 0:
            candidates.append((inst, template.service.idle_s, "scale_to_zero"))
        elif template.idle_timeout_hours is not None:  # never sooner than the site's locked minimum
            hours = max(template.idle_timeout_hours, parts.settings.idle_min_hours)
            candidates.append((inst, hours * 3600, "idle"))
    if not candidates:
        return
    local = {r.instance_id: r.last_activity for r in parts.routes.all()}
    for inst, seconds, why in candidates:
        seen = [(inst.started_at or inst.created_at).timestamp(), local.get(inst.id, 0.0)]
        if inst.last_activity_at is not None:
            seen.append(inst.last_activity_at.timestamp())
        quiet = now.timestamp() - max(seen)
        if quiet <= seconds:
            continue
        detail = "no requests"
        template = catalog.get(inst.template)
        if why == "idle" and template is not None and template.idle_check == "jupyter" and inst.upstream:
            activity = await _jupyter_activity(parts, inst.id, inst.upstream)
            if activity is not None and activity.busy:
                continue  # a kernel is computing: in use, whatever the traffic
            if activity is not None and activity.last is not None:
                quiet = min(quiet, now.timestamp() - activity.last)
                if quiet <= seconds:
                    continue
                detail = "no kernel busy"
        await request_stop(inst.id, why, f"stopped: idle for {idle.describe(quiet)}, {detail}" if why == "idle" else "")


async def _jupyter_activity(parts: Parts, instance_id: str, upstream: str) -> idle.Activity | None:
    async with parts.sessions() as session:
        inst = await session.get(Instance, instance_id)
        if inst is None:
            return None
        base_url = parts.launch.base_path(inst.owner.name, inst.name)
    return await idle.jupyter(upstream, base_url, parts.launch.instance_token(instance_id))
