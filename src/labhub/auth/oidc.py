"""OpenID Connect login (authorization code flow with PKCE, state and nonce), on Authlib and joserfc.

:class:`OidcClient` talks to one provider: discovery, the authorization URL,
the code exchange and the ID token check (signature against the provider's
published keys, issuer, audience, expiry, nonce, ``at_hash``).  The browser
carries the flow's secrets between the two legs in a cookie signed with the
hub key (:class:`FlowState`), so the callback only completes in the browser
that started the login.  Nothing here touches the database or FastAPI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from labhub.auth.flow import FLOW_TTL, FlowState, OidcError, OidcRegistry  # noqa: F401 - re-exported
from labhub.auth.providers import Provider, check_url
from labhub.services import security

log = logging.getLogger(__name__)

METADATA_TTL = 3600.0
JWKS_MIN_REFRESH = 30.0  # an unknown key id refetches the keys at most this often
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
LEEWAY = 60  # seconds of clock skew tolerated on exp / iat


class OidcClient:
    """One provider.  Discovery and keys are fetched lazily and cached."""

    def __init__(self, provider: Provider, http: httpx.AsyncClient, *, clock: Callable[[], float] = time.time) -> None:
        self.provider = provider
        self.http = http
        self.clock = clock
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    # -- discovery ---------------------------------------------------------------------------------
    async def metadata(self) -> dict[str, Any]:
        if self._metadata is not None and self.clock() - self._metadata_at < METADATA_TTL:
            return self._metadata
        try:
            resp = await self.http.get(self.provider.discovery_url)
            resp.raise_for_status()
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.error("OIDC %s: discovery at %s failed: %s", self.provider.name, self.provider.discovery_url, exc)
            raise OidcError("provider_unreachable", f"{self.provider.title} cannot be reached right now; "
                            "try again later") from None
        for key in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(data.get(key), str):
                raise OidcError("provider_misconfigured", f"{self.provider.title}'s discovery document lacks {key}")
            if key != "issuer":
                check_url(data[key], f"{self.provider.name} {key}")
        self._metadata, self._metadata_at = data, self.clock()
        return data

    async def _key_set(self, *, refresh: bool = False) -> KeySet:
        if self._keys is not None and not refresh:
            return self._keys
        if refresh and self._keys is not None and self.clock() - self._keys_at < JWKS_MIN_REFRESH:
            return self._keys
        meta = await self.metadata()
        try:
            resp = await self.http.get(meta["jwks_uri"])
            resp.raise_for_status()
            self._keys = KeySet.import_key_set(resp.json())
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            log.error("OIDC %s: fetching keys failed: %s", self.provider.name, exc)
            raise OidcError("provider_unreachable", f"{self.provider.title}'s keys cannot be fetched") from None
        self._keys_at = self.clock()
        return self._keys

    # -- the first leg -------------------------------------------------------------------------------
    async def begin(self, *, redirect_uri: str, next_url: str) -> tuple[str, FlowState]:
        """The provider's authorization URL and the state to keep in the browser."""
        meta = await self.metadata()
        flow = FlowState(provider=self.provider.name, state=generate_token(32), nonce=generate_token(32),
                         verifier=generate_token(64), next=next_url, expires=int(self.clock()) + FLOW_TTL)
        url = prepare_grant_uri(
            meta["authorization_endpoint"], client_id=self.provider.client_id, response_type="code",
            redirect_uri=redirect_uri, scope=" ".join(self.provider.scopes), state=flow.state, nonce=flow.nonce,
            code_challenge=create_s256_code_challenge(flow.verifier), code_challenge_method="S256",
        )
        return url, flow

    # -- the second leg ------------------------------------------------------------------------------
    async def finish(self, *, params: Mapping[str, str], flow: FlowState, redirect_uri: str) -> dict[str, Any]:
        """Check the callback, exchange the code and return the verified claims (ID token + userinfo)."""
        if flow.provider != self.provider.name:
            raise OidcError("bad_state", "this login was started for another provider; start again")
        if "error" in params:  # grants nothing, so it needs no state to be believed
            detail = params.get("error_description") or params["error"]
            raise OidcError("provider_refused", f"{self.provider.title} did not log you in: {detail[:200]}")
        if not security.same(params.get("state", ""), flow.state):
            raise OidcError("bad_state", "the login's state does not match this browser's; start again")
        code = params.get("code", "")
        if not code:
            raise OidcError("bad_response", f"{self.provider.title} sent no authorization code")
        tokens = await self._exchange(code, flow, redirect_uri)
        claims = await self._verify_id_token(tokens["id_token"], tokens["access_token"], flow.nonce)
        wanted = [c for c in (self.provider.username_claim, self.provider.email_claim, self.provider.groups_claim) if c]
        if any(c not in claims for c in wanted):
            claims = {**await self._userinfo(tokens["access_token"], claims["sub"]), **claims}
        return claims

    async def _exchange(self, code: str, flow: FlowState, redirect_uri: str) -> dict[str, Any]:
        meta = await self.metadata()
        p = self.provider
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": flow.verifier}
        auth: httpx.BasicAuth | None = None
        if p.client_secret is None or p.token_auth == "client_secret_post":  # noqa: S105 - a method name
            data["client_id"] = p.client_id
            if p.client_secret is not None:
                data["client_secret"] = p.client_secret
        else:  # RFC 6749 2.3.1: both parts form-encoded, then Basic
            from urllib.parse import quote_plus

            auth = httpx.BasicAuth(quote_plus(p.client_id), quote_plus(p.client_secret))
        try:
            resp = await self.http.post(meta["token_endpoint"], data=data, auth=auth,
                                        headers={"Accept": "application/json"})
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.error("OIDC %s: token request failed: %s", p.name, exc)
            raise OidcError("provider_unreachable", f"{p.title} did not answer; try again") from None
        if resp.status_code != 200 or not isinstance(body, dict) or "error" in body:
            error = body.get("error", resp.status_code) if isinstance(body, dict) else resp.status_code
            log.warning("OIDC %s: token request refused: %s", p.name, error)
            raise OidcError("token_refused", f"{p.title} refused the login ({error}); start again")
        if not isinstance(body.get("id_token"), str) or not isinstance(body.get("access_token"), str):
            raise OidcError("bad_response", f"{p.title} sent no ID token")
        return body

    async def _verify_id_token(self, id_token: str, access_token: str, nonce: str) -> dict[str, Any]:
        meta = await self.metadata()
        algorithms = [a for a in meta.get("id_token_signing_alg_values_supported", ["RS256"]) if a in ASYMMETRIC]
        registry = JWSRegistry(algorithms=algorithms or ["RS256"], strict_check_header=False)
        try:
            try:
                token = jwt.decode(id_token, await self._key_set(), registry=registry)
            except (JoseError, ValueError):  # perhaps a rotated key: fetch the keys again, once
                token = jwt.decode(id_token, await self._key_set(refresh=True), registry=registry)
            options = {"iss": {"essential": True, "value": meta["issuer"]},
                       "aud": {"essential": True, "value": self.provider.client_id}}
            claims = CodeIDToken(token.claims, token.header, options,
                                 {"nonce": nonce, "client_id": self.provider.client_id, "access_token": access_token})
            claims.validate(now=int(self.clock()), leeway=LEEWAY)
        except (JoseError, ValueError) as exc:
            reason = "bad_nonce" if "nonce" in str(exc) else "bad_token"
            log.warning("OIDC %s: ID token rejected: %s", self.provider.name, exc)
            raise OidcError(reason, f"{self.provider.title}'s ID token did not pass the checks ({exc}); start again") \
                from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise OidcError("bad_token", "the ID token names no subject")
        return dict(claims)

    async def _userinfo(self, access_token: str, subject: str) -> dict[str, Any]:
        meta = await self.metadata()
        endpoint = meta.get("userinfo_endpoint")
        if not isinstance(endpoint, str):
            return {}
        check_url(endpoint, f"{self.provider.name} userinfo_endpoint")
        try:
            resp = await self.http.get(endpoint, headers={"Authorization": f"Bearer {access_token}"})
            resp.raise_for_status()
            info = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("OIDC %s: userinfo failed: %s", self.provider.name, exc)
            return {}
        if not isinstance(info, dict) or info.get("sub") != subject:  # OIDC core 5.3.2
            log.warning("OIDC %s: userinfo is about another subject; ignored", self.provider.name)
            return {}
        return info
