"""Golden tests for reading Slurm's output (``labhub.backends.slurm_parse``); no cluster needed."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from labhub.backends import slurm_parse as sp
from labhub.backends.base import Observation, Phase

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("LABHUB_UPDATE_GOLDEN") == "1"


def check_golden(name: str, actual: Any) -> None:
    """Compare ``actual`` with ``golden/<name>`` (JSON); rewrite it when LABHUB_UPDATE_GOLDEN=1."""
    path = GOLDEN / name
    text = json.dumps(actual, indent=1, sort_keys=True) + "\n"
    if UPDATE or not path.exists():
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"{path} did not exist; written: review it and run again")
    assert json.loads(path.read_text()) == actual, f"differs from {path} (LABHUB_UPDATE_GOLDEN=1 rewrites it)"


def as_dict(obs: Observation) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, Phase) else v) for k, v in dataclasses.asdict(obs).items()}


@pytest.mark.parametrize("name", ["squeue_queue", "squeue_ended", "squeue_odd_states"])
def test_squeue_rows_and_what_they_mean(name: str):
    rows = sp.parse_squeue((GOLDEN / f"{name}.txt").read_text())
    positions = sp.queue_positions((GOLDEN / "squeue_positions.txt").read_text(), "gpu")
    actual = {
        job_id: {
            "row": dataclasses.asdict(row),
            "observed": as_dict(sp.observe_row(row, url=None, position=positions.get(job_id))),
            "observed_after_call_home": as_dict(sp.observe_row(row, url="http://10.0.0.7:41234")),
        }
        for job_id, row in rows.items()
    }
    check_golden(f"{name}.expected.json", actual)


def test_odd_states_in_words():
    rows = sp.parse_squeue((GOLDEN / "squeue_odd_states.txt").read_text())
    seen = {job_id: sp.observe_row(row, url=None) for job_id, row in rows.items()}
    assert "114_3" not in rows and "115" not in rows  # array tasks and short lines are skipped
    assert seen["101"].phase == Phase.PENDING and "QOSMaxGRESPerUser" in seen["101"].message
    assert seen["101"].reason == "QOSMaxGRESPerUser" and seen["102"].reason == "ReqNodeNotAvail"
    assert "ReqNodeNotAvail, UnavailableNodes:gpu[01-02]" in seen["102"].message
    assert "expected start 2026-12-01 09:30:00" in seen["102"].message
    assert seen["103"].phase == Phase.STARTING  # CONFIGURING: the node is being prepared
    assert seen["104"].phase == Phase.STARTING and "COMPLETING" in seen["104"].message
    for job_id, reason in {"105": "NODE_FAIL", "106": "PREEMPTED", "107": "TIMEOUT", "108": "OOM",
                           "112": "BOOT_FAIL"}.items():
        assert seen[job_id].phase == Phase.FAILED and seen[job_id].reason == reason, seen[job_id]
        assert "Slurm says" in seen[job_id].message
    assert seen["109"].phase == Phase.STARTING  # SUSPENDED before it called home: still alive
    assert seen["110"].phase == Phase.PENDING and "[REQUEUED]" in seen["110"].message


def test_a_labhub_job_runs_without_calling_home():
    """A job listens nowhere: running is RUNNING without a URL; queued, preparing and ended read as
    they do for a workspace."""
    actual = {}
    for name in ("squeue_queue", "squeue_ended", "squeue_odd_states"):
        rows = sp.parse_squeue((GOLDEN / f"{name}.txt").read_text())
        actual[name] = {job_id: as_dict(sp.observe_row(row, url=None, calls_home=False))
                        for job_id, row in rows.items()}
    check_golden("squeue_as_jobs.expected.json", actual)
    ended = sp.parse_squeue((GOLDEN / "squeue_ended.txt").read_text())
    odd = sp.parse_squeue((GOLDEN / "squeue_odd_states.txt").read_text())
    running = sp.observe_row(ended["2"], url=None, calls_home=False)
    assert running.phase == Phase.RUNNING and running.url is None and running.message == "job 2 running on vm"
    assert sp.observe_row(odd["103"], url=None, calls_home=False).phase == Phase.STARTING  # CONFIGURING
    assert sp.observe_row(odd["104"], url=None, calls_home=False).phase == Phase.RUNNING  # COMPLETING
    assert sp.observe_row(odd["109"], url=None, calls_home=False).phase == Phase.RUNNING  # SUSPENDED
    for rows in (ended, odd):
        for row in rows.values():
            if row.state in sp.QUEUED or not row.alive:
                assert sp.observe_row(row, url=None, calls_home=False) == sp.observe_row(row, url=None)


def test_a_stranger_job_name_with_a_pipe_does_not_shift_fields():
    row = sp.parse_squeue((GOLDEN / "squeue_queue.txt").read_text())["5"]
    assert (row.state, row.user, row.partition, row.name) == ("PENDING", "root", "debug", "my analysis")


def test_queue_positions():
    positions = sp.queue_positions((GOLDEN / "squeue_positions.txt").read_text(), "gpu")
    assert positions == {"301": (1, 3), "302": (2, 3), "303": (3, 3)}
    row = sp.JobRow("302", "PENDING", "Priority", "N/A", "", "alice", "gpu", "labhub-x", "labhub:labhub:x")
    assert sp.pending_message(row, positions["302"]).endswith("position 2 of 3 in partition gpu")


def test_sacct_and_scontrol_endings():
    ended = sp.parse_sacct((GOLDEN / "sacct_accounting.txt").read_text())
    actual = {job_id: {"ended": dataclasses.asdict(info), "exit_code": info.exit_code,
                       "observed": as_dict(sp.observe_ended(job_id, info))}
              for job_id, info in ended.items() if info.state not in sp.ALIVE}
    for name in ("scontrol_cancelled", "scontrol_failed"):
        info = sp.parse_scontrol_job((GOLDEN / f"{name}.txt").read_text())
        assert info is not None
        actual[name] = {"ended": dataclasses.asdict(info), "exit_code": info.exit_code,
                        "observed": as_dict(sp.observe_ended("1", info))}
    check_golden("endings.expected.json", actual)
    assert ended["203"].state == "CANCELLED" and ended["203"].exit_code == 143
    assert sp.observe_ended("205", ended["205"]).reason == "OOM"
    assert sp.observe_ended("201", ended["201"]).phase == Phase.SUCCEEDED
    failed = sp.observe_ended("202", ended["202"])
    assert failed.phase == Phase.FAILED and failed.exit_code == 2 and "exited with code 2" in failed.message


@pytest.mark.parametrize(("stdout", "job_id"), [("42\n", "42"), ("42;cluster-a\n", "42"),
                                                 ("sbatch: warning: x\n77\n", "77")])
def test_parse_sbatch(stdout: str, job_id: str):
    assert sp.parse_sbatch(stdout) == job_id


@pytest.mark.parametrize("stdout", ["", "Submitted batch job 42", "42abc"])
def test_parse_sbatch_refuses_anything_else(stdout: str):
    with pytest.raises(ValueError):
        sp.parse_sbatch(stdout)


@pytest.mark.parametrize(("text", "unreachable"), [
    ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)", True),
    ("scancel: error: Kill job error on job id 4: Unable to contact slurm controller (connect failure)", True),
    ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", True),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination", False),
    ("slurm_load_jobs error: Invalid job id specified", False),
])
def test_controller_unreachable(text: str, unreachable: bool):
    assert sp.controller_unreachable(text) is unreachable
