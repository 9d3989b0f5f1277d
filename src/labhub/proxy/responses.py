"""Responses the proxy writes itself (errors, login redirects).

All of them are small and built as bytes in one go; none of this is on the
fast path of a proxied request.
"""

from __future__ import annotations

import html
import json

REASONS: dict[int, bytes] = {
    302: b"Found",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}

CONN_CLOSE = b"Connection: close\r\n"
CONN_KEEP = b"Connection: keep-alive\r\n"


def wants_html(accept: bytes | None) -> bool:
    return accept is not None and b"text/html" in accept


def error(status: int, detail: str, *, html_page: bool, head_only: bool = False,
          conn: bytes = b"", extra: bytes = b"") -> bytes:
    """A complete response with a JSON (or, for browsers, HTML) body."""
    reason = REASONS[status]
    if html_page:
        title = f"{status} {reason.decode()}"
        body = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title} · LabHub</title>'
                f'<link rel="stylesheet" href="/static/labhub.css"></head><body><main id="main">'
                f'<section class="card narrow error-page"><h1>{title}</h1><p class="message">{html.escape(detail)}</p>'
                f'<p class="row"><a class="button primary" href="/">Go to Home</a></p></section></main>'
                f"</body></html>\n").encode()
        ctype = b"text/html; charset=utf-8"
    else:
        body = json.dumps({"detail": detail}).encode()
        ctype = b"application/json"
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, reason),
        b"Content-Type: ", ctype, b"\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Cache-Control: no-store\r\n",
        extra, conn, b"\r\n",
        b"" if head_only else body,
    ))


def redirect(location: bytes, *, conn: bytes = b"") -> bytes:
    return b"".join((
        b"HTTP/1.1 302 Found\r\nLocation: ", location, b"\r\n",
        b"Content-Length: 0\r\nCache-Control: no-store\r\n", conn, b"\r\n",
    ))


def plain(status: int, text: bytes) -> bytes:
    """A response for a connection about to be closed (400, 431)."""
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status]),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(text),
        CONN_CLOSE, b"\r\n", text,
    ))
