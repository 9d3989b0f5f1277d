"""Helpers for runtime tests: a job's folders, running the train program, reading its reason line."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labhub.runtimes import Runtime

EVENTS = 2000  # per ROOT file
MODEL = """\
import keras


def model(idim):
    net = keras.Sequential([
        keras.Input((idim,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    net.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
    return net
"""
PARAMS = {
    "nevts": -1,
    "chunk_size": 1000,
    "epochs": 3,
    "batch_size": 128,
    "branch": "events",
    "selected_branches": [],
    "exclude_branches": [],
    "identifier": ["event_id"],
    "seed": 7,
}


@dataclass(frozen=True)
class BuiltRuntime:
    runtime: Runtime
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@dataclass
class TrainJob:
    """An input folder laid out as MLaaS4HEP's upload (data/, files.txt, labels.txt, model.py, params.json)."""

    input: Path
    output: Path
    metrics: Path
    home: Path

    def write(self, name: str, text: str) -> None:
        path = self.input / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def files(self, *names: str, labels: Sequence[str] = ("1", "0")) -> None:
        self.write("files.txt", "# written by the test\n" + "\n".join(names) + "\n\n")
        self.write("labels.txt", "\n".join(labels) + "\n")

    def params(self, **changes: object) -> None:
        self.write("params.json", json.dumps({**PARAMS, **changes}))

    def env(self, **extra: str) -> dict[str, str]:
        inherited = {key: value for key, value in os.environ.items()
                     if not key.startswith(("PYTHON", "KERAS", "LABHUB_", "VIRTUAL_ENV", "JAX", "XRD_"))}
        return {**inherited, "HOME": str(self.home), "LABHUB_INPUT": str(self.input),
                "LABHUB_OUTPUT": str(self.output), "LABHUB_METRICS": str(self.metrics), **extra}

    def metric_lines(self) -> list[dict[str, float]]:
        return [json.loads(line) for line in self.metrics.read_text().splitlines()] if self.metrics.exists() else []


def run_train(runtime: BuiltRuntime, job: TrainJob, *, fout: str = "trained", env: dict[str, str] | None = None,
              argv_prefix: Sequence[str] = (), timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m labhub_train`` with the runtime's python, as a job would run it (no hub involved)."""
    argv = [*argv_prefix, str(runtime.python), "-m", "labhub_train", "--files", "files.txt", "--labels",
            "labels.txt", "--model", "model.py", "--params", "params.json", "--fout", fout]
    return subprocess.run(argv, env=env or job.env(), cwd=job.output, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def last_line(text: str) -> str:
    lines = text.rstrip("\n").splitlines()
    return lines[-1] if lines else ""
