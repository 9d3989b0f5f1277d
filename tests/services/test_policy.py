"""Group launch policy: the most permissive of a user's groups, single-instance from any (pure)."""

from __future__ import annotations

import pytest

from labhub.models import Group
from labhub.services.errors import Invalid
from labhub.services.policy import Policy, of_groups, parse


def group(name, *, priority=0, self_service=True, **policy):
    return Group(name=name, priority=priority, self_service=self_service, policy=policy or None)


def test_no_groups_is_the_sites_behaviour():
    assert of_groups([]) == Policy()


def test_the_most_permissive_setting_wins_and_single_instance_from_any():
    rules = of_groups([group("a", priority=3, self_service=False, max_hours=8, single_instance=True,
                             custom_size={"cpus": 4, "memory_mb": 1000}),
                       group("b", priority=1, max_hours=48, default_hours=2,
                             custom_size={"cpus": 2, "memory_mb": 8000, "gpus": 1})])
    assert (rules.priority, rules.self_service, rules.max_hours, rules.default_hours) == (3, True, 48, 2)
    assert rules.single_instance is True
    assert (rules.custom_size.cpus, rules.custom_size.memory_mb, rules.custom_size.gpus) == (4, 8000, 1)
    assert of_groups([group("a", self_service=False)]).self_service is False


def test_durations_fall_back_to_the_template_and_the_default_never_passes_the_maximum():
    assert Policy().hours(4, 24) == (4, 24)
    assert Policy(max_hours=2).hours(4, 24) == (2, 2)
    assert Policy(max_hours=72, default_hours=8).hours(4, 24) == (8, 72)


def test_parse_refuses_bad_values_by_field():
    assert parse({"max_hours": 4, "single_instance": False}) == {"max_hours": 4}
    with pytest.raises(Invalid) as caught:
        parse({"max_hours": 0, "custom_size": {"cpus": -1, "memory_mb": 10}, "x": 1})
    assert {"max_hours", "custom_size.cpus", "x"} <= set(caught.value.fields)
