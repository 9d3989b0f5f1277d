"""The ID token checks, one forged property at a time, against a scripted provider (httpx.MockTransport)."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from labhub.auth.oidc import FlowState, OidcClient, OidcError
from labhub.auth.providers import ProviderConfigError, resolve
from labhub.settings import OidcProviderSettings

ISSUER = "https://idp.example"
KEY = RSAKey.generate_key(2048, parameters={"kid": "good"}, private=True)
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "good"}, private=True)  # same kid, another key


def at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def id_token(sent_nonce: str, *, key=KEY, alg="RS256", **changes) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "u1", "aud": "labhub", "exp": now + 300, "iat": now, "nonce": sent_nonce,
              "at_hash": at_hash("AT"), "preferred_username": "u1"}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": "good"}, claims, key)


def client_for(token_factory) -> OidcClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={
                "issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/auth", "token_endpoint": f"{ISSUER}/token",
                "jwks_uri": f"{ISSUER}/jwks", "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"]})
        if request.url.path == "/jwks":
            return httpx.Response(200, json={"keys": [KEY.as_dict(private=False)]})
        if request.url.path == "/token":
            form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
            assert form["code_verifier"] and form["grant_type"] == "authorization_code"
            assert request.headers["authorization"].startswith("Basic ")
            return httpx.Response(200, json={"access_token": "AT", "token_type": "Bearer",
                                             "id_token": token_factory()})
        return httpx.Response(404)

    provider = resolve("t", OidcProviderSettings(discovery_url=f"{ISSUER}/.well-known/openid-configuration",
                                                 client_id="labhub", client_secret="secret"))  # noqa: S106
    return OidcClient(provider, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


async def run_flow(make_token) -> dict:
    holder: dict = {}
    client = client_for(lambda: make_token(holder["flow"].nonce))
    _, flow = await client.begin(redirect_uri="https://hub/cb", next_url="/")
    holder["flow"] = flow
    return await client.finish(params={"code": "c", "state": flow.state}, flow=flow, redirect_uri="https://hub/cb")


async def test_a_good_token_passes():
    claims = await run_flow(lambda nonce: id_token(nonce))
    assert claims["sub"] == "u1"


def unsigned(nonce: str) -> str:
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none"}).encode()).rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps({"iss": ISSUER, "sub": "u1", "aud": "labhub", "nonce": nonce,
                                                "exp": int(time.time()) + 60, "iat": int(time.time())}).encode())
    return f"{header}.{body.rstrip(b'=').decode()}."


@pytest.mark.parametrize("forge, reason", [
    (lambda n: id_token(n, key=OTHER_KEY), "bad_token"),  # signed by someone else
    (lambda n: id_token(n, aud="another-client"), "bad_token"),
    (lambda n: id_token(n, iss="https://evil.example"), "bad_token"),
    (lambda n: id_token(n, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), "bad_token"),
    (lambda n: id_token("someone-elses-nonce"), "bad_nonce"),
    (lambda n: id_token(n, nonce=None), "bad_nonce"),
    (lambda n: id_token(n, at_hash="AAAAAAAAAAAAAAAAAAAAAA"), "bad_token"),
    (lambda n: id_token(n, key=OctKey.import_key(b"secret" * 6), alg="HS256"), "bad_token"),  # symmetric: refused
    (unsigned, "bad_token"),
])
async def test_forged_tokens_are_refused(forge, reason):
    with pytest.raises(OidcError) as caught:
        await run_flow(forge)
    assert caught.value.reason == reason


def test_the_flow_cookie_is_signed_and_expires():
    key = b"k" * 32
    flow = FlowState(provider="p", state="s", nonce="n", verifier="v", next="/", expires=int(time.time()) + 60)
    sealed = flow.seal(key)
    assert FlowState.unseal(sealed, key) == flow
    assert FlowState.unseal(sealed, b"x" * 32) is None
    payload, sig = sealed.rsplit(".", 1)
    tampered = base64.urlsafe_b64encode(json.dumps({**flow.__dict__, "next": "//evil"}).encode()).decode()
    assert FlowState.unseal(f"{tampered}.{sig}", key) is None
    assert FlowState.unseal(sealed, key, now=time.time() + 120) is None


def test_presets_and_their_required_settings():
    entra = resolve("ms", OidcProviderSettings(preset="entra", tenant="abc-123", client_id="x"))
    assert entra.discovery_url == "https://login.microsoftonline.com/abc-123/v2.0/.well-known/openid-configuration"
    assert entra.groups_claim == "groups" and entra.title == "Microsoft"
    kc = resolve("kc", OidcProviderSettings(preset="keycloak", server="https://sso.lab.example/", realm="lab",
                                            client_id="x"))
    assert kc.discovery_url == "https://sso.lab.example/realms/lab/.well-known/openid-configuration"
    assert resolve("g", OidcProviderSettings(preset="globus", client_id="x")).discovery_url.startswith(
        "https://auth.globus.org/")
    assert resolve("c", OidcProviderSettings(preset="cilogon", client_id="x")).username_claim == "email"
    iam = resolve("i", OidcProviderSettings(preset="indigo-iam", server="https://iam.example", client_id="x"))
    assert iam.discovery_url == "https://iam.example/.well-known/openid-configuration"
    for bad in (OidcProviderSettings(preset="keycloak", server="https://sso", client_id="x"),
                OidcProviderSettings(preset="generic", client_id="x"),
                OidcProviderSettings(discovery_url="http://idp.example/.well-known/openid-configuration",
                                     client_id="x"),
                OidcProviderSettings(preset="globus", client_id="x", required_groups=["a"])):
        with pytest.raises(ProviderConfigError):
            resolve("bad", bad)
