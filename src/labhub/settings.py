"""One typed settings object for the whole hub.

Precedence: environment variables ``LABHUB_*`` > ``labhub.toml`` (in the data
directory, or the file named by ``LABHUB_CONFIG``) > defaults.  Nothing reads
the environment at import time: :func:`load_settings` builds the object once
and it is passed explicitly from there on.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
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
    node_networks: list[str] | None = None  # CIDRs compute nodes may report as their address (call-home)
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


def _split_commas(value: Any) -> Any:
    """Accept ``a,b`` as well as a JSON list for list settings given in the environment."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class SmtpSettings(BaseModel):
    """Outgoing mail (approval requests and decisions); env ``LABHUB_SMTP__<FIELD>``.  No host: mails are logged."""

    model_config = ConfigDict(extra="forbid")

    host: str | None = None
    port: int = Field(default=587, gt=0, lt=65536)
    security: Literal["starttls", "tls", "none"] = "starttls"  # tls: implicit TLS (port 465)
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(default="LabHub <labhub@localhost>", max_length=320)  # the From: header
    timeout: float = Field(default=15.0, gt=0)


class OidcProviderSettings(BaseModel):
    """One OpenID Connect provider: ``[oidc.<name>]`` in labhub.toml, or ``LABHUB_OIDC__<NAME>__<FIELD>``.

    A ``preset`` (globus, indigo-iam, entra, keycloak, cilogon) fills in the
    discovery URL, scopes and claims; anything set here wins.  See docs/identity.md.
    """

    model_config = ConfigDict(extra="forbid")

    preset: Literal["generic", "globus", "indigo-iam", "entra", "keycloak", "cilogon"] = "generic"
    title: str | None = None  # the login button: "Log in with <title>"
    discovery_url: str | None = None  # .../.well-known/openid-configuration
    server: str | None = None  # indigo-iam, keycloak: the provider's base URL
    realm: str | None = None  # keycloak
    tenant: str | None = None  # entra: the directory (tenant) id
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None  # None: a public client (PKCE only)
    token_auth: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"  # noqa: S105
    scopes: list[str] | None = None
    username_claim: str | None = None  # which claim becomes the LabHub user name (sanitised)
    email_claim: str = "email"
    groups_claim: str | None = None  # a list (or space-separated string) of groups / entitlements
    required_groups: list[str] = Field(default_factory=list)  # any one of these is needed to log in
    sync_groups: bool = False  # make LabHub group memberships follow the groups claim
    group_prefix: str = ""  # only claim values starting with this are synced (the prefix is dropped)
    create_users: bool = True  # False: only identities an admin linked (labhub user link) may log in
    approval_required: bool | None = None  # None: follow approval_required

    @field_validator("required_groups", "scopes", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _split_commas(value)


class ThrottleSettings(BaseModel):
    """Login back-off: after ``free`` failures, each attempt waits twice as long as the last."""

    model_config = ConfigDict(extra="forbid")

    account_free: int = Field(default=5, ge=1)  # failures per account name and client address before back-off
    address_free: int = Field(default=20, ge=1)  # failures per client address before back-off
    account_attack: int = Field(default=10, ge=1)  # failures per account name (all addresses): then 1 free each
    base_delay: float = Field(default=1.0, gt=0)  # seconds, doubled per further failure
    max_delay: float = Field(default=900.0, gt=0)
    forget_after: float = Field(default=3600.0, gt=0)  # a key's failures are forgotten after this quiet time
    signups_per_hour: int = Field(default=10, ge=1)  # sign-up attempts per client address


class StorageSettings(BaseModel):
    """Folders (uploaded inputs) and artifacts (what jobs leave); env ``LABHUB_STORAGE__<FIELD>``.

    Sizes are bytes.  A user's storage is their folders plus the artifacts of their jobs still kept.
    """

    model_config = ConfigDict(extra="forbid")

    dir: Path | None = None  # folders and job directories; default <data_dir>; on Slurm, a path the nodes share
    max_file_bytes: int = Field(default=4 * 1024**3, gt=0)  # one uploaded (or extracted) file
    max_folder_bytes: int = Field(default=20 * 1024**3, gt=0)
    max_folder_files: int = Field(default=20_000, gt=0)
    max_user_bytes: int = Field(default=50 * 1024**3, gt=0)
    max_folders: int = Field(default=200, gt=0)  # per user
    max_ratio: float = Field(default=200.0, gt=1)  # extracted bytes per archive byte (decompression bombs)
    artifact_days: float = Field(default=30.0, gt=0)  # artifacts are kept this long after their job ends
    max_artifacts: int = Field(default=10_000, gt=0)  # files listed (and bundled) per job


class ServicesSettings(BaseModel):
    """Services (model-serving endpoints); env ``LABHUB_SERVICES__<FIELD>``."""

    model_config = ConfigDict(extra="forbid")

    public_rate: float = Field(default=10.0, gt=0)  # a public service's requests per second per client address
    public_burst: float = Field(default=20.0, ge=1)  # ... and how many may come at once
    wake_timeout_s: float = Field(default=120.0, gt=0)  # how long a request waits for a service scaled to zero
    wake_retry_after_s: int = Field(default=10, ge=1)  # the Retry-After of the 503 when it did not start in time


class QuotaSettings(BaseModel):
    """Every user's limits unless their own quota or a group's says otherwise (docs/policies.md);
    env ``LABHUB_QUOTA__<FIELD>``.  ``None``: no limit."""

    model_config = ConfigDict(extra="forbid")

    instances: int | None = Field(default=None, ge=0)  # active instances (queued ones do not count)
    cpus: float | None = Field(default=None, ge=0)
    memory_mb: int | None = Field(default=None, ge=0)
    gpus: int | None = Field(default=None, ge=0)
    gpu_hours: float | None = Field(default=None, ge=0)  # per period
    cpu_hours: float | None = Field(default=None, ge=0)  # per period
    period: Literal["day", "week", "month"] = "month"  # GPU- and CPU-hours are counted per calendar period (UTC)


class CapacitySettings(BaseModel):
    """What the local backend may hand out at once; env ``LABHUB_CAPACITY__<FIELD>``.  A launch that
    does not fit in what is free waits in the admission queue."""

    model_config = ConfigDict(extra="forbid")

    cpus: float | None = Field(default=None, gt=0)  # None: not limited (the kernel shares CPU time)
    memory_mb: int | None = Field(default=None, gt=0)  # None: not limited
    gpus: int | None = Field(default=None, ge=0)  # None: the GPUs found (NVML, /proc/driver/nvidia); always exclusive


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
    account_prefix: str = Field(default="labhub-", pattern=r"^[a-z_][a-z0-9_-]{0,15}$")  # per-user system accounts
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    # the shortest idle time after which any instance may be culled, whatever its template says (hours; 0: none)
    idle_min_hours: float = Field(default=0.0, ge=0)
    runtimes_dir: Path | None = None  # built runtimes (virtualenvs instances run in); default <data_dir>/runtimes
    mlaas4hep_routes: bool = True  # MLaaS4HEP's /upload, /submit, /status_docker, ... (docs/jobs.md)

    reconcile_interval: float = Field(default=5.0, gt=0)
    start_timeout: float = Field(default=300.0, gt=0)  # seconds; templates may lower it
    stop_grace: float = Field(default=5.0, ge=0)
    # owners are warned (instance page, event, e-mail) this long before an instance expires; 0: never
    expiry_warning_minutes: float = Field(default=30.0, ge=0)
    activity_flush_interval: float = Field(default=30.0, gt=0)
    # several replicas (docs/operations.md): a replica's claim on an instance lasts lease_seconds and is
    # renewed every third of it; another replica takes the work over once it has lapsed
    lease_seconds: float = Field(default=6.0, ge=0.5, le=300)
    # a replica's name in leases; default: host-pid-random
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

    # where instances are served (docs/operations.md, "Origins"): "subdomain" gives every instance an
    # origin of its own, <instance>--<user>.<apps_domain>; "path" serves them under the hub's origin at
    # /user/<user>/<instance>/ (for sites without a wildcard domain; user code then shares the hub's origin)
    origins: Literal["subdomain", "path"] = "subdomain"
    apps_domain: str = Field(default="localhost", max_length=190, pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")

    session_hours: float = Field(default=24 * 7, gt=0)
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    # reverse proxies (addresses or CIDRs) whose X-Forwarded-For/-Proto LabHub believes; none by default:
    # instances run on this machine too, so loopback is not trustworthy by itself
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)  # API/form bodies

    # identity and access (docs/identity.md)
    signup: Literal["open", "closed"] = "closed"  # open: anyone may ask for an account at /signup
    approval_required: bool = True  # new sign-ups (and new OIDC users) wait for an admin
    approval_emails: Annotated[list[str], NoDecode] = Field(default_factory=list)  # besides admins with an e-mail
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    oidc: dict[str, OidcProviderSettings] = Field(default_factory=dict)
    login_throttle: ThrottleSettings = Field(default_factory=ThrottleSettings)
    dev_mode: bool = False
    log_level: str = "info"

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("bind must look like HOST:PORT, e.g. 127.0.0.1:8000")
        return value

    @field_validator("backends", "approval_emails", "trusted_proxies", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("approval_emails")
    @classmethod
    def _check_emails(cls, value: list[str]) -> list[str]:
        for address in value:
            if not _EMAIL_RE.match(address):
                raise ValueError(f"{address!r} is not an e-mail address")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (CIDR)") from None
        return value

    @field_validator("oidc")
    @classmethod
    def _check_oidc_names(cls, value: dict[str, OidcProviderSettings]) -> dict[str, OidcProviderSettings]:
        for name in value:
            if not _PROVIDER_RE.match(name):
                raise ValueError(f"provider name {name!r} must be 1-32 characters of a-z, 0-9 and '-'")
        return value

    @field_validator("sizes")
    @classmethod
    def _check_sizes(cls, value: dict[str, Size]) -> dict[str, Size]:
        if not value:
            raise ValueError("at least one size must be defined")
        return value

    @model_validator(mode="after")
    def _resolvable_providers(self) -> Settings:
        from labhub.auth.providers import ProviderConfigError, resolve_all

        try:
            resolve_all(self.oidc)
        except ProviderConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _absolute_dirs(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.templates_dir is not None:
            self.templates_dir = self.templates_dir.expanduser().resolve()
        self.runtimes_dir = (self.runtimes_dir or self.data_dir / "runtimes").expanduser().resolve()
        self.storage.dir = (self.storage.dir or self.data_dir).expanduser().resolve()
        return self

    @model_validator(mode="after")
    def _hub_not_above_apps(self) -> Settings:
        if self.origins != "subdomain":
            return self
        hub = self.hub_host
        apps = self.apps_domain
        if hub == apps or apps.endswith("." + hub):
            raise ValueError(
                f"apps_domain: the hub's host {hub!r} must not be the instances' domain {apps!r} or a parent of it "
                f"(instance pages could set cookies the hub reads); serve the hub on another host, e.g. "
                f"{'127.0.0.1' if apps == 'localhost' else 'hub.' + apps.partition('.')[2]}")
        if hub.endswith("." + apps):
            raise ValueError(f"apps_domain: the hub's host {hub!r} must not be inside the instances' domain {apps!r}")
        return self

    @property
    def hub_host(self) -> str:
        """The host name users reach the hub at (from public_url, else the bind address)."""
        from urllib.parse import urlsplit

        return (urlsplit(self.base_url).hostname or "").lower()

    @property
    def secure_cookies(self) -> bool:
        """Whether cookies are Secure (and ``__Host-`` prefixed): served over HTTPS."""
        if self.cookie_secure != "auto":
            return self.cookie_secure == "always"
        return (self.public_url or "").startswith("https://")

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


_EMAIL_RE = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")
_PROVIDER_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


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
