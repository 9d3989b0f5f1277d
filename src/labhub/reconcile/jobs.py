"""What the reconciler does differently for jobs: how an ended job is described, what it is told.

A job is ready as soon as it runs; it ends on its own.  Its end is a result, not a failure
to start: exit code 0 is ``succeeded``; anything else is ``failed``, with the exit code and
the last line the job printed (a Python program's exception, by convention) at the top of
the reason and the last log lines below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.backends.base import Observation, Phase
from labhub.files import archive
from labhub.models import Folder, Instance, Kind, Status
from labhub.services.folders import Folders
from labhub.services.jobs import OUTPUT, JobFiles

LAST_LINE_MAX = 300


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    reason: str
    message: str


def outcome(obs: Observation, lines: list[str]) -> Outcome:
    """The ended job's status, reason code and message (its last log lines appended)."""
    tail = ("\n--- last log lines ---\n" + "\n".join(lines)) if lines else ""
    if obs.phase == Phase.SUCCEEDED:
        return Outcome(Status.SUCCEEDED, "exited", "finished successfully (exit code 0)" + tail)
    if obs.phase == Phase.GONE:
        return Outcome(Status.FAILED, "gone", (obs.message or "its process is gone") + tail)
    what = obs.message or (f"exited with code {obs.exit_code}" if obs.exit_code is not None else "failed")
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    if last and obs.reason != "OOM":
        what += ": " + (last if len(last) <= LAST_LINE_MAX else last[:LAST_LINE_MAX] + "…")
    return Outcome(Status.FAILED, obs.reason or "exited", what + tail)


@dataclass(frozen=True, slots=True)
class JobPlaces:
    """A job's launch additions: its working directory, environment, directories to create and
    the input folder its account may read."""

    home: Path
    env: dict[str, str]
    dirs: tuple[str, ...]
    readable: tuple[Path, ...]


def places(inst: Instance, jobs: JobFiles, folders: Folders) -> JobPlaces:
    input_dir = folders.path(inst.owner_id, inst.input_folder) if inst.input_folder else None
    return JobPlaces(home=jobs.home(inst.id), env=jobs.env(inst.id, input_dir), dirs=(OUTPUT,),
                     readable=(input_dir,) if input_dir is not None else ())


Progress = Callable[[str], None]


FOLDER_PREFIX = "folder:"


async def service_model(session: AsyncSession, inst: Instance, jobs: JobFiles,
                        folders: Folders) -> tuple[Path | None, str, tuple[Path, ...]]:
    """A service's ``model`` parameter as the file to serve: ``JOB/PATH`` (an artifact of one of its
    owner's jobs, which is its owner's account's file, as the service is) or ``folder:NAME/PATH`` (a
    file uploaded into one of its owner's folders: the folder is made readable to the service).
    Returns ``(path, "", readable)`` or ``(None, why, ())``."""
    ref = str((inst.params or {}).get("model") or "")
    in_folder = ref.startswith(FOLDER_PREFIX)
    top, _, inner = ref.removeprefix(FOLDER_PREFIX).partition("/")
    try:
        relative = archive.check_name(inner)
    except archive.ArchiveError as exc:
        return None, f"model: {exc}", ()
    if in_folder:
        found = await session.scalar(select(Folder.id).where(Folder.owner_id == inst.owner_id, Folder.name == top))
        if found is None:
            return None, f"model: you have no folder named {top!r}", ()
        directory = folders.path(inst.owner_id, top)
        path = directory / relative
        if not path.is_file() or path.is_symlink():
            return None, f"model: folder {top!r} has no file {relative!r}", ()
        return path, "", (directory,)
    job_id = await session.scalar(select(Instance.id).where(
        Instance.owner_id == inst.owner_id, Instance.name == top, Instance.kind == Kind.JOB)
        .order_by(Instance.created_at.desc()).limit(1))
    if job_id is None:
        return None, f"model: you have no job named {top!r}", ()
    path = jobs.output(job_id) / relative
    if not path.is_file() or path.is_symlink():
        return None, f"model: job {top!r} has no artifact {relative!r}", ()
    return path, "", ()
