"""Launch policy from a user's groups (ML Hub's scenarios, docs/policies.md): self-service, priority in
the admission queue, durations, single-instance mode and custom sizes.

Of several groups the most permissive setting wins (any group with self-service on lets its members
launch; the highest priority; the longest maximum), except single-instance mode, which any group
turns on.  A user in no group has the site's behaviour: self-service, priority 0, the template's
durations and presets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labhub.models import Group
from labhub.services.errors import Invalid


class CustomMax(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpus: float = Field(gt=0, le=100_000)
    memory_mb: int = Field(gt=0, le=1024**3)
    gpus: int = Field(default=0, ge=0, le=10_000)


class PolicyValues(BaseModel):
    """A group's ``policy`` as stored and as the API takes it."""

    model_config = ConfigDict(extra="forbid")

    max_hours: float | None = Field(default=None, gt=0, le=24 * 366)
    default_hours: float | None = Field(default=None, gt=0, le=24 * 366)
    single_instance: bool = False
    custom_size: CustomMax | None = None  # members may ask for any size up to this (within their quota)


def parse(given: Mapping[str, Any]) -> dict[str, Any]:
    try:
        values = PolicyValues.model_validate(dict(given))
    except ValidationError as exc:
        raise Invalid("invalid policy", fields={
            ".".join(str(p) for p in err["loc"]) or "policy": err["msg"] for err in exc.errors()}) from exc
    return values.model_dump(exclude_none=True, exclude_defaults=True)


@dataclass(frozen=True, slots=True)
class Policy:
    self_service: bool = True
    priority: int = 0
    max_hours: float | None = None  # None: the template's
    default_hours: float | None = None
    single_instance: bool = False
    custom_size: CustomMax | None = None

    def hours(self, template_default: float, template_max: float) -> tuple[float, float]:
        """The default and maximum duration of a launch of a template with these (pure)."""
        most = self.max_hours if self.max_hours is not None else template_max
        default = self.default_hours if self.default_hours is not None else template_default
        return min(default, most), most


def of_groups(groups: Iterable[Group]) -> Policy:
    """The policy of a member of ``groups`` (pure)."""
    groups = list(groups)
    if not groups:
        return Policy()
    values = [PolicyValues.model_validate(g.policy or {}) for g in groups]
    maxes = [v.max_hours for v in values if v.max_hours is not None]
    defaults = [v.default_hours for v in values if v.default_hours is not None]
    customs = [v.custom_size for v in values if v.custom_size is not None]
    custom = None
    if customs:
        custom = CustomMax(cpus=max(c.cpus for c in customs), memory_mb=max(c.memory_mb for c in customs),
                           gpus=max(c.gpus for c in customs))
    return Policy(self_service=any(g.self_service for g in groups), priority=max(g.priority for g in groups),
                  max_hours=max(maxes) if maxes else None, default_hours=max(defaults) if defaults else None,
                  single_instance=any(v.single_instance for v in values), custom_size=custom)
