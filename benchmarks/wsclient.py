"""WebSocket clients for the echo figures.

Measured: the handshake (TCP connect + Upgrade request until the 101 is read)
and the round trip of a 32-byte text frame echoed back (send, then wait for
the echo), one message at a time on one connection.

Two clients, same measurements:
* ``--client websockets`` (the figure): the ``websockets`` library on asyncio
  (uvloop), a typical client: it does tens of microseconds of work per
  message, like the browser and Jupyter's own stacks do more.
* ``--client raw`` (the strict variant): blocking sockets, a pre-built frame,
  no library: a few microseconds per message, so the proxy's added time is
  almost all that differs between "through" and "direct".

usage: python wsclient.py URL [--client raw|websockets] [--header 'Name: value'] [--messages N] [--handshakes N]
                           [--connect HOST:PORT]
``--connect``: where to connect when URL names a host Python cannot resolve (an
instance origin under ``*.localhost``); URL's host is still sent as ``Host``.
prints one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import sys
import time
from urllib.parse import urlsplit

PAYLOAD = b"x" * 32
MASK = b"\x11\x22\x33\x44"


def _masked_frame(payload: bytes) -> bytes:
    key = (MASK * (len(payload) // 4 + 1))[: len(payload)]
    body = bytes(a ^ b for a, b in zip(payload, key, strict=True))
    return bytes((0x81, 0x80 | len(payload))) + MASK + body


FRAME = _masked_frame(PAYLOAD)
ECHO_LEN = 2 + len(PAYLOAD)


def handshake(host: str, port: int, path: str, headers: list[str],
              connect: tuple[str, int] | None = None) -> tuple[socket.socket, float]:
    """A connected, upgraded socket and the seconds it took."""
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           + "".join(h + "\r\n" for h in headers) + "\r\n").encode()
    t0 = time.perf_counter()
    sock = socket.create_connection(connect or (host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {buf[:200]!r}")
        buf += chunk
    took = time.perf_counter() - t0
    if not buf.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"no 101: {buf[:300]!r}")
    rest = buf.split(b"\r\n\r\n", 1)[1]
    if rest:
        raise ConnectionError("unexpected data after the 101")
    return sock, took


def echo_rtts(sock: socket.socket, n: int) -> list[float]:
    out = []
    send, recv, pc = sock.sendall, sock.recv, time.perf_counter
    for _ in range(n):
        t0 = pc()
        send(FRAME)
        got = 0
        while got < ECHO_LEN:
            chunk = recv(4096)
            if not chunk:
                raise ConnectionError("closed during the echo")
            got += len(chunk)
        out.append(pc() - t0)
    return out


def close(sock: socket.socket) -> None:
    try:
        sock.sendall(bytes((0x88, 0x80)) + MASK)
        sock.settimeout(1.0)
        sock.recv(64)
    except OSError:
        pass
    finally:
        sock.close()


def measure(url: str, headers: list[str], messages: int, handshakes: int, warmup: int = 200,
            connect: tuple[str, int] | None = None) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    hs = []
    for _ in range(handshakes):
        sock, took = handshake(host, port, path, headers, connect)
        hs.append(took)
        close(sock)
    sock, _ = handshake(host, port, path, headers, connect)
    echo_rtts(sock, warmup)
    rtts = echo_rtts(sock, messages)
    close(sock)
    rtts.sort()
    return {
        "handshake_ms": statistics.median(hs) * 1e3,
        "handshake_ms_all": [round(x * 1e3, 3) for x in hs],
        "rtt_p50_ms": statistics.median(rtts) * 1e3,
        "rtt_p99_ms": rtts[int(len(rtts) * 0.99) - 1] * 1e3,
        "messages": messages,
    }


async def _measure_lib(url: str, headers: list[str], messages: int, handshakes: int, warmup: int = 200,
                      connect: tuple[str, int] | None = None) -> dict:
    import websockets

    hdrs = [tuple(h.split(": ", 1)) for h in headers]
    where = {"host": connect[0], "port": connect[1]} if connect else {}
    pc = time.perf_counter
    hs = []
    for _ in range(handshakes):
        t0 = pc()
        ws = await websockets.connect(url, additional_headers=hdrs, compression=None, **where)
        hs.append(pc() - t0)
        await ws.close()
    msg = PAYLOAD.decode()
    rtts = []
    async with websockets.connect(url, additional_headers=hdrs, compression=None, **where) as ws:
        for i in range(warmup + messages):
            t0 = pc()
            await ws.send(msg)
            await ws.recv()
            if i >= warmup:
                rtts.append(pc() - t0)
    rtts.sort()
    return {
        "handshake_ms": statistics.median(hs) * 1e3,
        "handshake_ms_all": [round(x * 1e3, 3) for x in hs],
        "rtt_p50_ms": statistics.median(rtts) * 1e3,
        "rtt_p99_ms": rtts[int(len(rtts) * 0.99) - 1] * 1e3,
        "messages": messages,
    }


def measure_lib(url: str, headers: list[str], messages: int, handshakes: int,
                connect: tuple[str, int] | None = None) -> dict:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        import asyncio

        return asyncio.run(_measure_lib(url, headers, messages, handshakes, connect=connect))
    return uvloop.run(_measure_lib(url, headers, messages, handshakes, connect=connect))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--client", choices=("raw", "websockets"), default="websockets")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--handshakes", type=int, default=50)
    ap.add_argument("--connect", default=None, help="HOST:PORT to connect to instead of the URL's host")
    a = ap.parse_args()
    where = None
    if a.connect:
        chost, _, cport = a.connect.rpartition(":")
        where = (chost, int(cport))
    fn = measure if a.client == "raw" else measure_lib
    json.dump(fn(a.url, a.header, a.messages, a.handshakes, connect=where), sys.stdout)
    print()
