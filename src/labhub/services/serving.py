"""What a running service serves and how it is doing: its models (TFaaS's ``GET /models``) and its
per-model counters (``GET /metrics``, Prometheus text from labhub_serve), read from its upstream.

The hub asks the instance directly (its Unix socket or address), as the proxy would, with the
instance's own secret; every answer is bounded in size and time.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when first used: the hub's start and idle memory do not pay for them
    import httpx

ANSWER_LIMIT = 1 << 20  # bytes read of each answer
TIMEOUT_S = 3.0
REQUESTS = "labhub_serve_requests"  # a counter: model, version, protocol, code
SECONDS = "labhub_serve_request_seconds"  # a histogram: model, version, protocol


class ServiceUnreachable(Exception):
    """The service did not answer (in time, or at all)."""


async def read(upstream: str, token: str) -> dict[str, Any]:
    """``{"models": [...] | None, "metrics": {"at": unix time, "models": {"NAME@V": {...}}}}`` of the
    service at ``upstream`` (``unix:/path`` or ``http://host:port``); see :func:`summarise`.

    ``models`` is None when the service has no ``/models`` route (not labhub_serve), ``metrics``'
    models empty when it has no ``/metrics``.  Raises :class:`ServiceUnreachable`."""
    import httpx

    if upstream.startswith("unix:"):
        transport, base = httpx.AsyncHTTPTransport(uds=upstream.removeprefix("unix:")), "http://service"
    else:
        transport, base = httpx.AsyncHTTPTransport(), upstream
    async with httpx.AsyncClient(transport=transport, base_url=base, timeout=TIMEOUT_S, trust_env=False,
                                 headers={"Authorization": f"token {token}"}) as client:
        models = await _get(client, "/models")
        at = time.time()
        metrics = await _get(client, "/metrics")
    try:
        listed = _json_list(models)
    except ValueError:
        listed = None
    return {"models": listed, "metrics": {"at": at, "models": summarise(metrics.decode("utf-8", "replace"))
                                          if metrics else {}}}


async def _get(client: httpx.AsyncClient, path: str) -> bytes:
    """The body of ``GET path`` if 200 (at most :data:`ANSWER_LIMIT` bytes), else ``b""``."""
    import httpx

    try:
        async with client.stream("GET", path) as answer:
            if answer.status_code != 200:
                return b""
            body = bytearray()
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > ANSWER_LIMIT:
                    return b""
            return bytes(body)
    except httpx.HTTPError as exc:
        raise ServiceUnreachable(f"the service did not answer {path}: {exc}") from exc


def _json_list(body: bytes) -> list[Any] | None:
    import json

    if not body:
        return None
    value = json.loads(body)
    if not isinstance(value, list):
        raise ValueError("not a list")
    return value


def summarise(text: str) -> dict[str, dict[str, Any]]:
    """Per ``NAME@VERSION``: ``requests`` and ``errors`` (answers with status 400 and up), summed over
    protocols, and the latency histogram: ``seconds_sum``, ``seconds_count`` and cumulative
    ``buckets`` as ``[[upper bound in s (None for +Inf), count], ...]`` in increasing order.

    Counters only ever grow: a client's rates and percentiles are differences of two readings."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, Any]] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any]:
        key = f"{labels.get('model', '?')}@{labels.get('version', '?')}"
        return out.setdefault(key, {"requests": 0, "errors": 0, "seconds_sum": 0.0, "seconds_count": 0,
                                    "buckets": {}})

    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return {}
    for family in families:
        for sample in family.samples:
            if sample.name == f"{REQUESTS}_total":
                found = entry(sample.labels)
                found["requests"] += int(sample.value)
                if sample.labels.get("code", "").isdigit() and int(sample.labels["code"]) >= 400:
                    found["errors"] += int(sample.value)
            elif sample.name == f"{SECONDS}_bucket":
                bound = float(sample.labels.get("le", "+Inf"))
                buckets = entry(sample.labels)["buckets"]
                buckets[bound] = buckets.get(bound, 0) + int(sample.value)
            elif sample.name == f"{SECONDS}_sum":
                entry(sample.labels)["seconds_sum"] += sample.value
            elif sample.name == f"{SECONDS}_count":
                entry(sample.labels)["seconds_count"] += int(sample.value)
    for found in out.values():
        found["buckets"] = [[None if math.isinf(b) else b, n] for b, n in sorted(found["buckets"].items())]
    return out
