"""Backends by name.  Built-ins plus entry points (group ``labhub.backends``);
only the names listed in ``Settings.backends`` are ever instantiated."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from labhub.backends.base import Backend

Factory = Callable[..., Backend]


def _local(*, data_dir: Path, isolation: str, settings: Any = None, **_: Any) -> Backend:
    from labhub.backends.local import LocalBackend

    prefix = settings.account_prefix if settings is not None else "labhub-"
    capacity = settings.capacity if settings is not None else None
    return LocalBackend(state_dir=data_dir / "instances", hub_id="labhub", isolation=isolation,
                        account_prefix=prefix, private_root=data_dir,
                        gpus=capacity.gpus if capacity else None, cpus=capacity.cpus if capacity else None,
                        memory_mb=capacity.memory_mb if capacity else None)


def _slurm(*, data_dir: Path, settings: Any, **_: Any) -> Backend:
    from labhub.backends.slurm_config import from_settings

    return from_settings(settings, data_dir=data_dir)


BUILTIN: dict[str, Factory] = {"local": _local, "slurm": _slurm}


def available() -> dict[str, Factory]:
    factories = dict(BUILTIN)
    for ep in entry_points(group="labhub.backends"):
        factories.setdefault(ep.name, ep.load())
    return factories


def create(names: list[str], **context: Any) -> dict[str, Backend]:
    """Instantiate the enabled backends; unknown names raise ValueError naming the setting."""
    factories = available()
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"LABHUB_BACKENDS: unknown backend(s) {', '.join(unknown)}; known: {', '.join(sorted(factories))}")
    return {name: factories[name](**context) for name in names}
