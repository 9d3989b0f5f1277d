"""Fixtures shared by the hub's tests: databases, a running hub, users, a trivial upstream."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import os
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio

from labhub import server
from labhub.models import utcnow
from labhub.settings import Settings

TERMINAL = {"stopped", "succeeded", "failed", "expired"}
_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)">')


def csrf_of(page: str) -> str:
    """The CSRF token a hub page carries (bound to the browser's session, or before login to its nonce)."""
    match = _CSRF_META.search(page)
    assert match, "the page has no csrf-token meta tag"
    return html.unescape(match.group(1))


async def page_csrf(http: httpx.AsyncClient, path: str = "/login") -> str:
    """Load a hub page with ``http``'s cookies and return its CSRF token."""
    return csrf_of((await http.get(path, headers={"Accept": "text/html"})).text)
POSTGRES_ADMIN_URL = os.environ.get("LABHUB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import asyncpg

    name = f"labhub_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("LABHUB_TEST_POSTGRES") == "skip":
            pytest.skip(f"PostgreSQL unavailable: {exc}")
        pytest.fail(f"PostgreSQL is required for these tests ({POSTGRES_ADMIN_URL}): {exc}; "
                    "`make test` starts it, or set LABHUB_TEST_POSTGRES=skip")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'hub.sqlite'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database (for tests of several replicas, which need one)."""
    yield from _postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'hub.sqlite'}"


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data", "bind": "127.0.0.1:0", "database_url": database_url,
        "reconcile_interval": 0.2, "stop_grace": 2.0, "log_level": "warning",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Caller:
    """A user of a running hub with an API token and an HTTP client."""

    name: str
    token: str
    http: httpx.AsyncClient


class Harness:
    """A hub running in this test's event loop, plus helpers to add users."""

    def __init__(self, running: server.RunningHub) -> None:
        self.running = running
        self.hub = running.hub
        self.url = running.url
        self._clients: list[httpx.AsyncClient] = []

    def client(self, **kwargs: object) -> httpx.AsyncClient:
        http = httpx.AsyncClient(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]
        self._clients.append(http)
        return http

    async def user(self, name: str, *, admin: bool = False, password: str | None = None) -> Caller:
        from labhub.services import credentials, users

        async with self.hub.tx() as session:
            user = await users.create_user(session, name=name, password=password or secrets.token_urlsafe(12),
                                           admin=admin)
            _, token = await credentials.issue_token(session, user=user, note="test")
        return Caller(name, token, self.client(headers={"Authorization": f"Bearer {token}"}))

    async def wait_status(self, caller: Caller, instance_id: str, statuses: set[str], timeout: float = 60) -> dict:
        """Poll the API until the instance reaches one of ``statuses``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        body: dict = {}
        while loop.time() < deadline:
            body = (await caller.http.get(f"/api/v1/instances/{instance_id}")).json()
            if body["status"] in statuses:
                return body
            if body["status"] in TERMINAL:
                break
            await asyncio.sleep(0.05)
        events = (await caller.http.get(f"/api/v1/instances/{instance_id}/events")).json()
        raise AssertionError(f"instance is {body.get('status')}, not {statuses}; events: {json.dumps(events, indent=1)}")

    def instance_client(self, caller: Caller | None, inst: dict, **kwargs: object) -> httpx.AsyncClient:
        """A client for an instance's own origin (its API ``url``), with ``caller``'s token if given.

        Python cannot resolve ``*.localhost`` (browsers and curl can), so it
        connects to the hub's address and names the instance's origin in ``Host``.
        """
        headers = {"Host": urlsplit(inst["url"]).netloc}
        if caller is not None:
            headers["Authorization"] = f"Bearer {caller.token}"
        headers.update(kwargs.pop("headers", {}))  # type: ignore[arg-type]
        return self.client(headers=headers, **kwargs)

    async def close(self) -> None:
        for http in self._clients:
            await http.aclose()
        await self.running.close()


@pytest_asyncio.fixture
async def start_hub(tmp_path: Path) -> AsyncIterator:
    """Factory: ``await start_hub(database_url, backends=..., **settings)`` -> Harness."""
    harnesses: list[Harness] = []
    roots: list[Path] = []

    async def start(database_url: str, *, backends: dict | None = None, clock=None, **overrides: object) -> Harness:
        if "data_dir" not in overrides:
            # Instances run as other accounts, which must traverse to their homes (pytest's tmp_path is 0700).
            import tempfile

            root = Path(tempfile.mkdtemp(prefix="labhub-hub-"))
            root.chmod(0o711)
            roots.append(root)
            overrides["data_dir"] = root / "data"
        settings = make_settings(tmp_path, database_url, **overrides)
        harness = Harness(await server.start(settings, backends=backends, clock=clock))
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        await _end_instances(harness)
        async with asyncio.timeout(30):  # a hang here is a bug (see Reconciler.stop)
            await harness.close()
    import shutil

    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


async def _end_instances(harness: Harness) -> None:
    """Whatever a test left running on its hub's backends (a hub's close leaves instances running, as a
    restart must): ended, so that no test's processes outlive it."""
    for backend in harness.hub.backends.values():
        try:
            async with asyncio.timeout(30):
                for handle in await backend.list_owned():
                    await backend.terminate(handle, grace=0)
        except Exception:  # noqa: BLE001 - a backend already closed by the test, or unreachable: nothing to end
            continue


class OffsetClock:
    """A hub's clock (``start_hub(clock=...)``): the real time plus ``offset``, which a test moves on."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset


class EchoUpstream:
    """A trivial HTTP/1.1 server answering 200 with what it received, on any path."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                record = {"method": method, "path": path, "headers": headers, "body": body.decode("latin-1")}
                self.requests.append(record)
                payload = json.dumps(record).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest_asyncio.fixture
async def echo_upstream() -> AsyncIterator[EchoUpstream]:
    upstream = EchoUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


@pytest.fixture(scope="session")
def _shared_tmp_dirs() -> Iterator[list[Path]]:
    """The directories ``shared_tmp`` made, removed when the session ends."""
    import shutil

    made: list[Path] = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_tmp(_shared_tmp_dirs: list[Path]) -> Path:
    """A temporary directory other accounts can traverse (pytest's own is 0700),
    so the local backend can run instances as per-user accounts.

    Removed at the end of the session, not of the test: a test's hub fixture (``start_hub``), torn
    down after this one when it was asked for first, still needs its instances' records there to end
    what they left running."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="labhub-test-"))
    path.chmod(0o711)
    _shared_tmp_dirs.append(path)
    return path
