"""Runtimes: named virtualenvs, separate from the hub's own, that instances run in.

LabHub builds each from a pinned requirements list shipped in this package, plus program files
copied into it (the ``train`` runtime carries ``labhub_train``, MLaaS4HEP's training workflow).
A built runtime lives at ``<root>/<name>-<digest>`` and is readable and executable by every
account, so jobs running as their users' own accounts can use it. This package imports only the
standard library: it is safe to use from the hub, the CLI and test fixtures alike.
"""

from labhub.runtimes.build import RuntimeBuildError, build, build_sync, default_python
from labhub.runtimes.runtime import BUILTIN, MARKER, Runtime, is_built, location, python_of, read_requirements

__all__ = [
    "BUILTIN",
    "MARKER",
    "Runtime",
    "RuntimeBuildError",
    "build",
    "build_sync",
    "default_python",
    "is_built",
    "location",
    "python_of",
    "read_requirements",
]
