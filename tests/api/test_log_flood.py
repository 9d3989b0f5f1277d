"""A real hub, a real local instance that floods its log and fails: the hub's memory and answers stay small."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

from labhub.backends.procinfo import MAX_TAIL_BYTES
from labhub.services.lifecycle import MESSAGE_LIMIT

pytestmark = pytest.mark.asyncio
MiB = 1024 * 1024
FLOOD_MIB = 100
# Peak RSS growth allowed while the hub handles the flood.  Measured with the bounded reads: 0.0-1.1 MiB
# (SQLite, PostgreSQL); before them +922 MiB peak, +631 MiB left over.  The margin is for allocator noise.
RSS_MARGIN = 16 * MiB
BROKEN = """title: Broken
command: [python3, -c, 'import sys; print("boom: no GPU driver"); sys.exit(3)']
"""
# 100 MiB without a newline, then a NUL byte (PostgreSQL's text refuses it) and a two-byte character.
FLOOD = ("title: Flood\ncommand: [python3, -c, 'import sys; w = sys.stdout.buffer.write; "
         f'[w(b"x" * 2**20) for _ in range({FLOOD_MIB})]; '
         r'w(b"\x00 caf\xc3\xa9, the end"); sys.stdout.flush(); sys.exit(3)' "']\n")


def memory() -> dict[str, int]:
    """This process's resident memory now and at its peak (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


async def timed(http, url: str, **kwargs):
    started = time.perf_counter()
    resp = await http.get(url, **kwargs)
    return resp, time.perf_counter() - started


async def fail_once(hub, alice, template: str, name: str) -> dict:
    resp = await alice.http.post("/api/v1/instances", json={"template": template, "name": name})
    assert resp.status_code == 201, resp.text
    return await hub.wait_status(alice, resp.json()["id"], {"failed"}, timeout=60)


async def test_a_100_mib_log_without_newlines_does_not_grow_the_hub(start_hub, database_url, tmp_path, shared_tmp):
    """The attack: an instance prints 100 MiB without a newline and fails; the hub reads its "last lines"."""
    site = tmp_path / "templates"
    site.mkdir()
    (site / "broken.yaml").write_text(BROKEN)
    (site / "flood.yaml").write_text(FLOOD)
    # The instances run as per-user accounts (the hub runs as root): their data dir must be traversable.
    hub = await start_hub(database_url, templates_dir=site, data_dir=shared_tmp / "data")
    alice = await hub.user("alice")

    warm = await fail_once(hub, alice, "broken", "warm-up")  # every code path once, before the baseline
    assert "boom: no GPU driver" in warm["message"]
    await alice.http.get("/api/v1/instances")
    await alice.http.get(f"/api/v1/instances/{warm['id']}/logs")
    gc.collect()
    reset_peak()
    before = memory()

    failed = await fail_once(hub, alice, "flood", "flood")
    log = hub.hub.settings.data_dir / "instances" / failed["id"] / "output.log"
    listing, list_s = await timed(alice.http, "/api/v1/instances")
    logs, logs_s = await timed(alice.http, f"/api/v1/instances/{failed['id']}/logs", params={"tail": 10_000})
    events, events_s = await timed(alice.http, f"/api/v1/instances/{failed['id']}/events")
    after = memory()
    growth, peak = after["VmRSS"] - before["VmRSS"], after["VmHWM"] - before["VmRSS"]
    print(f"\nlog {log.stat().st_size / MiB:.0f} MiB; hub RSS growth {growth / MiB:.2f} MiB, peak growth "
          f"{peak / MiB:.2f} MiB; list {list_s * 1000:.0f} ms ({len(listing.content)} B), logs {logs_s * 1000:.0f} ms "
          f"({len(logs.content)} B), events {events_s * 1000:.0f} ms ({len(events.content)} B)")

    assert log.stat().st_size >= FLOOD_MIB * MiB  # the flood did happen
    assert peak <= RSS_MARGIN and growth <= RSS_MARGIN
    assert "exited with code 3" in failed["message"] and failed["message"].endswith("café, the end")
    assert len(failed["message"].encode()) <= MESSAGE_LIMIT
    assert events.status_code == 200 and events.json()[-1]["status"] == "failed"
    assert all(len(e["message"].encode()) <= MESSAGE_LIMIT for e in events.json())
    assert listing.status_code == 200 and len(listing.content) <= 4 * MESSAGE_LIMIT
    assert logs.status_code == 200 and len(logs.content) <= MAX_TAIL_BYTES and logs.text.rstrip().endswith("the end")
    assert max(list_s, logs_s, events_s) < 2.0
