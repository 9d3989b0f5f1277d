"""What "idle" means for an instance beyond the proxy's traffic: a JupyterLab asked, with the
instance's own token, whether a kernel is busy and when it last saw activity (its kernels',
terminals' and clients'), so that a long computation nobody watches is not stopped as idle.

Every answer is bounded (time and size); an instance that does not answer is judged on traffic
alone, as before.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

ANSWER_LIMIT = 256 * 1024
TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Activity:
    busy: int  # kernels executing now
    last: float | None  # JupyterLab's own last activity (unix time), if it says


async def jupyter(upstream: str, base_url: str, token: str) -> Activity | None:
    """``GET {base_url}api/kernels`` and ``api/status`` of the JupyterLab at ``upstream`` (``unix:/path``
    or ``http://host:port``); None when it does not answer both with JSON."""
    import httpx

    if upstream.startswith("unix:"):
        transport, base = httpx.AsyncHTTPTransport(uds=upstream.removeprefix("unix:")), "http://instance"
    else:
        transport, base = httpx.AsyncHTTPTransport(), upstream
    try:
        async with httpx.AsyncClient(transport=transport, base_url=base, timeout=TIMEOUT_S, trust_env=False,
                                     headers={"Authorization": f"token {token}"}) as client:
            kernels = await _json(client, f"{base_url}api/kernels")
            status = await _json(client, f"{base_url}api/status")
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(kernels, list) or not isinstance(status, dict):
        return None
    busy = sum(1 for k in kernels if isinstance(k, dict) and k.get("execution_state") == "busy")
    stamps = [_when(status.get("last_activity"))] + [_when(k.get("last_activity")) for k in kernels
                                                       if isinstance(k, dict)]
    known = [s for s in stamps if s is not None]
    return Activity(busy, max(known) if known else None)


async def _json(client: Any, path: str) -> Any:
    async with client.stream("GET", path) as answer:
        if answer.status_code != 200:
            raise ValueError(f"{path}: {answer.status_code}")
        body = bytearray()
        async for chunk in answer.aiter_bytes():
            body += chunk
            if len(body) > ANSWER_LIMIT:
                raise ValueError(f"{path}: too large")
    return json.loads(body)


def _when(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def describe(seconds: float) -> str:
    """``2 h``, ``45 min``, ``30 s``: how long it was idle, for the reason."""
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
