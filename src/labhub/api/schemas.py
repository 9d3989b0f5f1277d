"""Request and response bodies of the REST API, and the error answers every route documents."""

from __future__ import annotations

import datetime as dt
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Path, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from labhub.models import ApiToken, Instance, User

MAX_INT32 = 2**31 - 1
"""The largest id, cursor or offset the API takes: ids are 32-bit integers on PostgreSQL, and a
larger number would reach the database as an error (500) instead of being refused as invalid (422)."""


class ErrorOut(BaseModel):
    """The body of every error answer, whichever part of the hub gave it."""

    detail: str = Field(description="what went wrong, in words for people")
    fields: dict[str, str] = Field(
        default_factory=dict, description="per request field (a parameter name, or a dotted path into the body, "
                                  "or `body`): why it was refused; absent when no field was at fault")


ERROR_DESCRIPTIONS: dict[int, str] = {
    401: "No credentials, or unknown, expired or revoked ones",
    403: "The credential may not do this: the token lacks the scope, the resource is someone else's, "
         "admins only, a missing CSRF header with a session cookie, or the account waits for approval",
    404: "No such resource (or not one you may see)",
    409: "Conflicts with the current state",
    413: "The request body is larger than the hub's limit (`LABHUB_MAX_BODY_BYTES`)",
    415: "The request body is not JSON (send `Content-Type: application/json`)",
    422: "Invalid request: `fields` names each parameter or body field at fault",
    503: "A backend cannot be reached right now; try again later",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "required": True, "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "string"}}},
}


def error(status: int, description: str | None = None) -> dict[int | str, dict[str, Any]]:
    """A ``responses=`` entry documenting an error answer with :class:`ErrorOut`."""
    entry: dict[str, Any] = {"model": ErrorOut,
                             "description": description or ERROR_DESCRIPTIONS.get(status, HTTPStatus(status).phrase)}
    if status in _ERROR_HEADERS:
        entry["headers"] = _ERROR_HEADERS[status]
    return {status: entry}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for ``statuses``, with their usual descriptions."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out.update(error(status))
    return out


SIGNED_IN = errors(401, 403)
"""What every route that needs a user's credential can answer besides its own errors."""


def json_answer(content: bytes, status_code: int = 200) -> Response:
    """An answer serialised once, by the route (``pydantic_core.to_json`` of plain values, or cached bytes).

    FastAPI passes a returned Response through as it is: no second validation against the route's
    ``response_model``, which still documents the answer.  Datetimes come out as the models write
    them (ISO 8601, ``Z`` for UTC)."""
    return Response(content, status_code=status_code, media_type="application/json")


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def _refuse_nul(value: Any) -> Any:
    if _holds_nul(value):
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_refuse_nul)]
"""A path, query or header parameter's text.  PostgreSQL cannot store or compare text holding NUL:
refused here, it is a 422 naming the parameter rather than a database error (500) on PostgreSQL."""


TokenId = Annotated[int, Path(ge=1, le=MAX_INT32)]
"""A token's id in a path (ids start at 1)."""


class RequestBody(BaseModel):
    """A JSON request body: no unknown fields, and (as :data:`Text`) no NUL characters anywhere in it."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return _refuse_nul(value)


class CustomSize(RequestBody):
    cpus: float = Field(gt=0, le=100_000)
    memory_mb: int = Field(gt=0, le=1024**3)
    gpus: int = Field(default=0, ge=0, le=10_000)


class LaunchRequest(RequestBody):
    model_config = ConfigDict(json_schema_extra={
        "examples": [{"template": "jupyterlab", "name": "ws1", "size": "small", "hours": 2, "params": {}}]})

    template: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=63, description="DNS-safe: a-z, 0-9, '-'")
    size: str | None = Field(default=None, max_length=63)
    hours: float | None = Field(default=None, description="duration; default and maximum come from the template")
    params: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = Field(default=None, max_length=32)
    input: str | None = Field(default=None, max_length=63, description="jobs: the folder (of yours) the job reads")
    public: bool | None = Field(default=None, description="services: anyone may call its inference routes "
                                                          "without a token (rate-limited)")
    min_replicas: int | None = Field(default=None, description="services: 0 sleeps when idle and is woken by "
                                                               "the next request; 1 keeps running (default: the "
                                                               "template's)")


    replicas: int | None = Field(default=None, description="services: how many processes serve it (the proxy "
                                                           "spreads requests over them), each of its size")
    custom: CustomSize | None = Field(default=None, description='with `size: "custom"`: the size wanted, within '
                                                                "the template's or your group policy's maximum")
    owner: str | None = Field(default=None, max_length=63, description="admins: launch for this user (it is "
                                                                        "theirs, counted against their quota)")


class Resize(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"size": "medium"}]})

    size: str = Field(min_length=1, max_length=63, description='a preset, or "custom" with `custom`')
    custom: CustomSize | None = None


class ServiceChange(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"public": True}, {"min_replicas": 0}]})

    public: bool | None = Field(default=None, description="anyone may call its inference routes (rate-limited)")
    min_replicas: int | None = Field(default=None, description="0: sleeps when idle; 1: keeps running")


class Resources(BaseModel):
    cpus: float
    memory_mb: int
    gpus: int


class InstanceOut(BaseModel):
    id: str
    name: str
    owner: str
    kind: str
    template: str
    size: str
    resources: Resources
    hours: float
    params: dict[str, Any]
    backend: str
    status: str
    reason: str
    message: str
    url: str = Field(description="where the instance is served: an origin of its own (subdomain mode), or "
                                 "/user/<owner>/<name>/ on the hub's (path mode); absolute")
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    expires_at: dt.datetime
    last_activity_at: dt.datetime | None
    input: str | None = Field(default=None, description="jobs: the folder the job reads")
    exit_code: int | None = Field(default=None, description="jobs: how the process ended, once it has")
    artifacts_bytes: int | None = Field(default=None, description="jobs: what its artifacts hold, once it has ended")
    public: bool = Field(default=False, description="services: its inference routes are open to anyone")
    min_replicas: int = Field(default=1, description="services: 0 sleeps when idle (status `sleeping`)")
    replicas: int = Field(default=1, description="services: processes serving it")
    queue_position: int | None = Field(default=None, description="waiting for admission (status `queued`, reason "
                                                                 "`admission`): its place in the queue, 1 = next")

    @classmethod
    def of(cls, inst: Instance, *, url: str, queue_position: int | None = None) -> InstanceOut:
        return cls(
            id=inst.id, name=inst.name, owner=inst.owner.name, kind=inst.kind, template=inst.template,
            size=inst.size, resources=Resources(cpus=inst.cpus, memory_mb=inst.memory_mb, gpus=inst.gpus),
            hours=inst.hours, params=inst.params or {}, backend=inst.backend, status=inst.status,
            reason=inst.reason, message=inst.message, url=url, created_at=inst.created_at,
            started_at=inst.started_at, ended_at=inst.ended_at, expires_at=inst.expires_at,
            last_activity_at=inst.last_activity_at, input=inst.input_folder, exit_code=inst.exit_code,
            artifacts_bytes=inst.output_bytes, public=bool(inst.public), min_replicas=inst.min_replicas,
            replicas=inst.replicas, queue_position=queue_position,
        )


class EventOut(BaseModel):
    id: int
    instance_id: str
    at: dt.datetime
    status: str
    reason: str
    message: str


class UserOut(BaseModel):
    name: str
    role: str
    status: str
    email: str | None
    is_admin: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(name=user.name, role=user.role, status=user.status, email=user.email, is_admin=user.is_admin,
                   created_at=user.created_at, last_login_at=user.last_login_at)


class TokenRequest(RequestBody):
    note: str = Field(default="", max_length=255)
    scopes: list[str] = Field(default_factory=lambda: ["*"], max_length=10)
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class TokenOut(BaseModel):
    id: int
    prefix: str
    note: str
    scopes: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None

    @classmethod
    def of(cls, token: ApiToken) -> TokenOut:
        return cls(id=token.id, prefix=token.prefix, note=token.note, scopes=token.scopes,
                   created_at=token.created_at, expires_at=token.expires_at, last_used_at=token.last_used_at)


class NewTokenOut(TokenOut):
    token: str = Field(description="the secret; shown only in this response")


class SizeOut(BaseModel):
    name: str
    cpus: float
    memory_mb: int
    gpus: int
    description: str
    allowed: bool
    reason: str = ""


class ParamOut(BaseModel):
    name: str
    title: str
    help: str
    type: str
    default: Any
    required: bool
    choices: list[str] | None
    min: float | None
    max: float | None
    pattern: str | None
    max_length: int


class TemplateOut(BaseModel):
    name: str
    title: str
    description: str
    kind: str
    sizes: list[SizeOut]
    default_size: str
    hours_default: float
    hours_max: float
    backends: list[str]
    params: list[ParamOut]
