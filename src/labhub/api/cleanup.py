"""/api/v1/admin/cleanup: what nothing accounts for any more, reported (dry run) or removed."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from labhub.api.deps import AdminUser, HubDep
from labhub.api.schemas import SIGNED_IN, RequestBody
from labhub.reconcile import cleanup

router = APIRouter(prefix="/admin", tags=["admin"], responses=SIGNED_IN)


class CleanupRequest(RequestBody):
    dry_run: bool = Field(default=True, description="report what would go, remove nothing")


class CleanupItem(BaseModel):
    kind: str = Field(description="orphan, expired, home, folders, job_files, instance_files or artifacts")
    target: str = Field(description="an instance id or a path")
    detail: str
    done: bool = Field(description="removed by this call")
    backend: str = ""


class CleanupReport(BaseModel):
    dry_run: bool
    items: list[CleanupItem]


@router.post("/cleanup", response_model=CleanupReport, summary="Clean up leftovers (admins; dry run by default)")
async def run_cleanup(body: CleanupRequest, admin: AdminUser, hub: HubDep) -> CleanupReport:
    parts = hub.reconciler.parts
    items = await cleanup.survey(parts, hub.reconciler.busy, hub.clock())
    if not body.dry_run:
        await cleanup.apply(parts, hub.tx, items, actor=admin.name)
    return CleanupReport(dry_run=body.dry_run, items=[CleanupItem(**item.public()) for item in items])
