"""The admission queue's pure decisions: order, reservations, messages, refusals."""

from __future__ import annotations

import datetime as dt

from labhub.backends.base import Capacity
from labhub.services.admission import Ask, Free, describe, ordinal, plan, refusal
from labhub.services.quotas import Limits, Usage

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def ask(n: int, owner: int = 1, *, gpus: int = 0, cpus: float = 1, priority: int = 0, backend: str = "local") -> Ask:
    return Ask(id=f"i{n:02d}", owner_id=owner, name=f"ws{n}", backend=backend, cpus=cpus, memory_mb=512, gpus=gpus,
               priority=priority, created_at=T0 + dt.timedelta(seconds=n))


def admitted(verdicts) -> list[str]:
    return [v.id for v in verdicts if v.admit]


def test_a_quota_admits_the_first_n_in_launch_order():
    asks = [ask(n) for n in reversed(range(10))]  # given in any order
    verdicts = plan(asks, usage={1: Usage(instances=2)}, limits={1: Limits(instances=5)}, free={})
    assert admitted(verdicts) == ["i00", "i01", "i02"]
    assert [v.id for v in verdicts] == [f"i{n:02d}" for n in range(10)]  # the queue's order
    assert verdicts[3].why == "waiting for your quota: 5 of 5 instances in use"


def test_one_owners_later_small_launch_does_not_pass_their_earlier_one():
    asks = [ask(0, gpus=2), ask(1)]
    verdicts = plan(asks, usage={1: Usage(gpus=1)}, limits={1: Limits(gpus=2)}, free={})
    assert admitted(verdicts) == []
    assert verdicts[0].why == "waiting for your GPU quota: this needs 2 GPUs, 1 of 2 in use"
    assert verdicts[1].why == "waiting behind your earlier launch 'ws0'"


def test_others_are_not_held_up_by_one_owners_quota():
    verdicts = plan([ask(0, owner=1), ask(1, owner=2)], usage={1: Usage(instances=1)},
                    limits={1: Limits(instances=1), 2: Limits(instances=1)}, free={})
    assert admitted(verdicts) == ["i01"]


def test_a_big_launch_waiting_for_capacity_reserves_it_and_priority_goes_first():
    free = {"local": Free.of(Capacity(gpus=2), Usage(gpus=1))}
    verdicts = plan([ask(0, owner=1, gpus=2), ask(1, owner=2, gpus=1), ask(2, owner=3, cpus=1)],
                    usage={}, limits={}, free=free)
    assert admitted(verdicts) == ["i02"]  # needs no GPU; the 1-GPU one may not take bob's reserved GPU
    assert verdicts[0].why == "waiting for 2 GPUs: 1 free on the local backend"
    first = plan([ask(0, owner=1, gpus=2), ask(1, owner=2, gpus=1, priority=5)], usage={}, limits={}, free=free)
    assert admitted(first) == ["i01"] and first[0].id == "i01"
    assert free["local"].gpus == 1  # plan copies what it is given


def test_unlimited_backends_and_sleeping_capacity():
    verdicts = plan([ask(n, gpus=4) for n in range(3)], usage={}, limits={}, free={"slurm": Free(None, None, None)})
    assert len(admitted(verdicts)) == 3


def test_refusals_name_the_field_and_the_reason():
    big = ask(0, gpus=3)
    assert refusal(big, limits=Limits(), usage=Usage(), capacity=Capacity(gpus=2), hours=1, period="month") == {
        "size": "asks for 3 GPUs; the local backend has 2"}
    assert refusal(big, limits=Limits(gpus=2), usage=Usage(), capacity=Capacity(), hours=1, period="month") == {
        "size": "asks for 3 GPUs; your quota allows 2 at once"}
    hours = refusal(ask(0, gpus=2), limits=Limits(gpu_hours=10), usage=Usage(gpu_hours=7.5), capacity=Capacity(),
                    hours=2, period="week")
    assert hours == {"hours": "could use 4 GPU-hours; 2.5 of 10 are left this week"}
    assert refusal(ask(0), limits=Limits(instances=0), usage=Usage(), capacity=Capacity(), hours=1,
                   period="month") == {"quota": "your quota allows no instances"}
    assert refusal(ask(0, gpus=1), limits=Limits(gpus=1, gpu_hours=2), usage=Usage(gpu_hours=1), capacity=Capacity(gpus=1),
                   hours=1, period="month") == {}


def test_positions_in_words():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]
    assert describe("waiting for 2 GPUs: 1 free", 2) == "waiting for 2 GPUs: 1 free; you are 2nd in the queue"
    assert describe("x", None) == "x"
