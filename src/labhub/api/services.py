"""/api/v1/instances/{id}/service: what a service serves and how it is doing (for its page's chart)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from labhub.api.deps import HubDep, InstancesUser, SessionDep
from labhub.api.schemas import SIGNED_IN, Text, errors
from labhub.models import ROUTED, Kind
from labhub.services import instances as svc
from labhub.services import serving
from labhub.services.errors import NotFound, Unavailable

router = APIRouter(prefix="/instances", tags=["services"], responses=SIGNED_IN)


class ServiceOut(BaseModel):
    status: str
    url: str
    public: bool
    min_replicas: int
    models: list[dict[str, Any]] | None = Field(description="its models and versions (TFaaS's GET /models); null "
                                                            "while it is not running")
    metrics: dict[str, Any] | None = Field(description="`at` (unix time) and per `NAME@VERSION`: requests, errors, "
                                                       "seconds_sum, seconds_count and cumulative latency buckets "
                                                       "`[[upper bound s or null for +Inf, count]]`; counters only "
                                                       "grow, so rates are the differences of two readings")


@router.get("/{instance_id}/service", response_model=ServiceOut, summary="A service's models and counters",
            responses=errors(404, 503))
async def service(instance_id: Text, user: InstancesUser, session: SessionDep, hub: HubDep) -> ServiceOut:
    inst = await svc.get_instance(session, user=user, instance_id=instance_id)
    if inst.kind != Kind.SERVICE:
        raise NotFound("only services have models and counters")
    out = ServiceOut(status=inst.status, url=hub.instance_url(inst), public=bool(inst.public),
                     min_replicas=inst.min_replicas, models=None, metrics=None)
    upstream, iid = inst.upstream, inst.id
    if inst.status not in ROUTED or not upstream:
        return out
    await session.commit()  # no transaction held while the service answers
    try:
        found = await serving.read(upstream, hub.instance_token(iid))
    except serving.ServiceUnreachable as exc:
        raise Unavailable(str(exc), headers={"Retry-After": "5"}) from exc
    out.models, out.metrics = found["models"], found["metrics"]
    return out
