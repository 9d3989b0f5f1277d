"""Fixtures for runtime tests: the train and serve runtimes built once and cached, ROOT files, a job's folders.

The runtimes are built into ``<repo>/.runtimes`` (or ``$LABHUB_TEST_RUNTIMES``) and reused by
every later run while its digest matches, so only the first run pays for the build. Other test
modules may use ``train_runtime`` and ``serve_runtime`` too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from labhub.runtimes import BUILTIN, MARKER, Runtime, RuntimeBuildError, build_sync, location
from tests.runtimes.support import EVENTS, MODEL, BuiltRuntime, TrainJob

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def runtimes_root() -> Path:
    """Where test runtimes are cached between runs (mode 0755: instance accounts must reach them)."""
    root = Path(os.environ.get("LABHUB_TEST_RUNTIMES") or REPO / ".runtimes")
    if not root.is_dir():
        root.mkdir(parents=True)
        os.chmod(root, 0o755)  # noqa: S103 - runtimes are for other accounts to run
    return root


def _built(root: Path, name: str) -> BuiltRuntime:
    """The built-in runtime ``name``, built under ``root`` on first use (PyPI needed then) and cached."""
    runtime = BUILTIN[name]
    try:
        path = build_sync(root, runtime)
    except RuntimeBuildError as exc:
        pytest.fail(f"building the {name} runtime under {root} failed: {exc}", pytrace=False)
    _prune_other_builds(root, runtime)
    return BuiltRuntime(runtime, path)


@pytest.fixture(scope="session")
def train_runtime(runtimes_root: Path) -> BuiltRuntime:
    """The built-in ``train`` runtime (Keras on JAX, uproot, XRootD and labhub_train)."""
    return _built(runtimes_root, "train")


@pytest.fixture(scope="session")
def serve_runtime(runtimes_root: Path) -> BuiltRuntime:
    """The built-in ``serve`` runtime (KServe's model server and the model loaders)."""
    return _built(runtimes_root, "serve")


def _prune_other_builds(root: Path, runtime: Runtime) -> None:
    """Remove this cache's older builds of ``runtime`` (each is 0.75-1.2 GB); the current one stays."""
    current = location(root, runtime)
    for other in root.glob(f"{runtime.name}-*"):
        if other != current and (other / MARKER).is_file():
            shutil.rmtree(other, ignore_errors=True)


@pytest.fixture(scope="session")
def models(serve_runtime: BuiltRuntime, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The serve tests' model files (tests.runtimes.serve_support.make_models) and what each predicts; read only."""
    from tests.runtimes.serve_support import make_models

    directory = tmp_path_factory.mktemp("models")
    return directory, make_models(serve_runtime, directory)


@pytest.fixture(scope="session")
def root_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Signal and background ROOT files (a TTree ``events`` of 2000 entries each)."""
    from tests.runtimes.rootdata import write_events

    top = tmp_path_factory.mktemp("rootdata")
    return {
        "sig.root": write_events(top / "sig.root", events=EVENTS, signal=True, seed=1),
        "bkg.root": write_events(top / "bkg.root", events=EVENTS, signal=False, seed=2, first_id=EVENTS),
    }


@pytest.fixture
def train_job(tmp_path: Path, root_files: dict[str, Path]) -> TrainJob:
    """A job whose folder holds both ROOT files under data/ and a working model, params and lists."""
    job = TrainJob(tmp_path / "input", tmp_path / "output", tmp_path / "metrics.jsonl", tmp_path / "home")
    for directory in (job.input / "data", job.output, job.home):
        directory.mkdir(parents=True)
    for name, path in root_files.items():
        shutil.copyfile(path, job.input / "data" / name)
    job.files("data/sig.root", "data/bkg.root")
    job.write("model.py", MODEL)
    job.params()
    return job
