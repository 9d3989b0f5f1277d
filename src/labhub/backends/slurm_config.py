"""Building the Slurm backend from ``Settings`` alone (``LABHUB_SLURM__*`` or ``[slurm]`` in labhub.toml)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from labhub.backends.commands import CommandRunner, LocalRunner, SSHRunner
from labhub.backends.slurm import SlurmBackend
from labhub.backends.slurm_script import DEFAULT_ALLOWED_SBATCH, ClusterOptions

SYSTEM_PATH = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"]


def from_settings(settings: Any, *, data_dir: Path) -> SlurmBackend:
    """A backend from ``Settings`` (its ``slurm`` section, ``public_url`` and ``bind``); nothing else is read."""
    s = settings.slurm
    hub_url = s.hub_url or settings.public_url
    if hub_url is None and s.ssh_host:
        raise ValueError("LABHUB_SLURM__HUB_URL: set the URL compute nodes reach the hub at "
                         "(or LABHUB_PUBLIC_URL); the bind address is only right for a cluster on this machine")
    env = {"SLURM_CONF": s.conf} if s.conf else {}
    if s.ssh_host:
        if s.path:
            env["PATH"] = ":".join([*s.path, *SYSTEM_PATH])
        runner: CommandRunner = SSHRunner(s.ssh_host, user=s.ssh_user, port=s.ssh_port, key=s.ssh_key,
                                          known_hosts=s.ssh_known_hosts, env=env)
    else:
        # Jobs inherit sbatch's environment: this PATH finds the hub's own tools (jupyter-lab) on a
        # node that shares this machine's filesystem, as the local backend does.
        env["PATH"] = ":".join([*s.path, os.path.dirname(sys.executable), *SYSTEM_PATH])
        runner = LocalRunner(env)
    cluster = ClusterOptions(
        partition=s.partition, account=s.account, qos=s.qos, gres_style=s.gres_style, python=s.python,
        time_limit_slack_minutes=s.time_limit_slack_minutes, extra_sbatch=tuple(s.extra_sbatch),
        prologue=tuple(s.prologue),
        allowed_sbatch=frozenset(s.allowed_sbatch) if s.allowed_sbatch is not None else DEFAULT_ALLOWED_SBATCH,
    )
    return SlurmBackend(
        runner=runner, hub_url=hub_url or settings.base_url, state_dir=data_dir / "slurm", hub_id=s.hub_id,
        cluster=cluster, max_gpus=s.max_gpus, run_as=s.run_as, account_prefix=s.account_prefix,
        workdir=s.workdir, output_dir=s.output_dir, bin_dir=s.bin_dir, accounting=s.accounting,
        poll_interval=s.poll_interval, command_timeout=s.command_timeout, kill_wait=s.kill_wait,
        node_networks=s.node_networks,
    )
