"""The light half of OIDC login: errors, the sealed flow state, and the provider registry.

The hub imports only this at start; the protocol code in :mod:`labhub.auth.oidc`
(Authlib, joserfc, cryptography, httpx) is imported the first time a provider
is used, so a hub without OIDC does not pay for it in start time or memory.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from labhub.auth.providers import Provider
from labhub.services import security

if TYPE_CHECKING:
    import httpx

    from labhub.auth.oidc import OidcClient

FLOW_TTL = 600  # seconds a login may take at the provider


class OidcError(Exception):
    """A login that must not complete.  ``reason`` is for the audit log, ``message`` for the user."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class FlowState:
    """What the callback needs to check: kept in a signed cookie between the two legs."""

    provider: str
    state: str
    nonce: str
    verifier: str
    next: str
    expires: int

    def seal(self, key: bytes) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(asdict(self), separators=(",", ":")).encode()).decode()
        return f"{payload}.{security.derive(key, 'oidc-flow', payload)}"

    @classmethod
    def unseal(cls, value: str, key: bytes, *, now: float | None = None) -> FlowState | None:
        """The state if ``value`` carries a valid signature and has not expired, else None."""
        payload, _, signature = value.rpartition(".")
        if not payload or not security.same(signature, security.derive(key, "oidc-flow", payload)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload.encode()))
            flow = cls(**data)
        except (ValueError, TypeError):
            return None
        if flow.expires < (now if now is not None else time.time()):
            return None
        return flow


class OidcRegistry:
    """The hub's enabled providers and the one HTTP client they share."""

    def __init__(self, providers: Mapping[str, Provider], *, timeout: float = 15.0) -> None:
        self.providers = dict(providers)
        self._http: httpx.AsyncClient | None = None
        self._clients: dict[str, OidcClient] = {}
        self.timeout = timeout

    def get(self, name: str) -> OidcClient | None:
        provider = self.providers.get(name)
        if provider is None:
            return None
        if name not in self._clients:
            import httpx

            from labhub.auth.oidc import OidcClient

            if self._http is None:
                self._http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False,
                                               headers={"User-Agent": "LabHub"})
            self._clients[name] = OidcClient(provider, self._http)
        return self._clients[name]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self._clients.clear()
