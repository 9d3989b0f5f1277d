"""The benchmark suite's quick mode runs end to end, so it never rots.

Targets are never asserted here: only that every figure is there, with the
required keys and numbers.  Peer values (JupyterHub, CHP) are numbers when
the peers are installed (`make bench` installs them), else null.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.jupyter]

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "launch_single", "launch_concurrent", "memory_per_workspace", "proxy_throughput", "proxy_added_latency_p50",
    "proxy_latency_p99", "proxy_cpu_per_request", "ws_echo_rtt_p50", "ws_handshake", "hub_cold_start",
    "create_users", "list_1000", "hub_idle_memory",
}
# the replicas group: no peer (JupyterHub cannot run two hubs on one database); the takeover needs PostgreSQL
NO_PEER = {"takeover_100", "scale_5000_tick_p50", "scale_5000_tick_max", "scale_5000_rss", "scale_5000_api_p99"}
# the jobs group: no peer either (JupyterHub has no folders or jobs); the Slurm figure needs root and slurm-wlm
JOBS = {"upload_extract_ratio", "upload_rss_growth_mib", "job_start_overhead_local_s", "job_start_overhead_slurm_s"}
# the services group: no peer (JupyterHub serves no models); it needs the serve runtime (built if missing)
SERVICES = {"service_infer_throughput", "service_infer_added_latency_p50", "service_cold_start"}
# the admission group: no peer (JupyterHub refuses a launch over its limit; it has no queue)
ADMISSION = {"admission_freed_slot_start_s", "admission_decision_us"}
NO_PEER = NO_PEER | JOBS | SERVICES | ADMISSION
FIGURES = FIGURES | NO_PEER | {"api_cpu_health", "api_cpu_me", "api_cpu_instances", "api_cpu_templates"}
NEEDS = {"takeover_100": "PostgreSQL unavailable", "job_start_overhead_slurm_s": "Slurm unavailable",
         **dict.fromkeys(SERVICES, "serve runtime unavailable")}
KEYS = {"name", "unit", "labhub", "peer", "baseline", "ratio", "target", "meets"}
WITH_BASELINE = {"launch_single", "launch_concurrent", "memory_per_workspace", "proxy_throughput",
                 "proxy_added_latency_p50", "proxy_latency_p99", "proxy_cpu_per_request", "ws_echo_rtt_p50",
                 "ws_handshake", "upload_extract_ratio", "job_start_overhead_local_s", "job_start_overhead_slurm_s",
                 *SERVICES, *ADMISSION}


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_quick_mode_writes_every_figure(tmp_path: Path) -> None:
    # ~2.5 minutes on 2 cores; the services group first builds the serve runtime if the tests' cache lacks it (minutes)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    md = (tmp_path / "latest.md").read_text()
    assert result["quick"] is True
    assert {"machine", "versions", "figures", "peers"} <= set(result)
    assert len(result["machine"]["loadavg_start"]) == 3
    figures = {f["name"]: f for f in result["figures"]}
    assert set(figures) == FIGURES
    for name, f in figures.items():
        assert KEYS <= set(f), name
        if name in NEEDS and f["labhub"] is None:  # measured only where PostgreSQL / Slurm is
            assert NEEDS[name] in f.get("note", ""), (name, f)
            continue
        assert isinstance(f["labhub"], int | float), (name, f)
        assert isinstance(f["target"], str) and f["target"], name
        assert f["meets"] in (True, False, None), name
        if name in WITH_BASELINE:
            assert isinstance(f["baseline"], int | float), (name, f)
        if result["peers"] and name not in NO_PEER:
            assert isinstance(f["peer"], int | float), (name, f)
        else:
            assert f["peer"] is None, name
        if f["ratio"] is not None:
            assert isinstance(f["ratio"], int | float), name
        assert (f.get("title") or name) in md
