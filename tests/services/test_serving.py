"""Reading labhub_serve's counters: Prometheus text as prometheus_client writes it, summed per model version."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from labhub.services.serving import summarise


def exposition() -> str:
    registry = CollectorRegistry()
    requests = Counter("labhub_serve_requests", "answered requests", ["model", "version", "protocol", "code"],
                       registry=registry)
    seconds = Histogram("labhub_serve_request_seconds", "time to answer", ["model", "version", "protocol"],
                        buckets=(0.001, 0.01, 0.1), registry=registry)
    for protocol, code, took in (("v2", "200", 0.0005), ("v2", "200", 0.005), ("v1", "200", 0.05),
                                 ("v2", "400", 0.0002), ("tfaas", "503", 2.0)):
        requests.labels("higgs", "1", protocol, code).inc()
        seconds.labels("higgs", "1", protocol).observe(took)
    requests.labels("higgs", "2", "v2", "200").inc(7)
    seconds.labels("higgs", "2", "v2").observe(0.02)
    return generate_latest(registry).decode()


def test_counters_are_summed_over_protocols_per_version():
    found = summarise(exposition())
    one = found["higgs@1"]
    assert one["requests"] == 5 and one["errors"] == 2  # a 400 and a 503
    assert one["seconds_count"] == 5 and abs(one["seconds_sum"] - 2.0557) < 1e-9
    assert one["buckets"] == [[0.001, 2], [0.01, 3], [0.1, 4], [None, 5]]  # cumulative, +Inf last
    assert found["higgs@2"]["requests"] == 7 and found["higgs@2"]["buckets"][-1] == [None, 1]


def test_text_that_is_not_prometheus_gives_nothing():
    assert summarise('{"method": "GET"}') == {}
    assert summarise("") == {}
