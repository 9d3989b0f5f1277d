"""The GPUs of this machine: through NVML (``nvidia-ml-py``) when the driver's library loads, else
the driver's ``/proc/driver/nvidia/gpus/*/information``, else the ``/dev/nvidiaN`` device files.

The local backend hands GPUs out by index (``CUDA_VISIBLE_DEVICES``), each to one instance at a time.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROC_GPUS = Path("/proc/driver/nvidia/gpus")
INFO_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str = ""
    uuid: str = ""
    memory_mb: int | None = None
    found_by: str = ""  # nvml, proc, dev


def inventory(*, proc: Path = PROC_GPUS, dev: Path = Path("/dev")) -> list[Gpu]:
    """The GPUs found, in index order (empty without a driver)."""
    found = _nvml()
    if found is None:
        found = _proc(proc)
    if not found:
        found = _dev(dev)
    return found


def _nvml() -> list[Gpu] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None  # no driver, or no GPU: the other sources say the same more cheaply
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
            gpus.append(Gpu(index=index, name=_text(name), uuid=_text(uuid), memory_mb=int(memory), found_by="nvml"))
        return gpus
    except pynvml.NVMLError as exc:
        log.warning("NVML: %s", exc)
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def parse_information(text: str) -> dict[str, str]:
    """The ``Key: value`` lines of a driver information file (pure)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _proc(root: Path) -> list[Gpu]:
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    gpus = []
    for entry in entries:
        try:
            with (entry / "information").open(encoding="utf-8", errors="replace") as f:
                info = parse_information(f.read(INFO_LIMIT))
        except OSError:
            continue
        minor = info.get("Device Minor", "")
        index = int(minor) if minor.isdigit() else len(gpus)
        gpus.append(Gpu(index=index, name=info.get("Model", ""), uuid=info.get("GPU UUID", ""), found_by="proc"))
    return sorted(gpus, key=lambda g: g.index)


def _dev(dev: Path) -> list[Gpu]:
    try:
        names = os.listdir(dev)
    except OSError:
        return []
    indices = sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"nvidia([0-9]+)", n)))
    return [Gpu(index=i, found_by="dev") for i in indices]


def describe_capacity(gpus: list[Gpu], *, cpus: float | None, memory_mb: int | None, machine_cpus: int | None,
                      machine_memory_mb: int | None) -> str:
    """One line for admins: the GPUs handed out, and the CPU and memory limits (``None``: not limited) (pure)."""
    names = sorted({g.name for g in gpus if g.name})
    found = ", ".join(sorted({g.found_by for g in gpus}))
    detail = "; ".join([*([", ".join(names)] if names else []), f"found by {found}"])
    gpu_text = f"{len(gpus)} GPU(s), each to one instance at a time ({detail})" if gpus else "no GPUs found"
    cpu_text = f"{cpus:g} CPUs" if cpus is not None else f"CPUs not limited (this machine has {machine_cpus})"
    memory_text = (f"{memory_mb} MB of memory" if memory_mb is not None
                   else f"memory not limited (this machine has {machine_memory_mb or '?'} MB)")
    return f"{gpu_text}; {cpu_text}; {memory_text}"
