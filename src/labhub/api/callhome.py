"""/api/v1/instances/{id}/callhome: an instance that picked its own address reports it.

Slurm jobs (and other backends with the ``call_home`` capability) start on a
node and port the hub cannot know in advance.  The job's launcher posts
``{host, port, job_id}`` here with ``Authorization: token <instance token>``,
the secret the hub derived for that instance and gave only to it.  No user
credential is involved: the token is compared in constant time and grants
nothing but this report.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import Field

from labhub.api.deps import HubDep
from labhub.api.schemas import RequestBody, Text, error
from labhub.services import security

router = APIRouter(tags=["instances"])


class CallHome(RequestBody):
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]-]+$")
    port: int = Field(gt=0, lt=65536)
    job_id: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")


@router.post("/instances/{instance_id}/callhome", status_code=204,
             summary="An instance reports where it listens (instance token, not a user's)",
             openapi_extra={"security": [{"instanceToken": []}]},
             responses={**error(403, "Not this instance's token"),
                        **error(404, "No such starting or running instance"),
                        **error(409, "The instance's job is not recorded yet: try again")})
async def callhome(instance_id: Text, body: CallHome, hub: HubDep, request: Request) -> Response:
    # read, not declared as a parameter: the credential is documented as the instanceToken security scheme
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = hub.instance_token(instance_id)
    if scheme.lower() not in ("token", "bearer") or not security.same(token.strip(), expected):
        raise HTTPException(403, "not this instance's token")
    await hub.reconciler.call_home(instance_id, body.model_dump())
    return Response(status_code=204)
