"""Request-side data: the :class:`Exchange` (one request and its response),
request header classification, and cookie helpers.  Kept free of I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .routes import Route
    from .upstream import UpstreamProtocol

# request header classes
(_H_PASS, _H_HOST, _H_ACCEPT, _H_AUTH, _H_COOKIE, _H_CLEN, _H_TE, _H_UPGRADE, _H_DROP,
 _H_ORIGIN, _H_SFS, _H_SFM, _H_XFF, _H_XFP) = range(14)
#: set by the proxy on requests it passes to the hub from an instance origin; never from a client
ORIGIN_HEADER = b"X-LabHub-Origin"
_H_KIND = {
    b"host": _H_HOST,
    b"accept": _H_ACCEPT,
    b"authorization": _H_AUTH,
    b"cookie": _H_COOKIE,
    b"content-length": _H_CLEN,
    b"transfer-encoding": _H_TE,
    b"upgrade": _H_UPGRADE,
    b"connection": _H_DROP,
    b"keep-alive": _H_DROP,
    b"proxy-connection": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    b"x-forwarded-for": _H_XFF,     # believed only from trusted proxies
    b"x-forwarded-proto": _H_XFP,
    b"x-forwarded-host": _H_DROP,
    b"forwarded": _H_DROP,
    b"x-labhub-origin": _H_DROP,
    b"origin": _H_ORIGIN,           # passed on, and checked on instance origins
    b"sec-fetch-site": _H_SFS,
    b"sec-fetch-mode": _H_SFM,
}
_COMMON = (b"User-Agent", b"Accept-Encoding", b"Accept-Language", b"Referer", b"Origin",
           b"Content-Type", b"Cache-Control", b"Pragma", b"X-XSRFToken", b"X-Requested-With",
           b"Sec-Fetch-Site", b"Sec-Fetch-Mode", b"Sec-Fetch-Dest", b"Sec-Fetch-User",
           b"Sec-WebSocket-Key", b"Sec-WebSocket-Version", b"Sec-WebSocket-Extensions",
           b"Sec-WebSocket-Protocol", b"If-None-Match", b"If-Modified-Since", b"Priority",
           b"Upgrade-Insecure-Requests", b"DNT", b"Range", b"Expect")
#: exact spellings seen on the wire -> class, to skip ``bytes.lower()`` for them
_H_FAST: dict[bytes, int] = {}
for _n in (*_H_KIND, *_COMMON):
    for _v in (_n, _n.lower(), _n.title(), b"-".join(p.capitalize() for p in _n.split(b"-"))):
        _H_FAST[_v] = _H_KIND.get(_v.lower(), _H_PASS)

_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


class Exchange:
    """One request and its response.  Class attributes are the defaults, so a
    new exchange only stores what differs (cheap to create)."""

    url = b""
    hbytes = 0
    method = b""
    host: bytes | None = None
    accept: bytes | None = None
    authz: bytes | None = None
    cookie: bytes | None = None
    origin: bytes | None = None
    sfs: bytes | None = None      # Sec-Fetch-Site
    sfm: bytes | None = None      # Sec-Fetch-Mode
    xff: bytes | None = None      # X-Forwarded-For, as the client sent it
    xfp: bytes | None = None      # X-Forwarded-Proto, as the client sent it
    proto: bytes | None = None    # the scheme the browser used, when a trusted proxy said so
    fwd = b""                     # X-Forwarded-* for upstream, when a trusted proxy sent them
    client: bytes | None = None   # the client's address as a trusted proxy gave it (else the peer's)
    origin_label: bytes | None = None  # for the hub: the instance origin this request came to
    on_origin = False             # an instance route reached on its own origin
    clen: bytes | None = None
    upgrade_hdr: bytes | None = None
    chunked = False
    keep_alive = True
    http10 = False
    upgrade = False
    head_done = False
    req_done = False
    resp_done = False
    discard = False
    retried = False
    pbytes = 0
    head = b""
    key: Any = None
    route: Route | None = None
    up: UpstreamProtocol | None = None

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.pending: list[bytes] = []

    def retryable(self) -> bool:
        return (self.method in _IDEMPOTENT and not self.chunked and not self.upgrade
                and (self.clen is None or self.clen.strip() == b"0"))


def strip_cookies(cookie: bytes, names: tuple[bytes, ...]) -> bytes | None:
    """``cookie`` without the cookies in ``names``; the others byte-for-byte."""
    for n in names:
        if n in cookie:
            break
    else:
        return cookie
    kept = [p for p in cookie.split(b";") if p.split(b"=", 1)[0].strip() not in names]
    out = b";".join(kept).strip()
    return out or None


def cookie_values(cookie: bytes, name_eq: bytes) -> list[bytes]:
    """Every non-empty value of the cookies whose ``name=`` is ``name_eq``, in header order."""
    found: list[bytes] = []
    i = cookie.find(name_eq)
    while i >= 0:
        if i == 0 or cookie[i - 1] in b" ;\t":
            start = i + len(name_eq)
            end = cookie.find(b";", start)
            value = (cookie[start:] if end < 0 else cookie[start:end]).strip()
            if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                value = value[1:-1]
            if value:
                found.append(value)
        i = cookie.find(name_eq, i + 1)
    return found
