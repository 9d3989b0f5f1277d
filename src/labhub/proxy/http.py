"""The client side of the proxy: one :class:`ClientProtocol` per browser/API connection.

Requests are parsed with httptools callbacks into :class:`Exchange` objects,
served one at a time (pipelined requests wait in a queue).  For each one the
protocol picks the target (an instance route or the hub), checks credentials
against the :class:`~labhub.proxy.routes.Authenticator` cache, rebuilds the
request head by joining bytes, and streams the body to a pooled upstream
connection as it arrives.  Nothing here awaits on the fast path: only an
authenticator cache miss and a new upstream connection start a task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from . import responses
from .access import Access
from .exchange import (
    _H_ACCEPT,
    _H_AUTH,
    _H_CLEN,
    _H_COOKIE,
    _H_FAST,
    _H_HOST,
    _H_KIND,
    _H_ORIGIN,
    _H_PASS,
    _H_SFM,
    _H_SFS,
    _H_TE,
    _H_UPGRADE,
    _H_XFF,
    _H_XFP,
    ORIGIN_HEADER,
    Exchange,
    strip_cookies,
)
from .upstream import HIGH_WATER, LOW_WATER, UpstreamProtocol

if TYPE_CHECKING:  # pragma: no cover
    from .routes import Route
    from .server import ProxyServer

log = logging.getLogger("labhub.proxy")

# reasons for which client reading is paused (bits)
P_BUFFER = 2      # request body buffered while no upstream is attached
P_PIPELINE = 4    # a pipelined request waits for the current one

#: how long a connection closed mid-request keeps draining client input
LINGER_S = 2.0

#: request body bytes buffered while waiting for auth/upstream before pausing the client
PENDING_MAX = 256 * 1024


_now = time.monotonic
_wall = time.time


class _TooLarge(Exception):
    pass


class ClientProtocol(Access, asyncio.Protocol):
    """One client connection (which request goes where, and who may send it: :class:`~labhub.proxy.access.Access`)."""

    def __init__(self, server: ProxyServer) -> None:
        self.s = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.cur: Exchange | None = None        # being parsed
        self.active: Exchange | None = None     # being served
        self.queue: deque[Exchange] | None = None
        self.pauses = 0
        self.wpaused = False
        self.in_feed = False
        self.closed = False
        self.close_after = False
        self.draining = False   # answered and half-closed: input is dropped
        self.tunnel: UpstreamProtocol | None = None
        self.tunnel_route: Route | None = None
        self.tunnel_buf: list[bytes] | None = None   # after an Upgrade head, before the 101
        self.task: asyncio.Task[None] | None = None       # authenticator lookup
        # connecting upstream; never cancelled: cancelling a connect that has
        # just succeeded can leak the connection, and a late one goes to the pool
        self.conn_task: asyncio.Task[None] | None = None
        self.idle_since = _now()
        self.raw_head = 0
        self.fwd = b""

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else "unix"
        s = self.s
        self.peer = ip.encode()
        self.trusted = s.trusts(ip)  # a reverse proxy whose X-Forwarded-* we believe
        self.fwd = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (self.peer, s.scheme)
        s._clients.add(self)

    def data_received(self, data: bytes) -> None:
        up = self.tunnel
        if up is not None:
            up.transport.write(data)
            r = self.tunnel_route
            if r is not None:
                r.last_activity = _wall()
            return
        buf = self.tunnel_buf
        if buf is not None:  # waiting for the upstream's 101
            buf.append(data)
            if sum(map(len, buf)) > PENDING_MAX:
                self.pause(P_BUFFER)
            return
        if self.draining:
            return
        self.in_feed = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0]:]
            self.tunnel_buf = [rest] if rest else []
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _TooLarge):
                self._reject(431, b"Request header fields too large\n")
            else:
                log.error("proxy error handling a request", exc_info=exc.__context__ or exc)
                self.transport.abort()
            return
        except httptools.HttpParserError as exc:
            log.debug("malformed request: %s", exc)
            self._reject(400, b"Bad request\n")
            return
        finally:
            self.in_feed = False
        ex = self.active
        if ex is not None and ex.pending and ex.up is not None:
            self._flush(ex)
        cur = self.cur
        if cur is not None and not cur.head_done:
            self.raw_head += len(data)
            if self.raw_head > 2 * self.s.max_header_bytes + 65536:
                self._reject(431, b"Request header fields too large\n")

    def eof_received(self) -> bool | None:
        if self.tunnel is None and self.tunnel_buf is None and not self.draining:
            ex = self.active
            if ex is not None and ex.req_done:
                # a half-closed client still gets its response
                self.close_after = True
                return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.s._clients.discard(self)
        if self.task is not None:
            self.task.cancel()
            self.task = None
        up = self.tunnel
        if up is not None:
            self.tunnel = None
            up.client = None
            up.transport.close()
        ex = self.active
        if ex is not None:
            self.active = None
            up = ex.up
            if up is not None:  # request or response in flight: not reusable
                ex.up = None
                up.client = None
                up.ex = None
                up.transport.close()
        self.queue = None
        self.cur = None

    def pause_writing(self) -> None:
        self.wpaused = True
        up = self.tunnel
        if up is None and self.active is not None:
            up = self.active.up
        if up is not None:
            up.pause_reading()

    def resume_writing(self) -> None:
        self.wpaused = False
        up = self.tunnel
        if up is None and self.active is not None:
            up = self.active.up
        if up is not None:
            up.resume_reading()

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self.cur = Exchange()

    def on_url(self, url: bytes) -> None:
        ex = self.cur
        ex.url += url  # type: ignore[union-attr]
        ex.hbytes += len(url)  # type: ignore[union-attr]
        if ex.hbytes > self.s.max_header_bytes:  # type: ignore[union-attr]
            raise _TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.cur
        assert ex is not None
        if ex.head_done:
            return  # trailers of a chunked request are not relayed
        hb = ex.hbytes = ex.hbytes + len(name) + len(value) + 4
        if hb > self.s.max_header_bytes:
            raise _TooLarge
        kind = _H_FAST.get(name)
        if kind is None:
            kind = _H_KIND.get(name.lower(), _H_PASS)
        if kind == _H_PASS:
            ex.lines += (name, b": ", value, b"\r\n")
        elif kind == _H_HOST:
            ex.host = value
            ex.lines += (name, b": ", value, b"\r\n")
        elif kind == _H_ACCEPT:
            ex.accept = value
            ex.lines += (name, b": ", value, b"\r\n")
        elif kind == _H_AUTH:
            ex.authz = value
        elif kind == _H_COOKIE:
            ex.cookie = value if ex.cookie is None else ex.cookie + b"; " + value
        elif kind == _H_CLEN:
            ex.clen = value
            ex.lines += (name, b": ", value, b"\r\n")
        elif kind == _H_TE:
            if b"chunked" in value.lower():
                ex.chunked = True
        elif kind == _H_UPGRADE:
            ex.upgrade_hdr = value
        elif kind == _H_ORIGIN:
            ex.origin = value
            ex.lines += (name, b": ", value, b"\r\n")
        elif kind == _H_SFS:
            ex.sfs = value
            ex.lines += (name, b": ", value, b"\r\n")
        elif kind == _H_SFM:
            ex.sfm = value
            ex.lines += (name, b": ", value, b"\r\n")
        elif kind == _H_XFF:
            ex.xff = value if ex.xff is None else ex.xff + b"," + value
        elif kind == _H_XFP:
            ex.xfp = value

    def on_headers_complete(self) -> None:
        ex = self.cur
        assert ex is not None
        ex.head_done = True
        self.raw_head = 0
        self.idle_since = 0.0
        p = self.parser
        ex.method = p.get_method()
        ex.keep_alive = p.should_keep_alive()
        if p.should_upgrade():
            ex.upgrade = True
        if p.get_http_version() == "1.0":
            ex.http10 = True
        if self.active is None:
            self.active = ex
            self._start(ex)
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append(ex)
            self.pause(P_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.cur
        assert ex is not None
        if ex.discard:
            return
        if ex.chunked:
            ex.pending += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            ex.pending.append(body)
        if ex.up is None or ex is not self.active:
            ex.pbytes += len(body)
            if ex.pbytes > PENDING_MAX:
                self.pause(P_BUFFER)

    def on_message_complete(self) -> None:
        ex = self.cur
        assert ex is not None
        self.cur = None
        ex.req_done = True
        if ex.discard:
            if ex.resp_done and ex is self.active:
                self.finish(ex)
        elif ex.chunked:
            ex.pending.append(b"0\r\n\r\n")

    # -- flow control -------------------------------------------------------------

    def pause(self, bit: int) -> None:
        if not self.pauses and not self.closed:
            self.transport.pause_reading()
        self.pauses |= bit

    def resume(self, bit: int) -> None:
        if self.pauses & bit:
            self.pauses &= ~bit
            if not self.pauses and not self.closed:
                self.transport.resume_reading()

    # -- serving an exchange ------------------------------------------------------

    def _head(self, ex: Exchange, route: Route | None) -> bytes:
        """The request head for upstream: hop-by-hop headers replaced, and for
        an instance the hub credentials swapped for the instance token."""
        parts = [ex.method, b" ", ex.url, b" HTTP/1.1\r\n"]
        parts += ex.lines
        cookie = ex.cookie
        if route is None:
            if ex.authz is not None:
                parts += (b"Authorization: ", ex.authz, b"\r\n")
            if ex.origin_label is not None:
                parts += (ORIGIN_HEADER, b": ", ex.origin_label, b"\r\n")
        else:
            parts += (b"Authorization: token ", route.token.encode(), b"\r\n")
            if cookie is not None:
                cookie = strip_cookies(cookie, self.s.strip_cookies_b)
        if cookie is not None:
            parts += (b"Cookie: ", cookie, b"\r\n")
        parts.append(ex.fwd or self.fwd)
        if ex.host is not None:
            parts += (b"X-Forwarded-Host: ", ex.host, b"\r\n")
        elif route is not None:  # HTTP/1.0 without Host: HTTP/1.1 upstream needs one
            parts.append(b"Host: %s:%d\r\n" % (route.host.encode(), route.port))
        else:
            parts.append(b"Host: localhost\r\n")
        if ex.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if ex.upgrade:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", ex.upgrade_hdr or b"websocket", b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _forward(self, ex: Exchange) -> None:
        if not ex.upgrade:
            up = self.s.pool_get(ex.key)
            if up is not None:
                self._attach(ex, up)
                return
        self.conn_task = asyncio.get_running_loop().create_task(self._connect(ex))

    def retry(self, ex: Exchange) -> None:
        """A pooled connection died before answering: once more on a fresh one."""
        self.conn_task = asyncio.get_running_loop().create_task(self._connect(ex))

    async def _connect(self, ex: Exchange) -> None:
        try:
            up = await self.s.connect(ex.key)
        except asyncio.CancelledError:
            raise
        except (TimeoutError, OSError) as exc:
            self.conn_task = None
            log.warning("upstream %s unreachable: %s", ex.key, exc or type(exc).__name__)
            if not self.closed and ex is self.active:
                self.upstream_failed(ex)
            return
        except Exception:
            self.conn_task = None
            log.exception("connecting to upstream %s failed", ex.key)
            if not self.closed and ex is self.active:
                self.upstream_failed(ex)
            return
        self.conn_task = None
        if self.closed or ex is not self.active:
            if ex.upgrade:
                up.transport.close()
            else:
                self.s.pool_put(up)
            return
        self._attach(ex, up)

    def _attach(self, ex: Exchange, up: UpstreamProtocol) -> None:
        ex.up = up
        up.attach(self, ex)
        ex.pending.insert(0, ex.head)
        if not self.in_feed:
            self._flush(ex)

    def _flush(self, ex: Exchange) -> None:
        p = ex.pending
        up = ex.up
        assert up is not None
        if len(p) == 1:
            up.transport.write(p[0])
        else:
            up.transport.writelines(p)
        p.clear()
        ex.pbytes = 0
        if self.pauses & P_BUFFER:
            self.resume(P_BUFFER)

    def upstream_failed(self, ex: Exchange) -> None:
        what = "the instance" if ex.route is not None else "the hub"
        self._respond(ex, 502, f"{what} is not reachable")

    def _respond(self, ex: Exchange, status: int, detail: str = "", *,
                 location: bytes = b"", extra: bytes = b"", json_only: bool = False) -> None:
        """Answer ``ex`` from the proxy itself; the rest of its body is discarded."""
        close = self.close_after or not ex.keep_alive or ex.upgrade
        if not ex.req_done and (ex.chunked or (ex.clen is not None and (
                not ex.clen.isdigit() or int(ex.clen) > 1 << 20))):
            close = True  # do not read a large body only to throw it away
        if close:
            self.close_after = True
            conn = responses.CONN_CLOSE
        else:
            conn = responses.CONN_KEEP if ex.http10 else b""
        if status == 302:
            data = responses.redirect(location, conn=conn)
        else:
            html_page = not json_only and responses.wants_html(ex.accept)
            data = responses.error(status, detail, html_page=html_page,
                                   head_only=ex.method == b"HEAD", conn=conn, extra=extra)
        ex.resp_done = True
        ex.discard = True
        ex.pending.clear()
        if self.pauses & P_BUFFER:
            self.resume(P_BUFFER)
        if not self.closed:
            self.transport.write(data)
        if ex.req_done or close:
            self.finish(ex)

    def finish(self, ex: Exchange) -> None:
        """``ex`` is answered (and its request read, unless we close)."""
        if ex is not self.active:
            return
        self.active = None
        if self.closed:
            return
        if self.close_after:
            if ex.req_done:
                self.transport.close()
            else:
                self._linger()
            return
        q = self.queue
        if q:
            nxt = q.popleft()
            if not q:
                self.resume(P_PIPELINE)
            self.active = nxt
            self._start(nxt)
        else:
            self.idle_since = _now()

    def enter_tunnel(self, up: UpstreamProtocol) -> None:
        """The upstream switched protocols: relay raw bytes from now on."""
        ex = self.active
        self.active = None
        self.tunnel = up
        if ex is not None:
            ex.up = None
            self.tunnel_route = ex.route
        buf = self.tunnel_buf
        self.tunnel_buf = None
        if buf:
            up.transport.writelines(buf)
        self.resume(P_BUFFER)

    def _reject(self, status: int, text: bytes) -> None:
        """A request we cannot parse: answer (when no response is under way) and close."""
        if self.closed:
            return
        self.close_after = True
        if self.active is None:
            self.transport.write(responses.plain(status, text))
            self._linger()
        else:
            self.transport.abort()

    def _linger(self) -> None:
        """Close after a response while the client may still be sending: shut
        down our side, drop what arrives for a moment, then close, so that the
        client reads the response instead of a connection reset."""
        if self.closed or self.draining:
            return
        self.draining = True
        self.pauses = 0
        self.transport.resume_reading()
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self.transport.close()
            return
        asyncio.get_running_loop().call_later(LINGER_S, self._linger_done)

    def _linger_done(self) -> None:
        if not self.closed:
            self.transport.abort()
