"""One typed settings object for the whole hub.

Precedence: environment variables ``LABHUB_*`` > ``labhub.toml`` (in the data
directory, or the file named by ``LABHUB_CONFIG``) > defaults.  Nothing reads
the environment at import time: :func:`load_settings` builds the object once
and it is passed explicitly from there on.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict


class Size(BaseModel):
    """A named resource preset."""

    cpus: float = Field(gt=0)
    memory_mb: int = Field(gt=0)
    gpus: int = Field(default=0, ge=0)
    description: str = ""


DEFAULT_SIZES: dict[str, Size] = {
    "small": Size(cpus=1, memory_mb=2048, description="1 CPU, 2 GiB"),
    "medium": Size(cpus=2, memory_mb=4096, description="2 CPUs, 4 GiB"),
    "large": Size(cpus=4, memory_mb=8192, description="4 CPUs, 8 GiB"),
    "gpu": Size(cpus=4, memory_mb=16384, gpus=1, description="4 CPUs, 16 GiB, 1 GPU"),
}


class SlurmSettings(BaseModel):
    """The Slurm backend (enable with ``backends = ["local", "slurm"]``); env ``LABHUB_SLURM__<FIELD>``."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    max_gpus: int = Field(default=0, ge=0)  # GPUs one job may request; 0: the cluster offers none
    gres_style: Literal["gres", "gpus"] = "gres"  # --gres=gpu:N or --gpus=N
    hub_url: str | None = None  # where compute nodes call home; default: public_url, else the bind address
    hub_id: str = Field(default="labhub", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")  # marks this hub's jobs
    run_as: Literal["auto", "service", "accounts", "owner"] = "auto"
    account_prefix: str = "labhub-"  # run_as=accounts: system accounts <prefix><user>
    workdir: str = "{home}"  # the job's working directory on the nodes; {home} {user} {owner}
    output_dir: str | None = None  # job output on the nodes; default <data_dir>/slurm
    python: str = "python3"  # Python on the compute nodes, for LabHub's small launcher
    path: list[str] = Field(default_factory=list)  # prepended to the jobs' PATH (local runner)
    conf: str | None = None  # SLURM_CONF for the commands
    bin_dir: str | None = None  # where sbatch, squeue, ... live; default: PATH
    ssh_host: str | None = None  # run the commands on this login node over SSH
    ssh_user: str | None = None
    ssh_port: int = Field(default=22, gt=0, lt=65536)
    ssh_key: Path | None = None
    ssh_known_hosts: Path | None = None  # default ~/.ssh/known_hosts; host keys are always checked
    accounting: Literal["auto", "yes", "no"] = "auto"  # sacct for exit codes of finished jobs
    time_limit_slack_minutes: int = Field(default=2, ge=0)
    extra_sbatch: list[str] = Field(default_factory=list)  # site #SBATCH options for every job
    prologue: list[str] = Field(default_factory=list)  # site shell lines run before the launcher
    allowed_sbatch: list[str] | None = None  # options templates may add; default: a safe list
    poll_interval: float = Field(default=0.5, gt=0)  # squeue results are shared this long (s)
    command_timeout: float = Field(default=30.0, gt=0)
    kill_wait: float = Field(default=60.0, ge=0)  # after scancel, how long to wait for the job to end


class Settings(BaseSettings):
    """Hub configuration.  Every field can be set as ``LABHUB_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LABHUB_", extra="forbid", env_nested_delimiter="__")

    data_dir: Path = Path("labhub-data")
    bind: str = "127.0.0.1:8000"
    public_url: str | None = None  # e.g. https://hub.example.org; used in printed links
    database_url: str | None = None  # default: sqlite in data_dir
    templates_dir: Path | None = None  # site templates, in addition to the built-ins
    sizes: dict[str, Size] = Field(default_factory=lambda: dict(DEFAULT_SIZES))
    backends: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["local"])
    isolation: Literal["auto", "none"] = "auto"
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)

    reconcile_interval: float = Field(default=5.0, gt=0)
    start_timeout: float = Field(default=300.0, gt=0)  # seconds; templates may lower it
    stop_grace: float = Field(default=5.0, ge=0)
    activity_flush_interval: float = Field(default=30.0, gt=0)

    session_hours: float = Field(default=24 * 7, gt=0)
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)  # API/form bodies
    dev_mode: bool = False
    log_level: str = "info"

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("bind must look like HOST:PORT, e.g. 127.0.0.1:8000")
        return value

    @field_validator("backends", mode="before")
    @classmethod
    def _split_backends(cls, value: Any) -> Any:
        """Accept ``local,slurm`` as well as a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("sizes")
    @classmethod
    def _check_sizes(cls, value: dict[str, Size]) -> dict[str, Size]:
        if not value:
            raise ValueError("at least one size must be defined")
        return value

    @model_validator(mode="after")
    def _absolute_dirs(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.templates_dir is not None:
            self.templates_dir = self.templates_dir.expanduser().resolve()
        return self

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'labhub.sqlite'}"

    @property
    def base_url(self) -> str:
        """Where users reach the hub, for links printed or mailed."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host if self.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


class _TomlSource(PydanticBaseSettingsSource):
    """``labhub.toml``: from ``LABHUB_CONFIG``, else the data directory."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("LABHUB_CONFIG")
        if path is None:
            data_dir = Path(os.environ.get("LABHUB_DATA_DIR", "labhub-data"))
            candidate = data_dir / "labhub.toml"
            if not candidate.is_file():
                return {}
            path = str(candidate)
        with open(path, "rb") as fh:
            return tomllib.load(fh)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from env, config file and explicit overrides (CLI flags)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def load_secret_key(data_dir: Path) -> bytes:
    """The hub's signing key: generated on first run, kept in the data dir (0600)."""
    path = data_dir / "secret.key"
    try:
        key = path.read_bytes().strip()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key
