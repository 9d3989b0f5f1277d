"""What a template file may contain, and how launch parameters are checked.

Templates are data, never code.  A template's ``command`` is an argument vector
with placeholders the hub and backend fill in: ``{port}``, ``{ip}``,
``{socket}``, ``{base_url}``, ``{home}`` (backend) and ``{param:NAME}`` (the
user's validated parameter ``NAME``).  No shell ever sees it.  ``listen`` says
how the program can be told where to listen: the backend appends the ``socket``
arguments where it can give the instance a Unix socket in a private directory
(no other account can take it over), else the ``port`` arguments.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PARAM_REF = re.compile(r"\{param:([a-z_][a-z0-9_]*)\}")


class Param(BaseModel):
    """One user-settable parameter, rendered as a form field."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    title: str = ""
    help: str = ""
    type: Literal["string", "integer", "number", "boolean", "choice"] = "string"
    default: Any = None
    required: bool = False
    choices: list[str] | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    max_length: int = Field(default=256, gt=0, le=4096)

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice parameter needs `choices`")
        if self.pattern is not None:
            re.compile(self.pattern)
        if self.default is not None:
            error = self.check(self.default)[1]
            if error:
                raise ValueError(f"default: {error}")
        return self

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Coerce ``value``; return ``(value, None)`` or ``(None, reason)``."""
        if self.type == "boolean":
            if isinstance(value, bool):
                return value, None
            return None, "must be true or false"
        if self.type in ("integer", "number"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None, f"must be a{'n integer' if self.type == 'integer' else ' number'}"
            if self.type == "integer" and not float(value).is_integer():
                return None, "must be an integer"
            if self.min is not None and value < self.min:
                return None, f"must be at least {self.min:g}"
            if self.max is not None and value > self.max:
                return None, f"must be at most {self.max:g}"
            return (int(value) if self.type == "integer" else float(value)), None
        if not isinstance(value, str):
            return None, "must be a string"
        if len(value) > self.max_length:
            return None, f"must be at most {self.max_length} characters"
        if "\x00" in value:
            return None, "must not contain NUL characters"
        if self.type == "choice" and value not in (self.choices or []):
            return None, f"must be one of: {', '.join(self.choices or [])}"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return None, f"must match {self.pattern}"
        return value, None


class Hours(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: float = Field(default=4, gt=0)
    max: float = Field(default=24, gt=0)

    @model_validator(mode="after")
    def _order(self) -> Hours:
        if self.default > self.max:
            raise ValueError("default must not exceed max")
        return self


_SLURM_NAME = r"^[A-Za-z0-9_.+-]{1,64}(,[A-Za-z0-9_.+-]{1,64}){0,15}$"
_SLURM_OPTION = re.compile(r"^--[a-z][a-z0-9-]{0,40}(=[A-Za-z0-9_.,:=+@%/&|!*()\[\]-]{1,256})?$")


class SlurmOptions(BaseModel):
    """What a template adds on the Slurm backend; each ``sbatch`` entry must also be on the
    site's allow-list (``slurm.allowed_sbatch``), which the backend checks at launch."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = Field(default=None, pattern=_SLURM_NAME)
    constraint: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.,:&|!*()\[\]-]{1,256}$")
    qos: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.+-]{1,64}$")
    account: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.+-]{1,64}$")
    reservation: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.+-]{1,64}$")
    sbatch: list[str] = Field(default_factory=list, max_length=32)  # extra "#SBATCH --option[=value]"

    @field_validator("sbatch")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _SLURM_OPTION.match(item):
                raise ValueError(f"{item!r} is not of the form --option or --option=value")
        return value


class Listen(BaseModel):
    """Arguments appended to the command to say where to listen, one list per way."""

    model_config = ConfigDict(extra="forbid")

    port: list[str] = Field(default_factory=list)  # with {port} and {ip}: a TCP port on the node
    socket: list[str] = Field(default_factory=list)  # with {socket}: a Unix socket path

    @model_validator(mode="after")
    def _placeholders(self) -> Listen:
        if self.port and not any("{port}" in a for a in self.port):
            raise ValueError("port: the arguments must contain {port}")
        if self.socket and not any("{socket}" in a for a in self.socket):
            raise ValueError("socket: the arguments must contain {socket}")
        if not self.port and not self.socket:
            raise ValueError("give port or socket arguments (or both)")
        return self


class ServiceOptions(BaseModel):
    """How a ``kind: service`` template's instances scale (the launch may choose ``min_replicas``)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: Literal[0, 1] = 1  # the launch default; 0: scaled to zero when idle, woken by the next request
    idle_s: float = Field(default=900.0, gt=0)  # without requests this long, a service that may sleep sleeps
    max_replicas: int = Field(default=1, ge=1, le=64)  # the most processes a launch may ask for ({replicas})


class Template(BaseModel):
    """A catalog entry."""

    model_config = ConfigDict(extra="forbid")

    name: str
    title: str
    description: str = ""
    kind: Literal["workspace", "job", "service"] = "workspace"
    command: list[str] = Field(min_length=1)
    listen: Listen | None = None
    env: dict[str, str] = Field(default_factory=dict)
    ready_path: str | None = "api"  # probed under the base URL; None: alive means ready
    sizes: list[str] | None = None  # allowed sizes; None: all configured sizes
    default_size: str | None = None
    custom_size: bool = False  # besides the presets, any size up to the largest preset's (or the group policy's)
    single_instance: bool = False  # one active instance of it per user: a second launch names the first
    hours: Hours = Field(default_factory=Hours)
    start_timeout: float | None = Field(default=None, gt=0)
    idle_timeout_hours: float | None = Field(default=None, gt=0)
    # what else says it is in use: "jupyter" asks JupyterLab for busy kernels and its own last activity
    idle_check: Literal["traffic", "jupyter"] = "traffic"
    params: list[Param] = Field(default_factory=list)
    backends: list[str] | None = None  # allowed backends; None: all enabled
    groups: list[str] | None = None  # restrict to members of these groups
    slurm: SlurmOptions | None = None  # options for the Slurm backend (partition, constraint, #SBATCH)
    runtime: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")  # None: the hub's own environment
    input: Literal["none", "optional", "required"] = "none"  # jobs: whether they read a folder
    service: ServiceOptions | None = None  # services: scaling (default: ServiceOptions())
    source: str = Field(default="", exclude=True)

    @field_validator("name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'")
        return value

    @model_validator(mode="after")
    def _params_referenced_exist(self) -> Template:
        names = {p.name for p in self.params}
        if len(names) != len(self.params):
            raise ValueError("parameter names must be unique")
        for text in [*self.command, *self.env.values()]:
            for ref in _PARAM_REF.findall(text):
                if ref not in names:
                    raise ValueError(f"command refers to undefined parameter {ref!r}")
        if self.default_size and self.sizes and self.default_size not in self.sizes:
            raise ValueError("default_size must be one of sizes")
        if self.input != "none" and self.kind != "job":
            raise ValueError("only job templates read an input folder")
        if self.kind == "job":
            self.ready_path = None  # a job is ready once it runs; it listens nowhere
        if self.service is not None and self.kind != "service":
            raise ValueError("only service templates have service options")
        if self.kind == "service" and self.service is None:
            self.service = ServiceOptions()
        return self

    def check_params(self, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Validated parameter values with defaults, and errors keyed by name."""
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        by_name = {p.name: p for p in self.params}
        for key in given:
            if key not in by_name:
                errors[key] = "unknown parameter"
        for param in self.params:
            if param.name not in given or given[param.name] is None:
                if param.required and param.default is None:
                    errors[param.name] = "required"
                elif param.default is not None:
                    values[param.name] = param.default
                continue
            value, error = param.check(given[param.name])
            if error:
                errors[param.name] = error
            else:
                values[param.name] = value
        return values, errors

    def render(self, values: dict[str, Any], *, unix_socket: bool = False, replicas: int = 1,
               instance: str = "") -> tuple[list[str], dict[str, str]]:
        """The command and env with ``{param:NAME}``, ``{replicas}`` and ``{instance}`` (its name) filled in
        (argv elements, no shell).

        ``unix_socket``: the backend can give the instance a Unix socket; the
        ``listen.socket`` arguments are appended when the template has them,
        else the ``listen.port`` ones.
        """

        def fill(text: str) -> str:
            filled = _PARAM_REF.sub(lambda m: _as_text(values.get(m.group(1))), text)
            return filled.replace("{replicas}", str(replicas)).replace("{instance}", instance)

        command = list(self.command)
        if self.listen is not None:
            command += self.listen.socket if unix_socket and self.listen.socket else self.listen.port
        return [fill(arg) for arg in command], {k: fill(v) for k, v in self.env.items()}


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
