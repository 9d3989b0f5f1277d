"""The wire form of a transaction's changes (PostgreSQL caps a notification at 8,000 bytes)."""

from __future__ import annotations

import json

from labhub.services import changes


def test_round_trip():
    recorded = changes.Changes(instances={"i" * 32: 7}, wake=True, users={3, 4}, deletions=True)
    [payload] = changes.encode(recorded, "host-1-abc")
    replica, back = changes.decode(payload)
    assert replica == "host-1-abc"
    assert back == recorded


def test_a_large_change_is_split_into_messages_that_each_fit():
    recorded = changes.Changes(instances={f"{n:032d}": n for n in range(1000)}, wake=True, everyone=True)
    payloads = changes.encode(recorded, "r" * 64)
    assert len(payloads) == 10
    assert max(len(p.encode()) for p in payloads) < 8000
    merged: dict[str, int] = {}
    for payload in payloads:
        merged.update(changes.decode(payload)[1].instances)
    assert merged == recorded.instances
    assert changes.decode(payloads[0])[1].everyone and not changes.decode(payloads[1])[1].everyone


def test_many_users_become_everyone():
    payloads = changes.encode(changes.Changes(users=set(range(500))), "r")
    body = json.loads(payloads[0])
    assert body["e"] == 1 and len(body["u"]) <= changes.MAX_IDS_PER_MESSAGE


def test_foreign_or_broken_payloads_are_ignored():
    for payload in ["", "null", "[]", '{"i": {}}', '{"r": "x", "i": {"a": "not a number"}}', "{" * 10_000]:
        assert changes.decode(payload) is None
