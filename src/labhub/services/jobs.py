"""Jobs' files: each job's directory, its artifacts (what it wrote to ``output/``) and its metrics.

Layout (under ``storage.dir``): ``jobs/<instance id>/`` is the job's working directory,
created by the backend and owned by the account the job runs as; inside it ``output/``
(the artifacts) and ``metrics.jsonl`` (what the job reports, one JSON object per line).
The job's program learns them from its environment (:meth:`JobFiles.env`).

The hub reads these directories while their untrusted owner may still change them, so
every read goes through :mod:`labhub.files.tree` (no symlink followed, only regular files
owned by the job's account, bounded counts) and every read is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import IO, Any

from labhub.files import tree
from labhub.services.folders import measure
from labhub.settings import StorageSettings

OUTPUT = "output"
METRICS = "metrics.jsonl"
METRICS_TAIL_BYTES = 4 * 1024 * 1024  # metrics read from the end of the file at most
MAX_METRIC_POINTS = 5_000


class JobFiles:
    """Paths and bounded reads of jobs' directories."""

    def __init__(self, storage: StorageSettings) -> None:
        assert storage.dir is not None
        self.settings = storage
        self.root = Path(storage.dir) / "jobs"

    def home(self, instance_id: str) -> Path:
        return self.root / instance_id

    def output(self, instance_id: str) -> Path:
        return self.home(instance_id) / OUTPUT

    def env(self, instance_id: str, input_dir: Path | None) -> dict[str, str]:
        """What a job's program is told: where its input is, where artifacts and metrics go."""
        env = {"LABHUB_OUTPUT": str(self.output(instance_id)),
               "LABHUB_METRICS": str(self.home(instance_id) / METRICS)}
        if input_dir is not None:
            env["LABHUB_INPUT"] = str(input_dir)
        return env

    def _owner_uid(self, instance_id: str) -> int | None:
        """The account the job ran as: its directory's owner (the backend made it so); only files
        of that account count as its artifacts (a hard link to someone else's file does not)."""
        try:
            return os.lstat(self.home(instance_id)).st_uid
        except OSError:
            return None

    async def artifacts(self, instance_id: str, *, limit: int | None = None) -> tuple[list[tree.Entry], bool]:
        """The job's artifacts (sorted by path) and whether there were more than ``limit``."""
        uid = self._owner_uid(instance_id)
        if uid is None:
            return [], False
        try:
            return await asyncio.to_thread(tree.walk, self.output(instance_id), uid=uid,
                                           max_entries=limit or self.settings.max_artifacts)
        except tree.TreeError:
            return [], False

    async def open_artifact(self, instance_id: str, path: str) -> IO[bytes]:
        """One artifact, opened for reading; raises :class:`tree.TreeError` if there is none such."""
        uid = self._owner_uid(instance_id)
        if uid is None:
            raise tree.TreeError("this job left no artifacts")
        return await asyncio.to_thread(tree.open_file, self.output(instance_id), path, uid=uid)

    def bundle(self, instance_id: str, out: IO[bytes], *, prefix: str = "") -> int:
        """Write every artifact as one tar.gz to ``out`` (blocking: run it in a thread)."""
        uid = self._owner_uid(instance_id)
        if uid is None:
            raise tree.TreeError("this job left no artifacts")
        return tree.write_targz(self.output(instance_id), out, uid=uid, prefix=prefix,
                                max_entries=self.settings.max_artifacts)

    async def measure(self, instance_id: str) -> int:
        """Bytes the job's artifacts hold (counted against its owner's storage)."""
        uid = self._owner_uid(instance_id)
        if uid is None:
            return 0
        try:
            size, _ = await asyncio.to_thread(measure, self.output(instance_id), uid=uid,
                                              limit=self.settings.max_artifacts)
        except tree.TreeError:
            return 0
        return size

    async def metrics(self, instance_id: str) -> list[dict[str, Any]]:
        """The metrics the job reported, oldest first: JSON objects of numbers (and short strings),
        at most :data:`MAX_METRIC_POINTS`, read from the last 4 MiB of the file; bad lines are skipped."""
        return await asyncio.to_thread(self._read_metrics, instance_id)

    def _read_metrics(self, instance_id: str) -> list[dict[str, Any]]:
        uid = self._owner_uid(instance_id)
        if uid is None:
            return []
        try:
            fh = tree.open_file(self.home(instance_id), METRICS, uid=uid)
        except tree.TreeError:
            return []
        with fh:
            size = os.fstat(fh.fileno()).st_size
            start = max(0, size - METRICS_TAIL_BYTES)
            fh.seek(start)
            data = fh.read(METRICS_TAIL_BYTES)
        lines = data.split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first line is cut
        points: list[dict[str, Any]] = []
        for line in lines[-MAX_METRIC_POINTS:]:
            point = _metric(line)
            if point is not None:
                points.append(point)
        return points

    async def remove(self, instance_id: str) -> None:
        """Delete the job's directory (the job is deleted, or its artifacts expired)."""
        await asyncio.to_thread(tree.remove_tree, self.home(instance_id))


def _metric(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict) or len(value) > 32:
        return None
    point: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > 64:
            continue
        if isinstance(item, bool):
            continue
        if isinstance(item, int | float) and item == item and abs(item) != float("inf"):
            point[key] = item
        elif isinstance(item, str) and len(item) <= 64:
            point[key] = item
    return point or None
