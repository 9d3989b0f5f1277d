"""/api/v1/instances/{id}/extend: more time before an instance expires, within its template's maximum."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import ConfigDict, Field

from labhub.api.deps import HubDep, InstancesUser, SessionDep
from labhub.api.schemas import SIGNED_IN, InstanceOut, RequestBody, Text, errors
from labhub.services import extend as svc

router = APIRouter(prefix="/instances", tags=["instances"], responses=SIGNED_IN)


class ExtendRequest(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"hours": 2}]})

    hours: float = Field(allow_inf_nan=False, description="hours more; the instance's duration (from its "
                                                          "creation) stays within its template's maximum")


@router.post("/{instance_id}/extend", response_model=InstanceOut, summary="Extend an instance",
             description="Moves `expires_at` on by `hours`. 422 (field `hours`): not more than 0, or beyond the "
                         "template's maximum (the message says the most it can still get); 409: it has ended, "
                         "is stopping, or its backend keeps the time limit it was submitted with.",
             responses=errors(404, 409, 422))
async def extend(instance_id: Text, body: ExtendRequest, user: InstancesUser, session: SessionDep,
                 hub: HubDep) -> InstanceOut:
    inst = await svc.extend(session, user=user, catalog=hub.catalog, instance_id=instance_id, hours=body.hours,
                            now=hub.clock())
    await session.commit()
    return InstanceOut.of(inst, url=hub.instance_url(inst))
