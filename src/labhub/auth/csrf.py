"""Proof that a cookie-authenticated write comes from the hub's own pages.

Two checks, both required:

* the request's ``Origin`` (or, without one, its ``Sec-Fetch-Site``) names the
  hub's own origin: a page on another port of the same host, a sibling
  subdomain or an instance's origin is refused, whatever cookies it managed
  to plant (cookies ignore ports and can be set for parent domains);
* a CSRF token bound to the session: an HMAC of the session cookie's digest
  under the hub's key, so a token is worthless with any other session and
  cannot be forged by overwriting a cookie.  Before login (the login, sign-up
  and setup forms) it is bound to a random nonce cookie instead.

Requests with a bearer token need neither: browsers never add one by themselves.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

from labhub.services import security

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request, *, public_url: str) -> bool:
    """Whether the browser says the request comes from the hub's own origin (or says nothing).

    Clients that send neither ``Origin`` nor ``Sec-Fetch-Site`` are not
    browsers a page could drive (every current browser sends ``Origin`` on
    writes); they still need the token.
    """
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        allowed = {_origin_of(public_url), f"{request.url.scheme}://{host}".lower()}
        return origin.lower() in allowed
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    return True


def for_session(key: bytes, session_secret: str) -> str:
    """The CSRF token of a logged-in session (pages carry it; writes must send it back)."""
    return security.derive(key, "csrf-session", security.digest(session_secret))


def for_nonce(key: bytes, nonce: str) -> str:
    """The CSRF token before login, bound to the nonce cookie."""
    return security.derive(key, "csrf-nonce", nonce)


def expected_token(request: Request, *, key: bytes, session_cookie: str, nonce_cookie: str) -> tuple[str, str | None]:
    """The CSRF token for this request's session, and a new nonce to set (when there is no session nor nonce)."""
    session = request.cookies.get(session_cookie)
    if session:
        return for_session(key, session), None
    nonce = request.cookies.get(nonce_cookie)
    fresh = None
    if not nonce or len(nonce) > 128:
        nonce = fresh = secrets.token_urlsafe(24)
    return for_nonce(key, nonce), fresh


def valid(request: Request, sent: str | None, *, key: bytes, session_cookie: str, nonce_cookie: str,
          public_url: str) -> bool:
    """Both checks for a cookie-authenticated write: origin, and the token ``sent`` with it."""
    if not same_origin(request, public_url=public_url):
        return False
    expected, fresh = expected_token(request, key=key, session_cookie=session_cookie, nonce_cookie=nonce_cookie)
    return fresh is None and bool(sent) and security.same(sent or "", expected)
