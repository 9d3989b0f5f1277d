"""The trivial upstream every proxy figure is measured against.

Plain HTTP/1.1 with keep-alive: every request, whatever its path, gets the
same 13-byte body (``Hello, World!``).  ``Upgrade: websocket`` requests get a
101 and then an echo server: each frame comes back with the same opcode and
payload (unmasked, as servers send).  asyncio protocol + httptools on uvloop,
so the backend costs as little as we can make it and the proxy's share shows.

usage: python backend.py --port PORT [--host 127.0.0.1]   (also run as a LabHub
template command; extra arguments are ignored)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import signal
import sys

import httptools

BODY = b"Hello, World!"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n" + BODY
RESPONSE_CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
                  b"Connection: close\r\n\r\n" + BODY)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class Backend(asyncio.Protocol):
    __slots__ = ("transport", "parser", "ws_key", "ws", "buf")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.ws_key: bytes | None = None
        self.ws = False
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.ws:
            self._ws_data(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0]:])
        except httptools.HttpParserError:
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.ws_key = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 17 and name.lower() == b"sec-websocket-key":
            self.ws_key = value

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # answered in _upgrade
        if self.parser.should_keep_alive():
            self.transport.write(RESPONSE)
        else:
            self.transport.write(RESPONSE_CLOSE)
            self.transport.close()

    # WebSocket echo
    def _upgrade(self, rest: bytes) -> None:
        if self.ws_key is None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return
        accept = base64.b64encode(hashlib.sha1(self.ws_key + WS_GUID).digest())  # noqa: S324 - RFC 6455
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.ws = True
        if rest:
            self._ws_data(rest)

    def _ws_data(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        i = 0
        n = len(buf)
        while n - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            length = b1 & 0x7F
            pos = i + 2
            if length == 126:
                if n - pos < 2:
                    break
                length = int.from_bytes(buf[pos:pos + 2], "big")
                pos += 2
            elif length == 127:
                if n - pos < 8:
                    break
                length = int.from_bytes(buf[pos:pos + 8], "big")
                pos += 8
            masked = b1 & 0x80
            if masked:
                if n - pos < 4:
                    break
                mask = buf[pos:pos + 4]
                pos += 4
            if n - pos < length:
                break
            payload = buf[pos:pos + length]
            if masked:
                payload = _unmask(payload, mask)
            i = pos + length
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping -> pong
                b0 = (b0 & 0xF0) | 0xA
            elif opcode == 0xA:  # pong: nothing to do
                continue
            if length < 126:
                head = bytes((b0, length))
            elif length < 65536:
                head = bytes((b0, 126)) + length.to_bytes(2, "big")
            else:
                head = bytes((b0, 127)) + length.to_bytes(8, "big")
            out.append(head)
            out.append(payload)
            if opcode == 0x8:  # close: echo it and hang up
                self.transport.writelines(out)
                self.transport.close()
                self.buf = b""
                return
        self.buf = buf[i:]
        if out:
            self.transport.write(b"".join(out))


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Backend, host, port, backlog=2048, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"backend listening on http://{host}:{server.sockets[0].getsockname()[1]}/", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default=os.environ.get("BENCH_BACKEND_LOOP", "uvloop"))
    args, _unknown = ap.parse_known_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args.host, args.port))
    else:
        asyncio.run(main(args.host, args.port))
    sys.exit(0)
