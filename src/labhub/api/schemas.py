"""Request and response bodies of the REST API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from labhub.models import ApiToken, Instance, User


class LaunchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"template": "jupyterlab", "name": "ws1", "size": "small", "hours": 2, "params": {}}]})

    template: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=63, description="DNS-safe: a-z, 0-9, '-'")
    size: str | None = Field(default=None, max_length=63)
    hours: float | None = Field(default=None, description="duration; default and maximum come from the template")
    params: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = Field(default=None, max_length=32)


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
    url: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    expires_at: dt.datetime
    last_activity_at: dt.datetime | None

    @classmethod
    def of(cls, inst: Instance) -> InstanceOut:
        return cls(
            id=inst.id, name=inst.name, owner=inst.owner.name, kind=inst.kind, template=inst.template,
            size=inst.size, resources=Resources(cpus=inst.cpus, memory_mb=inst.memory_mb, gpus=inst.gpus),
            hours=inst.hours, params=inst.params or {}, backend=inst.backend, status=inst.status,
            reason=inst.reason, message=inst.message, url=inst.url, created_at=inst.created_at,
            started_at=inst.started_at, ended_at=inst.ended_at, expires_at=inst.expires_at,
            last_activity_at=inst.last_activity_at,
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


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
