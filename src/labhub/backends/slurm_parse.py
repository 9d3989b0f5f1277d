"""Pure functions that read Slurm's command output and say what it means.

Nothing here runs a command: the Slurm backend passes in the text of
``sbatch --parsable``, ``squeue``, ``sacct`` and ``scontrol show job``, and the
golden tests in ``tests/backends/golden`` pass in captured output, odd states
included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from labhub.backends.base import Observation, Phase

# squeue -o: free-text fields (job name, comment) last, so a '|' in a stranger's job name
# cannot shift the fields that matter.
SQUEUE_FORMAT = "%i|%T|%r|%S|%N|%u|%P|%j|%k"
SACCT_FIELDS = "JobIDRaw,State,ExitCode,Reason,NodeList"

ALIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                   "REQUEUE_FED", "RESV_DEL_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"})
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
# Jobs whose processes run (or ran and are being cleaned up); resources are held.
HOLDING = frozenset({"CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT",
                     "STOPPED"})

# How a job ended -> (reason code for the event, what it means in words).
ENDED: dict[str, tuple[str, str]] = {
    "CANCELLED": ("CANCELLED", "the job was cancelled outside LabHub (scancel)"),
    "TIMEOUT": ("TIMEOUT", "the job reached its Slurm time limit"),
    "NODE_FAIL": ("NODE_FAIL", "the node running the job failed"),
    "PREEMPTED": ("PREEMPTED", "the job was preempted by a higher-priority job"),
    "OUT_OF_MEMORY": ("OOM", "the job ran out of memory"),
    "BOOT_FAIL": ("BOOT_FAIL", "the node failed to boot"),
    "DEADLINE": ("DEADLINE", "the job reached its deadline"),
    "FAILED": ("FAILED", "the job exited with an error"),
    "REVOKED": ("REVOKED", "the job was revoked (federation)"),
    "SPECIAL_EXIT": ("SPECIAL_EXIT", "the job ended in a special state"),
}

# Pending reasons -> plain words (squeue %r).  Unlisted reasons are shown as Slurm says them.
PENDING_REASONS: dict[str, str] = {
    "None": "waiting to be scheduled",
    "Resources": "waiting for resources to become free",
    "Priority": "jobs with higher priority are ahead of it",
    "Dependency": "waiting for another job to finish",
    "BeginTime": "waiting for its start time",
    "JobHeldUser": "held by its owner",
    "JobHeldAdmin": "held by an administrator",
    "ReqNodeNotAvail": "a required node is not available",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "PartitionNodeLimit": "the partition's node limit is reached",
    "PartitionTimeLimit": "the time limit exceeds the partition's maximum",
    "QOSMaxGRESPerUser": "the QoS limit on GPUs (GRES) per user is reached",
    "QOSMaxCpuPerUserLimit": "the QoS limit on CPUs per user is reached",
    "QOSMaxJobsPerUserLimit": "the QoS limit on running jobs per user is reached",
    "QOSMaxMemoryPerUser": "the QoS limit on memory per user is reached",
    "QOSGrpGRES": "the QoS group limit on GPUs (GRES) is reached",
    "QOSGrpCpuLimit": "the QoS group limit on CPUs is reached",
    "AssocGrpGRES": "the account's limit on GPUs (GRES) is reached",
    "AssocGrpCpuLimit": "the account's limit on CPUs is reached",
    "AssocMaxJobsLimit": "the account's limit on running jobs is reached",
    "Licenses": "waiting for licenses",
    "Reservation": "waiting for its reservation",
    "NodeDown": "a node it needs is down",
    "BadConstraints": "no node can satisfy its constraints",
    "InvalidQOS": "its QoS is not valid",
    "InvalidAccount": "its account is not valid",
    "launch failed requeued held": "its launch failed; Slurm requeued and held it",
}

_JOB_ID = re.compile(r"^[0-9]+$")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?$")


@dataclass(frozen=True, slots=True)
class JobRow:
    """One line of ``squeue -o SQUEUE_FORMAT``."""

    job_id: str
    state: str
    reason: str
    start: str
    nodes: str
    user: str
    partition: str
    name: str
    comment: str

    @property
    def alive(self) -> bool:
        return self.state in ALIVE


@dataclass(frozen=True, slots=True)
class Ended:
    """How a finished job ended, from ``sacct`` or ``scontrol show job``."""

    state: str
    exit_status: int | None = None
    signal: int | None = None
    reason: str = ""

    @property
    def exit_code(self) -> int | None:
        """Shell convention: 128 + signal for a signal, else the exit status."""
        if self.signal:
            return 128 + self.signal
        return self.exit_status


def parse_sbatch(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``123`` or ``123;cluster``); ValueError otherwise."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("sbatch printed no job id")
    job_id = lines[-1].split(";", 1)[0]
    if not _JOB_ID.match(job_id):
        raise ValueError(f"sbatch printed {lines[-1]!r}, not a job id")
    return job_id


def normal_state(text: str) -> str:
    """``CANCELLED by 0`` -> ``CANCELLED``; ``RUNNING+`` -> ``RUNNING``."""
    word = text.strip().split(" ", 1)[0] if text.strip() else "UNKNOWN"
    return word.rstrip("+").upper()


def parse_squeue(text: str) -> dict[str, JobRow]:
    """Rows by job id; lines that do not have the expected shape are skipped."""
    rows: dict[str, JobRow] = {}
    for line in text.splitlines():
        parts = line.rstrip("\n").split("|", 8)
        if len(parts) != 9 or not _JOB_ID.match(parts[0].strip()):
            continue
        job_id, state, reason, start, nodes, user, partition, name, comment = (p.strip() for p in parts)
        rows[job_id] = JobRow(job_id, normal_state(state), reason, start, nodes, user, partition, name, comment)
    return rows


def _exit_pair(text: str) -> tuple[int | None, int | None]:
    status, _, sig = text.strip().partition(":")
    try:
        return int(status), int(sig or 0)
    except ValueError:
        return None, None


def parse_sacct(text: str) -> dict[str, Ended]:
    """``sacct -X -n -P -o SACCT_FIELDS``: how each job ended (or is doing), by job id."""
    out: dict[str, Ended] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not _JOB_ID.match(parts[0].strip()):
            continue
        status, sig = _exit_pair(parts[2])
        out[parts[0].strip()] = Ended(normal_state(parts[1]), status, sig, parts[3].strip())
    return out


def parse_scontrol_job(text: str) -> Ended | None:
    """``scontrol show job -o ID``: its state, exit code and reason."""
    state = re.search(r"(?:^|\s)JobState=(\S+)", text)
    if state is None:
        return None
    code = re.search(r"(?:^|\s)ExitCode=(\d+):(\d+)", text)
    reason = re.search(r"(?:^|\s)Reason=(\S+)", text)
    return Ended(normal_state(state.group(1)), int(code.group(1)) if code else None,
                 int(code.group(2)) if code else None, reason.group(1) if reason else "")


def pending_message(row: JobRow, position: tuple[int, int] | None = None) -> str:
    """``waiting in the Slurm queue: Resources (...); expected start ...; position 2 of 5 in gpu``."""
    reason = row.reason or "None"
    key = reason.split(",", 1)[0].strip()
    words = PENDING_REASONS.get(key) or PENDING_REASONS.get(reason)
    text = f"waiting in the Slurm queue: {reason}" + (f" ({words})" if words else "")
    if row.state != "PENDING":
        text += f" [{row.state}]"
    if _TIMESTAMP.match(row.start):
        text += f"; expected start {row.start.replace('T', ' ')}"
    if position is not None:
        text += f"; position {position[0]} of {position[1]} in partition {row.partition}"
    return text


def observe_row(row: JobRow, *, url: str | None, ended: Ended | None = None,
                position: tuple[int, int] | None = None, calls_home: bool = True) -> Observation:
    """What one squeue row means for the hub.

    ``url`` is where the job said (by calling home) it listens; a running job
    that has not called home yet is ``STARTING``.  ``calls_home=False`` (a LabHub
    job, which listens nowhere): running is ``RUNNING`` without a URL at once.
    ``ended`` adds the exit code and reason of a finished job when accounting or
    ``scontrol`` had them.
    """
    state = row.state
    where = f" on {row.nodes}" if row.nodes and row.nodes not in ("(null)", "") else ""
    if not calls_home and state in HOLDING and state != "CONFIGURING":
        if state == "COMPLETING":
            return Observation(Phase.RUNNING, message=f"job {row.job_id} is ending; Slurm is cleaning up{where} "
                                                      "(COMPLETING)")
        return Observation(Phase.RUNNING, message=f"job {row.job_id} {state.lower()}{where}")
    if state in QUEUED:
        if url:  # it called home, so it runs; the queue state is older than the call
            return Observation(Phase.RUNNING, url=url, message=f"job {row.job_id} running{where}")
        reason = (row.reason or "None").split(",", 1)[0].strip()[:32]
        return Observation(Phase.PENDING, message=pending_message(row, position), reason=reason)
    if state == "CONFIGURING":
        if url:
            return Observation(Phase.RUNNING, url=url, message=f"job {row.job_id} running{where}")
        return Observation(Phase.STARTING, message=f"job {row.job_id}: Slurm is preparing the node{where}")
    if state == "COMPLETING":
        return Observation(Phase.RUNNING if url else Phase.STARTING, url=url,
                           message=f"job {row.job_id} is ending; Slurm is cleaning up{where} (COMPLETING)")
    if state in HOLDING:
        if url:
            return Observation(Phase.RUNNING, url=url, message=f"job {row.job_id} {state.lower()}{where}")
        return Observation(Phase.STARTING, message=f"job {row.job_id} {state.lower()}{where}; "
                                                   "waiting for it to call home")
    return observe_ended(row.job_id, ended or Ended(state, reason=row.reason))


def observe_ended(job_id: str, ended: Ended) -> Observation:
    """A finished job: ``SUCCEEDED`` for a zero exit, else ``FAILED`` with Slurm's reason."""
    state = ended.state
    if state == "COMPLETED" and not ended.exit_code:
        return Observation(Phase.SUCCEEDED, exit_code=0, message=f"job {job_id} completed (exit code 0)")
    if state in ("COMPLETED", "FAILED") and ended.exit_code is not None and not ended.signal:
        return Observation(Phase.FAILED, exit_code=ended.exit_code,
                           message=f"exited with code {ended.exit_code} (Slurm job {job_id} {state})")
    code, words = ENDED.get(state, (state[:32] or "FAILED", "the job ended"))
    message = f"Slurm says {state}: {words} (job {job_id}"
    if ended.signal:
        message += f", signal {ended.signal}"
    elif ended.exit_status:
        message += f", exit code {ended.exit_status}"
    message += ")"
    return Observation(Phase.FAILED, exit_code=ended.exit_code or None, message=message, reason=code)


def queue_positions(text: str, partition: str) -> dict[str, tuple[int, int]]:
    """``squeue -h -t PD -p P -o '%i|%P' --sort=-p,i``: each pending job's place in line (1-based)."""
    ids = [parts[0] for line in text.splitlines()
           if len(parts := line.strip().split("|")) == 2 and parts[1] == partition and _JOB_ID.match(parts[0])]
    return {job_id: (i + 1, len(ids)) for i, job_id in enumerate(ids)}


def controller_unreachable(text: str) -> bool:
    """Whether a command's complaint means the controller cannot be reached (retry later)."""
    lowered = text.lower()
    return any(s in lowered for s in (
        "unable to contact slurm controller", "socket timed out", "connection refused", "connect failure",
        "communication connection failure", "slurm_persist_conn_open", "zero bytes were transmitted",
        "slurmctld is down", "slurm controller is down", "munge", "authentication", "temporarily unavailable",
    ))


def is_invalid_job(text: str) -> bool:
    return "invalid job id" in text.lower()
