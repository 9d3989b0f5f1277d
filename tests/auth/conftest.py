"""Real services for the identity tests: an SMTP server (aiosmtpd) and an OIDC provider
(oidc-provider-mock), both on loopback and started by the tests; and a browser-like client."""

from __future__ import annotations

import email
import email.policy
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from labhub.backends.fake import FakeBackend
from tests.conftest import page_csrf


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    to: list[str]
    subject: str
    body: str

    def link(self, base: str) -> str:
        """The first link into the hub in the body, as a path."""
        match = re.search(re.escape(base) + r"(/\S*)", self.body)
        assert match, f"no link to {base} in:\n{self.body}"
        return match.group(1)


class Inbox:
    """What an aiosmtpd server on 127.0.0.1 received."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201, N802 - aiosmtpd's hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), str(message["Subject"]),
                                          message.get_content()))
        return "250 OK"

    def to(self, address: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if address in m.to]

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@dataclass
class Provider:
    url: str  # http://localhost:PORT, the issuer

    @property
    def discovery(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    def set_user(self, sub: str, claims: dict) -> None:
        assert httpx.put(f"{self.url}/users/{sub}", json=claims).status_code == 204


@pytest.fixture
def oidc_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    """oidc-provider-mock in a thread on a free port; nonce required, any client id/secret accepted."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # the provider is plain http on loopback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the mock imports authlib.jose
        from oidc_provider_mock import run_server_in_thread

        with run_server_in_thread(port=free_port(), require_nonce=True) as server:
            yield Provider(url=f"http://localhost:{server.server_port}")


class Browser:
    """An httpx client that keeps cookies, follows nothing by itself, and fills in CSRF tokens."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def csrf(self) -> str:
        """The token the hub's pages carry for this browser's session (a page is loaded for it)."""
        return await page_csrf(self.http)

    async def get(self, url: str, **kwargs: object) -> httpx.Response:
        return await self.http.get(url, headers={"Accept": "text/html"}, **kwargs)  # type: ignore[arg-type]

    async def post_form(self, url: str, data: dict | None = None, *, csrf: bool = True) -> httpx.Response:
        form = {**(data or {}), **({"csrf_token": await self.csrf()} if csrf else {})}
        return await self.http.post(url, data=form, headers={"Accept": "text/html"})

    async def api(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        headers = {"Accept": "application/json", "X-CSRF-Token": await self.csrf()}
        return await self.http.request(method, url, headers=headers, **kwargs)  # type: ignore[arg-type]

    async def login(self, name: str, password: str, next_url: str = "/") -> httpx.Response:
        return await self.post_form("/login", {"username": name, "password": password, "next": next_url})


def wait_for(predicate, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.fixture
def identity_hub(start_hub, sqlite_url, smtp):
    """Factory: a hub on a fixed free port (so mailed links are right) with SMTP pointing at the test server."""
    inbox, smtp_port = smtp

    async def start(**overrides: object):
        port = free_port()
        settings = {"bind": f"127.0.0.1:{port}",
                    "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none",
                             "sender": "LabHub <hub@lab.example>"},
                    **overrides}
        harness = await start_hub(sqlite_url, backends={"fake": FakeBackend()}, **settings)
        harness.inbox = inbox
        harness.base = f"http://127.0.0.1:{port}"
        harness.browser = lambda: Browser(harness.client())
        return harness

    return start


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
