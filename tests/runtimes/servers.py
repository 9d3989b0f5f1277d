"""Real file servers on loopback for the remote-input tests: HTTP with Range requests, and XRootD."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.hubprocess import free_port

XROOTD = shutil.which("xrootd") or "/usr/bin/xrootd"
_RANGE = re.compile(r"(\d*)-(\d*)")


class _RangeHandler(BaseHTTPRequestHandler):
    """GET/HEAD of files in ``server.directory``, honouring single and multiple byte ranges.

    uproot's HTTP source asks for several ranges in one request (multipart/byteranges) and falls
    back to one request per range; real servers (nginx, Apache, XRootD's HTTP) answer both.
    """

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        self.server.requests.append(self.requestline)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        path = (self.server.directory / self.path.lstrip("/").split("?")[0]).resolve()
        if not path.is_relative_to(self.server.directory) or not path.is_file():
            self._reply(404, {}, b"not found\n", body)
            return
        data = path.read_bytes()
        spec = self.headers.get("Range", "")
        if not spec.startswith("bytes="):
            self._reply(200, {"Accept-Ranges": "bytes"}, data, body)
            return
        ranges = []
        for part in spec[len("bytes="):].split(","):
            match = _RANGE.fullmatch(part.strip())
            if not match or match.groups() == ("", ""):
                self._reply(416, {"Content-Range": f"bytes */{len(data)}"}, b"", body)
                return
            first, last = match.groups()
            if first == "":  # a suffix: the last N bytes
                start, stop = max(len(data) - int(last), 0), len(data)
            else:
                start, stop = int(first), min(int(last) + 1 if last else len(data), len(data))
            ranges.append((start, stop))
        if len(ranges) == 1:
            start, stop = ranges[0]
            self._reply(206, {"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"}, data[start:stop], body)
            return
        boundary = "labhub-test-boundary"
        parts = []
        for start, stop in ranges:
            parts.append(f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                         f"Content-Range: bytes {start}-{stop - 1}/{len(data)}\r\n\r\n".encode())
            parts.append(data[start:stop] + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        self._reply(206, {"Content-Type": f"multipart/byteranges; boundary={boundary}"}, b"".join(parts), body)

    def _reply(self, status: int, headers: dict[str, str], payload: bytes, body: bool) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/octet-stream", **headers, "Content-Length": str(len(payload))}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    directory: Path
    requests: list[str]


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve ``directory`` on 127.0.0.1 (a free port); yields the base URL and the request lines seen."""
    server = _Server(("127.0.0.1", 0), _RangeHandler)
    server.directory = directory.resolve()
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, name="range-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class XRootD:
    port: int
    data: Path  # the exported directory; files placed here are root://127.0.0.1:PORT//<data>/<name>
    log: Path

    def url(self, name: str) -> str:
        return f"root://127.0.0.1:{self.port}/{self.data / name}"


@contextlib.contextmanager
def xrootd_server(files: list[Path]) -> Iterator[XRootD]:
    """A real XRootD (Debian's xrootd-server) exporting a copy of ``files``, anonymous, loopback clients only.

    XRootD refuses to run as root, so as root it runs as the package's ``xrootd`` account (or
    nobody), and its directories live under a world-searchable mkdtemp rather than pytest's
    private tmp_path.
    """
    top = Path(tempfile.mkdtemp(prefix="labhub-xrootd-"))
    try:
        os.chmod(top, 0o755)  # noqa: S103 - xrootd runs as another account and must reach it
        data, run = top / "data", top / "run"
        data.mkdir(mode=0o755)
        run.mkdir(mode=0o700)
        for file in files:
            shutil.copyfile(file, data / file.name)
            os.chmod(data / file.name, 0o644)
        argv_user: list[str] = []
        if os.geteuid() == 0:
            account = _account("xrootd", "nobody")
            os.chown(run, account.pw_uid, account.pw_gid)
            argv_user = ["-R", account.pw_name]
        for _attempt in range(3):  # the free port can be taken between probing and binding
            port = free_port()
            config = top / "xrootd.cfg"
            config.write_text(
                f"xrd.port {port}\n"
                # XRootD has no listen-address option; accept connections from this host only.
                "xrd.allow host localhost\n"
                f"all.export {data}\n"
                f"all.adminpath {run}\n"
                f"all.pidpath {run}\n",
            )
            config.chmod(0o644)
            log, out = run / "xrootd.log", top / "xrootd.out"
            with out.open("wb") as sink:
                proc = subprocess.Popen([XROOTD, *argv_user, "-c", str(config), "-l", str(log)],
                                        stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
            if _wait_listening(proc, port):
                break
            _stop(proc)
        else:
            raise RuntimeError(f"xrootd did not start: {_tail(out)}\n{_tail(log)}")
        try:
            yield XRootD(port, data, log)
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _account(*names: str) -> pwd.struct_passwd:
    for name in names:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(f"none of the accounts {names} exists to run xrootd as")


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
