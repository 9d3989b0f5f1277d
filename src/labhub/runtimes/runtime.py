"""What a runtime is: a name, pinned requirements and program files, and where its built copy lives.

A runtime's directory name carries a digest of everything that goes into it, so a new pin or a
changed program is a new directory beside the old one: running jobs keep the copy they started
with, and nothing is ever upgraded in place.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# Runtimes are keyed to the hub's Python minor version: their wheels are built for one ABI.
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
MARKER = ".labhub-runtime.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def read_requirements(path: Path) -> tuple[str, ...]:
    """The requirement lines of a pip requirements file, without comments and blank lines.

    Every line must pin one version (``name==version``, extras and markers allowed): a runtime
    that floats would change under the same digest.
    """
    lines = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line or line.startswith("-"):
            raise ValueError(f"{path.name}:{number}: {line!r} is not a pinned requirement (name==version)")
        lines.append(line)
    return tuple(lines)


@dataclass(frozen=True, slots=True)
class Runtime:
    """A named virtualenv, separate from the hub's, that instances run in.

    ``requirements`` are pinned pip requirement lines. ``modules`` are program files copied into the
    runtime's site-packages, named relative to this package's directory (an absolute path is taken as
    it is), so a runtime can run ``python -m <module>`` without anything of the hub installed.
    """

    name: str
    requirements: tuple[str, ...]
    modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"runtime name {self.name!r} must be letters, digits, '-' and '_'")

    def module_paths(self) -> tuple[Path, ...]:
        """The program files this runtime copies in, as absolute paths."""
        return tuple(PACKAGE_DIR / module for module in self.modules)

    def digest(self) -> str:
        """A short hash of the requirements, the program files' contents and the Python minor version.

        Equal for equal inputs in any process; different when any pin, program byte or the Python
        version differs. Reads the module files (a missing one raises FileNotFoundError).
        """
        modules = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in self.module_paths()}
        spec = {"python": PYTHON_VERSION, "requirements": sorted(self.requirements), "modules": modules}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def location(root: Path, runtime: Runtime) -> Path:
    """Where ``runtime`` is (or will be) built under ``root``: ``root/<name>-<digest>``."""
    return Path(root) / f"{runtime.name}-{runtime.digest()}"


def is_built(root: Path, runtime: Runtime) -> bool:
    """True when the runtime's directory is complete: its marker file, written last, is there."""
    return (location(root, runtime) / MARKER).is_file()


def python_of(root: Path, runtime: Runtime) -> Path:
    """The runtime's interpreter, the one a job runs as ``<python> -m <module> ...``."""
    return location(root, runtime) / "bin" / "python"


BUILTIN: dict[str, Runtime] = {
    "train": Runtime(
        name="train",
        requirements=read_requirements(PACKAGE_DIR / "train.txt"),
        modules=("labhub_train.py",),
    ),
    "serve": Runtime(
        name="serve",
        requirements=read_requirements(PACKAGE_DIR / "serve.txt"),
        modules=("labhub_serve.py", "labhub_serve_models.py", "labhub_serve_store.py", "labhub_serve_metrics.py",
                 "labhub_serve_replicas.py"),
    ),
}
