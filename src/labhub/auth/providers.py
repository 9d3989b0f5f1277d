"""OIDC provider presets and the resolved configuration of each enabled provider.

A preset fills in what is the same for every site using that provider (the
discovery URL pattern, scopes, which claim names the user and which carries
groups); the site's settings fill in the rest and override anything.  The
presets are documented in docs/identity.md.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass, field

from labhub.settings import OidcProviderSettings


@dataclass(frozen=True)
class Preset:
    title: str
    discovery: str | None  # with {server}, {realm}, {tenant} placeholders; None: give discovery_url
    scopes: tuple[str, ...]
    username_claim: str
    groups_claim: str | None
    needs: tuple[str, ...] = ()  # settings the discovery pattern needs


PRESETS: dict[str, Preset] = {
    "generic": Preset("OpenID Connect", None, ("openid", "profile", "email"), "preferred_username", None),
    # Globus Auth: preferred_username is "name@idp.example" (the local part becomes the user name);
    # group memberships are not in the ID token (they need the Globus Groups API).
    "globus": Preset("Globus", "https://auth.globus.org/.well-known/openid-configuration",
                     ("openid", "profile", "email"), "preferred_username", None),
    # INDIGO IAM (WLCG IAM): groups in the "groups" claim (names, with "/" for sub-groups).
    "indigo-iam": Preset("INDIGO IAM", "{server}/.well-known/openid-configuration",
                         ("openid", "profile", "email"), "preferred_username", "groups", ("server",)),
    # Microsoft Entra ID (Azure AD), single tenant: "groups" holds group object ids once the app
    # registration emits them (groupMembershipClaims); "roles" is an alternative for app roles.
    "entra": Preset("Microsoft", "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration",
                    ("openid", "profile", "email"), "preferred_username", "groups", ("tenant",)),
    # Keycloak: "groups" needs a Group Membership mapper on the client (full path off gives plain names).
    "keycloak": Preset("Keycloak", "{server}/realms/{realm}/.well-known/openid-configuration",
                       ("openid", "profile", "email"), "preferred_username", "groups", ("server", "realm")),
    # CILogon: e-mail names the user; isMemberOf carries groups where the home IdP releases them.
    "cilogon": Preset("CILogon", "https://cilogon.org/.well-known/openid-configuration",
                      ("openid", "email", "profile", "org.cilogon.userinfo"), "email", "isMemberOf"),
}


@dataclass(frozen=True)
class Provider:
    """One enabled provider, everything resolved."""

    name: str
    title: str
    discovery_url: str
    client_id: str
    client_secret: str | None
    token_auth: str
    scopes: tuple[str, ...]
    username_claim: str
    email_claim: str
    groups_claim: str | None
    required_groups: frozenset[str] = field(default_factory=frozenset)
    sync_groups: bool = False
    group_prefix: str = ""
    create_users: bool = True
    approval_required: bool | None = None

    @property
    def source(self) -> str:
        """What group memberships synced from this provider are marked with."""
        return f"oidc:{self.name}"


class ProviderConfigError(ValueError):
    pass


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """An https URL (plain http only on the loopback interface, for tests and development)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return url
    raise ProviderConfigError(f"{what} must be an https:// URL (http only on localhost), not {url!r}")


def resolve(name: str, cfg: OidcProviderSettings) -> Provider:
    """The provider ``name`` as configured, with its preset applied; ProviderConfigError names what is missing."""
    preset = PRESETS[cfg.preset]
    discovery = cfg.discovery_url
    if discovery is None:
        if preset.discovery is None:
            raise ProviderConfigError(f"oidc.{name}.discovery_url is required (preset {cfg.preset!r})")
        values = {"server": (cfg.server or "").rstrip("/"), "realm": cfg.realm or "", "tenant": cfg.tenant or ""}
        missing = [key for key in preset.needs if not values[key]]
        if missing:
            raise ProviderConfigError(f"oidc.{name}: preset {cfg.preset!r} needs " + ", ".join(
                f"oidc.{name}.{key}" for key in missing))
        discovery = preset.discovery.format(**{k: urllib.parse.quote(v, safe=":/") for k, v in values.items()})
    check_url(discovery, f"oidc.{name}.discovery_url")
    groups_claim = cfg.groups_claim or preset.groups_claim
    if (cfg.required_groups or cfg.sync_groups) and not groups_claim:
        raise ProviderConfigError(f"oidc.{name}.groups_claim is needed for required_groups / sync_groups")
    scopes = tuple(cfg.scopes) if cfg.scopes else preset.scopes
    if "openid" not in scopes:
        scopes = ("openid", *scopes)
    return Provider(
        name=name, title=cfg.title or preset.title, discovery_url=discovery, client_id=cfg.client_id,
        client_secret=cfg.client_secret.get_secret_value() if cfg.client_secret else None,
        token_auth=cfg.token_auth, scopes=scopes, username_claim=cfg.username_claim or preset.username_claim,
        email_claim=cfg.email_claim, groups_claim=groups_claim, required_groups=frozenset(cfg.required_groups),
        sync_groups=cfg.sync_groups, group_prefix=cfg.group_prefix, create_users=cfg.create_users,
        approval_required=cfg.approval_required,
    )


def resolve_all(configured: dict[str, OidcProviderSettings]) -> dict[str, Provider]:
    return {name: resolve(name, cfg) for name, cfg in configured.items()}
