"""Helpers for end-to-end tests against real JupyterLab servers."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import websockets


async def run_code(ws_url: str, token: str, code: str, timeout: float = 60, *, connect: str | None = None) -> str:
    """Execute ``code`` on a kernel over its WebSocket; return the text/plain result.

    ``connect`` (``http://host:port``) is where to connect when ``ws_url`` names an
    instance origin Python cannot resolve (``*.localhost``).
    """
    import asyncio

    msg_id = uuid.uuid4().hex
    request = {
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }
    where = {}
    if connect is not None:
        parts = urlsplit(connect)
        where = {"host": parts.hostname, "port": parts.port}
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=None, **where) as ws:
        await ws.send(json.dumps(request))
        async with asyncio.timeout(timeout):
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "execute_result":
                    return msg["content"]["data"]["text/plain"]
                if msg["msg_type"] == "error":
                    raise AssertionError(f"kernel error: {msg['content']}")
