"""services/views.py: plain words for why an instance ended, choices with reasons, form parsing (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from labhub.backends.fake import FakeBackend
from labhub.catalog import Template
from labhub.models import Event, Instance
from labhub.services import views
from labhub.settings import DEFAULT_SIZES

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def ended(status: str, reason: str, message: str) -> Instance:
    return Instance(id="0" * 32, status=status, reason=reason, message=message, hours=4)


@pytest.mark.parametrize("status, reason, message, words", [
    ("stopped", "user", "stopped by the owner", "Stopped by its owner."),
    ("stopped", "idle", "stopped: idle for too long",
     "Stopped because nobody used it for longer than the template's idle timeout."),
    ("expired", "expired", "expired: its duration ran out", "Expired: the 4 h chosen at launch ran out."),
    ("stopped", "exited", "the process exited on its own (code 0)", "The program exited on its own."),
    ("stopped", "user_disabled", "stopped (user_disabled)",
     "Stopped because the owner's account was disabled by an admin."),
    ("failed", "start_failed", "failed to start: exited with code 3\n--- last log lines ---\nboom",
     "Failed to start: exited with code 3"),
    ("failed", "start_timeout", "did not become ready within 120 s",
     "Failed to start: it did not become ready within 120 s"),
    ("failed", "submit_failed", "slurm backend: sbatch: error: QOSMaxGRESPerUser",
     "The backend refused to start it: slurm backend: sbatch: error: QOSMaxGRESPerUser"),
    ("failed", "OOM", "killed: out of memory", "Failed: killed: out of memory"),
    ("succeeded", "exited", "finished successfully", "Finished successfully."),
])
def test_why_it_ended_in_plain_words(status, reason, message, words):
    assert views.explain_end(ended(status, reason, message)) == words


def test_admin_stop_names_the_admin_and_active_instances_have_no_reason():
    events = [Event(status="stopping", reason="admin", message="stop requested by admin root")]
    assert views.explain_end(ended("stopped", "admin", "stopped by an admin"), events=events) == \
        "Stopped by an admin (root)."
    assert views.explain_end(ended("stopped", "admin", "stopped by an admin")) == "Stopped by an admin."
    assert views.explain_end(ended("running", "ready", "ready after 3 s")) is None


def test_failure_split_and_relative_times():
    assert views.split_failure("failed: x\n--- last log lines ---\na\nb") == ("failed: x", ["a", "b"])
    assert views.split_failure("failed: x") == ("failed: x", [])
    assert views.relative(NOW + dt.timedelta(hours=3, minutes=5), NOW) == "in 3 h 5 min"
    assert views.relative(NOW + dt.timedelta(days=30), NOW) == "in 30 d"
    assert views.relative(NOW - dt.timedelta(seconds=12), NOW) == "12 s ago"
    assert views.relative(None, NOW) == "—"


def test_suggested_names_skip_taken_ones():
    assert views.suggest_name("jupyterlab", set()) == "jupyterlab-1"
    assert views.suggest_name("jupyterlab", {"jupyterlab-1", "jupyterlab-2"}) == "jupyterlab-3"
    assert len(views.suggest_name("x" * 63, set())) <= 63


def template(**extra) -> Template:
    return Template.model_validate({"name": "t", "title": "T", "command": ["run"], **extra})


def test_sizes_say_why_they_are_not_offered():
    choices = {c.name: c for c in views.size_choices(template(sizes=["small", "gpu"]), sizes=DEFAULT_SIZES,
                                                     backends={"fake": FakeBackend()})}
    assert choices["small"].allowed
    assert choices["medium"].reason == "not offered by this template"
    assert choices["gpu"].reason == "the fake backend has no GPUs"
    with_gpus = views.size_choices(template(), sizes=DEFAULT_SIZES, backends={"fake": FakeBackend(gpus=True)})
    assert all(c.allowed for c in with_gpus)


def test_form_values_become_typed_parameters():
    tpl = template(params=[{"name": "n", "type": "integer"}, {"name": "x", "type": "number"},
                           {"name": "flag", "type": "boolean"}, {"name": "s", "type": "string"}])
    values, errors = views.form_params(tpl, {"param.n": "3", "param.x": "1.5", "param.s": "hi"})
    assert values == {"n": 3, "x": 1.5, "flag": False, "s": "hi"} and errors == {}
    values, errors = views.form_params(tpl, {"param.n": "three", "param.flag": "1", "param.s": ""})
    assert values == {"flag": True} and errors == {"params.n": "must be a whole number"}
