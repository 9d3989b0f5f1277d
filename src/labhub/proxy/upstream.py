"""The upstream side of the proxy: one protocol per connection to an instance or the hub.

An :class:`UpstreamProtocol` carries one exchange at a time (no pipelining
upstream).  It parses the response with httptools, rebuilds the response head
for the client (hop-by-hop headers replaced) and streams the body to the
client as it arrives, re-chunking when the upstream used chunked framing.
After a complete response the connection goes back to the server's pool; on
``101 Switching Protocols`` it becomes one half of a raw byte tunnel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import httptools

if TYPE_CHECKING:  # pragma: no cover
    from .http import ClientProtocol, Exchange

log = logging.getLogger("labhub.proxy")

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

P_UPSTREAM = 1  # client pause reason: an upstream write buffer is full

# how the response body is written to the client
W_RAW = 0     # as it comes (Content-Length, close-delimited, or no body)
W_CHUNK = 1   # re-chunked

# response header classes
_R_PASS, _R_CLEN, _R_TE, _R_UPGRADE, _R_DROP, _R_SETCOOKIE = range(6)
_R_KIND = {
    b"set-cookie": _R_SETCOOKIE,
    b"content-length": _R_CLEN,
    b"transfer-encoding": _R_TE,
    b"upgrade": _R_UPGRADE,
    b"connection": _R_DROP,
    b"keep-alive": _R_DROP,
    b"proxy-connection": _R_DROP,
    b"trailer": _R_DROP,
}
_COMMON = (b"Content-Type", b"Date", b"Server", b"Etag", b"ETag", b"Cache-Control",
           b"Last-Modified", b"Content-Security-Policy", b"Access-Control-Allow-Origin",
           b"X-Content-Type-Options", b"Vary", b"Set-Cookie", b"Location", b"Expires",
           b"Content-Encoding", b"Accept-Ranges", b"Pragma", b"Referrer-Policy",
           b"X-Frame-Options", b"Strict-Transport-Security")
#: exact spellings seen on the wire -> class, to skip ``bytes.lower()`` for them
_R_FAST: dict[bytes, int] = {}
for _n in (*_R_KIND, *_COMMON):
    for _v in (_n, _n.lower(), _n.title(), b"-".join(p.capitalize() for p in _n.split(b"-"))):
        _R_FAST[_v] = _R_KIND.get(_v.lower(), _R_PASS)


class UpstreamProtocol(asyncio.Protocol):
    """One connection to an upstream (instance or hub)."""

    def __init__(self, server: Any, key: Any) -> None:
        self.s = server
        self.key = key
        self.transport: asyncio.Transport | None = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientProtocol | None = None
        self.ex: Exchange | None = None
        self.reused = False       # has completed at least one response
        self.in_pool = False
        self.idle_since = 0.0
        self.closed = False
        self.tunnel = False
        self.rpaused = False      # we paused reading (client slow)
        self.wfull = False        # our write buffer is over the high-water mark
        self.got = False          # received anything for the current exchange
        self.out: list[bytes] = []
        # response state
        self.lines: list[bytes] = []
        self.reason = b""
        self.clen = False
        self.chunked = False
        self.hdone = False
        self.upg: bytes | None = None
        self.interim = False      # a 1xx response other than 101 is being relayed
        self.switching = False    # a 101 was relayed; a tunnel follows
        self.ignore = False       # stale callbacks after a HEAD response
        self.wmode = W_RAW
        self.eof_body = False     # body ends when the upstream closes
        self.started = False      # final response head handed to the client

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        self.s._upstreams.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            c = self.client
            if c is not None:
                c.transport.write(data)
            return
        if self.client is None:
            # idle in the pool: nothing is expected (e.g. a 408 before closing)
            self.transport.close()
            return
        self.got = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._switch(data[exc.args[0]:])
            return
        except httptools.HttpParserError as exc:
            if self.switching:
                # a 101 without "Connection: upgrade": llhttp pauses without an offset
                end = data.find(b"\r\n\r\n")
                self._switch(data[end + 4:] if end >= 0 else b"")
                return
            if isinstance(exc, httptools.HttpParserCallbackError) and exc.__context__ is not None:
                log.error("proxy error handling a response from %s", self.key,
                          exc_info=exc.__context__)
            else:
                log.warning("invalid response from upstream %s: %s", self.key, exc)
            self._fail()
            return
        if self.out:
            self.flush()

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        s = self.s
        s._upstreams.discard(self)
        if self.in_pool:
            self.in_pool = False
            s.pool_remove(self)
            return
        c, ex = self.client, self.ex
        if self.tunnel:
            self.client = None
            if c is not None and not c.closed:
                c.transport.close()
            return
        if c is None or ex is None:
            return
        self._detach(c, ex)
        if not self.started:
            if not self.got and self.reused and ex.retryable() and not ex.retried and not c.closed:
                ex.retried = True
                log.debug("pooled connection to %s was closed; retrying %s", self.key, ex.url)
                c.retry(ex)
                return
            log.warning("upstream %s closed before answering %s %s (%s)", self.key,
                        ex.method.decode(), ex.url.decode("latin-1"), exc or "EOF")
            c.upstream_failed(ex)
            return
        if self.out:
            self._write_out(c)
        if self.eof_body:
            ex.resp_done = True
            c.close_after = True
            c.finish(ex)
        else:
            log.warning("upstream %s closed in the middle of a response to %s", self.key,
                        ex.url.decode("latin-1"))
            c.close_after = True
            if not c.closed:
                c.transport.close()

    def pause_writing(self) -> None:
        self.wfull = True
        c = self.client
        if c is not None:
            c.pause(P_UPSTREAM)

    def resume_writing(self) -> None:
        self.wfull = False
        c = self.client
        if c is not None:
            c.resume(P_UPSTREAM)

    # -- used by the client side --------------------------------------------------

    def attach(self, c: ClientProtocol, ex: Exchange) -> None:
        self.client = c
        self.ex = ex
        self.in_pool = False
        self.got = False
        self.started = False
        if c.wpaused:
            self.pause_reading()
        if self.wfull:
            c.pause(P_UPSTREAM)

    def pause_reading(self) -> None:
        if not self.rpaused and not self.closed:
            self.rpaused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.rpaused:
            self.rpaused = False
            if not self.closed:
                self.transport.resume_reading()

    def flush(self) -> None:
        c = self.client
        if c is not None:
            self._write_out(c)
        else:
            self.out.clear()

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self.lines = []
        self.reason = b""
        self.clen = self.chunked = self.hdone = self.ignore = False
        self.upg = None

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.hdone:
            return  # trailers are not relayed
        kind = _R_FAST.get(name)
        if kind is None:
            kind = _R_KIND.get(name.lower(), _R_PASS)
        if kind == _R_PASS:
            self.lines += (name, b": ", value, b"\r\n")
        elif kind == _R_CLEN:
            self.clen = True
            self.lines += (name, b": ", value, b"\r\n")
        elif kind == _R_TE:
            if b"chunked" in value.lower():
                self.chunked = True
        elif kind == _R_UPGRADE:
            self.upg = value
        elif kind == _R_SETCOOKIE:
            ex = self.ex
            if (ex is not None and ex.route is not None
                    and value.split(b"=", 1)[0].strip() in self.s.strip_cookies_b):
                return  # an instance may not set (or clear) the hub's own cookies
            self.lines += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.hdone = True
        c, ex = self.client, self.ex
        assert c is not None and ex is not None
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                if not ex.upgrade:
                    raise ValueError("101 Switching Protocols to a request without Upgrade")
                self.out.append(b"".join((
                    b"HTTP/1.1 101 ", self.reason, b"\r\n", *self.lines,
                    b"Connection: Upgrade\r\nUpgrade: ", self.upg or b"websocket", b"\r\n\r\n")))
                self.switching = True
                return
            self.interim = True
            self.out.append(b"".join((b"HTTP/1.1 %d %s\r\n" % (status, self.reason), *self.lines,
                                      b"\r\n")))
            return
        self.interim = False
        self.started = True
        head_req = ex.method == b"HEAD"
        close = c.close_after or not ex.keep_alive or ex.upgrade or not ex.req_done
        self.eof_body = False
        if head_req or status == 204 or status == 304:
            self.wmode = W_RAW
        elif self.chunked:
            if ex.http10:
                self.wmode = W_RAW
                close = True
            else:
                self.wmode = W_CHUNK
        elif self.clen:
            self.wmode = W_RAW
        else:
            self.wmode = W_RAW
            self.eof_body = True
            close = True
        parts = self.lines
        parts.insert(0, b"HTTP/1.1 %d %s\r\n" % (status, self.reason))
        if self.wmode == W_CHUNK:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if close:
            c.close_after = True
            parts.append(b"Connection: close\r\n\r\n")
        elif ex.http10:
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        self.out.append(b"".join(parts))
        if head_req:
            # httptools cannot be told that a HEAD response has no body: finish
            # here and give the connection a fresh parser for the next response.
            keep = self.parser.should_keep_alive() and not self.eof_body
            self.ignore = True
            self.parser = httptools.HttpResponseParser(self)
            self._done(keep)

    def on_body(self, body: bytes) -> None:
        if self.ignore:
            return
        if self.wmode == W_CHUNK:
            self.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self.ignore:
            return
        if self.interim:   # the final response follows
            self.interim = False
            return
        if self.switching:  # HttpParserUpgrade follows
            return
        if self.wmode == W_CHUNK:
            self.out.append(b"0\r\n\r\n")
        self._done(self.parser.should_keep_alive())

    # -- internals ------------------------------------------------------------------

    def _write_out(self, c: ClientProtocol) -> None:
        out = self.out
        if not c.closed:
            if len(out) == 1:
                c.transport.write(out[0])
            else:
                c.transport.writelines(out)
        out.clear()

    def _detach(self, c: ClientProtocol, ex: Exchange) -> None:
        self.client = None
        self.ex = None
        ex.up = None
        if self.wfull:
            c.resume(P_UPSTREAM)
        if self.rpaused:
            self.resume_reading()

    def _done(self, keep: bool) -> None:
        """The final response is complete."""
        c, ex = self.client, self.ex
        assert c is not None and ex is not None
        if self.out:
            self._write_out(c)
        self._detach(c, ex)
        ex.resp_done = True
        if not ex.req_done:
            # answered before the request body was all here: the rest of the
            # body has nowhere to go, so neither connection can be reused
            keep = False
            c.close_after = True
        if keep and not ex.upgrade and not self.closed:
            self.reused = True
            self.s.pool_put(self)
        else:
            self.transport.close()
        c.finish(ex)

    def _switch(self, rest: bytes) -> None:
        """The upstream answered 101: from now on relay raw bytes both ways."""
        c = self.client
        assert c is not None
        if self.out:
            self._write_out(c)
        self.tunnel = True
        self.ex = None
        if rest and not c.closed:
            c.transport.write(rest)
        c.enter_tunnel(self)

    def _fail(self) -> None:
        c, ex = self.client, self.ex
        self.transport.close()
        if c is None or ex is None:
            return
        self._detach(c, ex)
        if self.started:
            c.close_after = True
            if not c.closed:
                c.transport.close()
        else:
            c.upstream_failed(ex)
