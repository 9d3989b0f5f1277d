"""Where a user's limits come from, and the periods hours are counted in (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from labhub.services.errors import Invalid
from labhub.services.quotas import Usage, effective, over_limits, parse, period_end, period_start
from labhub.settings import QuotaSettings


def test_own_quota_then_the_most_generous_group_then_the_site():
    site = QuotaSettings(instances=2, gpus=0, cpus=8)
    limits = effective(site, {"gpus": 4}, [("a", {"gpus": 1, "instances": 3}), ("b", {"instances": 10}), ("c", None)])
    assert (limits.gpus, limits.instances, limits.cpus, limits.memory_mb) == (4, 10, 8, None)
    assert limits.source == {"gpus": "user", "instances": "group:b", "cpus": "site"}
    assert effective(QuotaSettings(), None, []).as_dict() == dict.fromkeys(limits.as_dict())


def test_a_group_limit_of_zero_is_a_limit():
    assert effective(QuotaSettings(gpus=2), None, [("students", {"gpus": 0})]).gpus == 0


def test_parse_keeps_what_is_set_and_names_bad_fields():
    assert parse({"gpus": 2, "cpus": None}) == {"gpus": 2}
    with pytest.raises(Invalid) as caught:
        parse({"gpus": -1, "memory_mb": "lots", "colour": 1})
    assert set(caught.value.fields) == {"gpus", "memory_mb", "colour"}


@pytest.mark.parametrize(("period", "start", "end"), [
    ("day", dt.datetime(2026, 12, 31, tzinfo=dt.UTC), dt.datetime(2027, 1, 1, tzinfo=dt.UTC)),
    ("week", dt.datetime(2026, 12, 28, tzinfo=dt.UTC), dt.datetime(2027, 1, 4, tzinfo=dt.UTC)),
    ("month", dt.datetime(2026, 12, 1, tzinfo=dt.UTC), dt.datetime(2027, 1, 1, tzinfo=dt.UTC)),
])
def test_periods(period, start, end):
    now = dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC)  # a Thursday
    assert period_start(now, period) == start
    assert period_end(start, period) == end


def test_over_limits_says_what_a_lowered_quota_leaves_running():
    limits = effective(QuotaSettings(instances=1, gpus=1, gpu_hours=5), None, [])
    assert over_limits(limits, Usage(instances=3, gpus=1, gpu_hours=6.5)) == [
        "instances: 3 in use, the limit is now 1", "GPU-hours: 6.5 in use, the limit is now 5"]
