"""The GPU inventory: the driver's /proc files and /dev nodes parsed (made up here), and real NVML
where this machine has an NVIDIA GPU (marker ``gpu``)."""

from __future__ import annotations

import shutil

import pytest

from labhub.backends import gpus
from labhub.backends.gpus import Gpu, inventory, parse_information

INFO = """Model: \t\t NVIDIA H200
IRQ:   \t\t 42
GPU UUID: \t GPU-5d1a6b1e-0000-4000-8000-000000000001
Video BIOS: \t 96.00.99.00.01
Bus Type: \t PCIe
Device Minor: \t 1
"""


def test_parse_information():
    fields = parse_information(INFO)
    assert fields["Model"] == "NVIDIA H200" and fields["Device Minor"] == "1"


def test_proc_then_dev(tmp_path, monkeypatch):
    monkeypatch.setattr(gpus, "_nvml", lambda: None)  # this machine's NVML: no driver; the files decide
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    (proc / "0000:41:00.0").mkdir(parents=True)
    (proc / "0000:41:00.0" / "information").write_text(INFO)
    (proc / "0000:01:00.0").mkdir()
    (proc / "0000:01:00.0" / "information").write_text(INFO.replace("Minor: \t 1", "Minor: \t 0").replace("01\n", "00\n"))
    found = inventory(proc=proc, dev=dev)
    assert [(g.index, g.name, g.found_by) for g in found] == [(0, "NVIDIA H200", "proc"), (1, "NVIDIA H200", "proc")]
    assert found[1].uuid == "GPU-5d1a6b1e-0000-4000-8000-000000000001"

    shutil.rmtree(proc)
    dev.mkdir()
    for name in ("nvidia1", "nvidia0", "nvidiactl", "nvidia-uvm", "nvidia10"):
        (dev / name).touch()
    assert inventory(proc=proc, dev=dev) == [Gpu(0, found_by="dev"), Gpu(1, found_by="dev"), Gpu(10, found_by="dev")]
    assert inventory(proc=proc, dev=tmp_path / "none") == []


@pytest.mark.gpu
def test_nvml_finds_this_machines_gpus():
    found = gpus._nvml()
    if found is None:
        pytest.skip("no NVIDIA driver here (NVML does not load)")
    assert found and all(g.found_by == "nvml" and g.uuid.startswith("GPU-") and g.memory_mb for g in found)
    assert [g.index for g in found] == list(range(len(found)))
