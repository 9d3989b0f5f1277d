"""labhub_serve's metrics: each inference request counted and timed per model, version and protocol, in
Prometheus' text format at ``GET /metrics`` together with what kserve records. Runs inside the serve
runtime: imports nothing from LabHub.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LABELS = "labhub_serve.labels"  # the scope key under which a /json request's handler names its model
_INFER = re.compile(r"/v2/models/(?P<target>[^/]+)/infer|/v1/models/(?P<v1>[^/]+):predict")


class Metrics:
    """``labhub_serve_requests_total{model,version,protocol,code}`` and ``labhub_serve_request_seconds
    {model,version,protocol}``, in a registry of their own (kserve keeps its metrics in the global one)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series beside each counter and histogram: noise for scrapers
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("labhub_serve_requests", "Inference requests answered, by HTTP status code",
                                ("model", "version", "protocol", "code"), registry=self.registry)
        self.seconds = Histogram("labhub_serve_request_seconds", "Inference requests' time from arrival to "
                                 "the last byte of the answer", ("model", "version", "protocol"),
                                 buckets=BUCKETS, registry=self.registry)

    def observe(self, labels: tuple[str, str, str], code: int, seconds: float) -> None:
        self.requests.labels(*labels, str(code)).inc()
        self.seconds.labels(*labels).observe(seconds)

    def exposition(self) -> bytes:
        """kserve's metrics (process, request_*_seconds) and then ours, in the text format 0.0.4.

        One of several replicas (``PROMETHEUS_MULTIPROC_DIR`` set, as ``--replicas`` does): every
        replica's counters, summed, as prometheus_client's multiprocess mode keeps them."""
        import os

        from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client.multiprocess import MultiProcessCollector

            every = CollectorRegistry()
            MultiProcessCollector(every)
            return generate_latest(every)
        return generate_latest(REGISTRY) + generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware: every ``POST`` to an inference route measured and counted with its status code.

    ``resolve`` turns a path's ``NAME`` or ``NAME@V`` into the (model, version) labels: ``("", "")`` for
    a model not served, ``(NAME, "")`` for a version not served. ``/json`` names its model in its body:
    the route puts the labels into the list at ``scope[LABELS]``.
    """

    def __init__(self, app: Any, metrics: Metrics, resolve: Callable[[str], tuple[str, str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.resolve = resolve

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/json":
            protocol, labels = "tfaas", ["", ""]
            scope = dict(scope, **{LABELS: labels})
        elif path.endswith(("/infer", ":predict")) and (found := _INFER.fullmatch(path)):
            protocol = "v2" if found["target"] else "v1"
            labels = list(self.resolve(found["target"] or found["v1"]))
        else:
            await self.app(scope, receive, send)
            return
        status = [500]  # an exception that escapes is answered 500 by the outermost middleware

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe((labels[0], labels[1], protocol), status[0], time.perf_counter() - started)
