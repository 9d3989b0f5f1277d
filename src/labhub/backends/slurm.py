"""The Slurm backend: instances are batch jobs on a Slurm cluster.

It talks to Slurm only through its commands (``sbatch --parsable``,
``squeue``, ``scancel``, ``scontrol``, ``sacct`` when accounting exists), run by
a :class:`~labhub.backends.commands.CommandRunner`: on this machine or on a
login node over SSH.  Commands are argument vectors; batch scripts are built
by :mod:`labhub.backends.slurm_script` and output is read by
:mod:`labhub.backends.slurm_parse`, both pure.

How an instance comes up:

1. ``submit`` renders the batch script and pipes it to ``sbatch``.  The job
   is named ``labhub-<instance id>`` and commented ``labhub:<hub id>:<instance
   id>``; that is how ``list_owned`` (orphan clean-up) and idempotent
   re-submission find LabHub's jobs (a LabHub job's comment ends ``:job``).
   The handle holds the job id.
2. On the node the launcher picks a free port and *calls home*:
   ``POST {hub}/api/v1/instances/{id}/callhome`` with the instance token and
   ``{host, port, job_id}``.  The hub passes the report to
   :meth:`SlurmBackend.called_home`, which remembers the URL (for the hub's
   start watcher, at once) and returns the handle with ``url`` added (the hub
   stores it, so a restarted hub still knows where the instance listens).
3. ``observe_many`` reports ``RUNNING`` with that URL; the hub probes it and
   routes users there.

Jobs (``LaunchSpec.kind == "job"``) run to completion and listen nowhere, so
step 2 is different: the job launcher makes the job's ``dirs`` and execs, and
calls nobody.  A job is ``RUNNING`` (without a URL) as soon as Slurm runs it,
``SUCCEEDED`` once Slurm says ``COMPLETED`` with exit code 0, and ``FAILED``
otherwise, with the exit code (``sacct``'s where accounting exists, else
``scontrol``'s) and Slurm's reason.  The handle says ``"kind": "job"``.

Where a job's files are:

* its working directory is always ``spec.home`` (the hub's ``<storage>/jobs/<id>``,
  whatever ``slurm.workdir`` says: the hub reads the artifacts and metrics there),
  created before ``sbatch`` and owned by the job's account; ``spec.dirs`` inside it
  are made by the launcher as the job's user;
* its output file is where every instance's is,
  ``<slurm.output_dir>/<id>/slurm-<job id>.out``, so one rule finds every log
  (:meth:`SlurmBackend.logs`, :meth:`SlurmBackend.read_log`) and a job's log
  outlives the deletion of its artifacts;
* ``spec.readable`` (its input folder): with ``run_as=accounts`` the hub grants
  the job's account read access (its own group, as the local backend does).  With
  ``run_as=service`` the job runs as the hub's service account, which must be able
  to read the hub's storage directory on the nodes; with ``run_as=owner`` the site
  must arrange that each cluster account can read its own folders there (the hub
  cannot grant access to accounts it does not manage).  On a cluster of more than
  one machine the storage directory, the output directory and any runtime must be
  on a filesystem the nodes mount at the same paths.

One ``squeue`` serves many observations: results are shared for
``poll_interval`` seconds, and each query asks for every job anybody asked
about recently, so the per-instance start watchers and the reconcile tick
together cost about one ``squeue`` per interval.  When ``squeue`` cannot reach
the controller every handle is ``UNKNOWN``; nothing is cancelled or forgotten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import pwd
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from labhub.backends import procinfo
from labhub.backends import slurm_parse as sp
from labhub.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Capability,
    Handle,
    LaunchSpec,
    Observation,
    Phase,
)
from labhub.backends.commands import CommandResult, CommandRunner, LocalRunner
from labhub.backends.local_isolation import Account, Accounts, account_name
from labhub.backends.local_process import grant_read
from labhub.backends.slurm_script import (
    HUB_ID_RE,
    JOB_MARK,
    ClusterOptions,
    JobPlan,
    check_template_options,
    fill_path,
    is_job,
    job_name,
    job_problems,
    owned_instance,
    render_batch_script,
    sbatch_argv,
)

log = logging.getLogger(__name__)

INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INTEREST_S = 10.0  # how long a job asked about stays in every squeue query
TERMINATE_POLL_S = 0.2
RUN_AS = ("auto", "service", "accounts", "owner")
DD_COPIED_RE = re.compile(r"^(\d+) bytes", re.MULTILINE)  # dd's summary, LC_ALL=C


class SlurmBackend(Backend):
    """Instances as Slurm batch jobs.  See the module docstring for the flow."""

    name = "slurm"
    capabilities = frozenset({Capability.LOGS, Capability.CALL_HOME})

    def __init__(
        self,
        *,
        runner: CommandRunner | None = None,
        hub_url: str,
        state_dir: Path,
        hub_id: str = "labhub",
        cluster: ClusterOptions | None = None,
        max_gpus: int = 0,
        run_as: str = "auto",
        account_prefix: str = "labhub-",
        workdir: str = "{home}",
        output_dir: str | None = None,
        bin_dir: str | None = None,
        accounting: str = "auto",
        poll_interval: float = 0.5,
        command_timeout: float = 30.0,
        kill_wait: float = 60.0,
        node_networks: list[str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``hub_url``: where compute nodes reach the hub; ``state_dir``: default parent of job output
        (must be visible to the nodes, as on a single machine or a shared filesystem)."""
        if not HUB_ID_RE.match(hub_id):
            raise ValueError(f"hub id must match {HUB_ID_RE.pattern}, not {hub_id!r}")
        if run_as not in RUN_AS:
            raise ValueError(f"slurm.run_as must be one of {', '.join(RUN_AS)}, not {run_as!r}")
        if accounting not in ("auto", "yes", "no"):
            raise ValueError(f"slurm.accounting must be auto, yes or no, not {accounting!r}")
        self.runner = runner or LocalRunner()
        self.hub_url = hub_url.rstrip("/")
        self.hub_id = hub_id
        self.cluster = cluster or ClusterOptions()
        self.max_gpus = max_gpus
        if max_gpus > 0:
            self.capabilities = frozenset({*type(self).capabilities, Capability.GPUS})
        self.state_dir = Path(state_dir)
        self.output_dir = output_dir or str(self.state_dir)
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.poll_interval = poll_interval
        self.command_timeout = command_timeout
        self.kill_wait = kill_wait
        self.node_networks = [ipaddress.ip_network(n, strict=False) for n in node_networks or []]
        self.monotonic = monotonic
        self.run_as = self._resolve_run_as(run_as)
        self._accounts = Accounts(account_prefix) if self.run_as == "accounts" else None
        self.account_prefix = account_prefix
        if self._accounts is not None:  # jobs as per-user accounts reach their homes in the data directory
            self.data_dir_group = self._accounts.ensure_group_now()
        self._accounting: bool | None = {"yes": True, "no": False}.get(accounting)
        self._urls: dict[str, tuple[str, str]] = {}  # instance id -> (job id, url) from call-home
        self._ended: dict[str, sp.Ended] = {}  # job id -> how it ended (final, so cached)
        self._interest: dict[str, float] = {}  # job id -> when last asked about
        self._rows: dict[str, sp.JobRow] = {}
        self._rows_for: set[str] = set()
        self._rows_at = float("-inf")
        self._positions: dict[str, tuple[int, int]] = {}
        self._cancelled: set[str] = set()  # jobs this object scancelled (so not "cancelled outside LabHub")
        self._squeue_lock: asyncio.Lock | None = None
        self._submit_locks: dict[str, asyncio.Lock] = {}

    # -- who runs the jobs -------------------------------------------------------------
    def _resolve_run_as(self, run_as: str) -> str:
        local = isinstance(self.runner, LocalRunner)
        if run_as == "auto":
            return "accounts" if local and os.geteuid() == 0 else "service"
        if run_as == "accounts" and not (local and os.geteuid() == 0):
            raise ValueError("slurm.run_as=accounts needs a hub running as root with the local command runner")
        return run_as

    def _service_account(self) -> str:
        if not isinstance(self.runner, LocalRunner):
            return getattr(self.runner, "user", None) or "the SSH login account"
        try:
            return pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            return str(os.geteuid())

    def describe_isolation(self) -> str:
        where = f"Slurm jobs submitted on {self.runner.describe()}"
        if self.run_as == "accounts":
            who = f"each user's jobs run as their own system account ({self.account_prefix}<user>, sbatch --uid)"
        elif self.run_as == "owner":
            who = "each user's jobs run as the cluster account of the same name (sbatch --uid)"
        else:
            who = (f"all jobs run as the hub's service account ({self._service_account()}), "
                   "not as each user's own account")
        gpus = f"; up to {self.max_gpus} GPU(s) per job via {self.cluster.gres_style}" if self.max_gpus else ""
        return f"{where}; {who}; CPU, memory and time limits enforced by Slurm{gpus}"

    def unsupported(self, spec: LaunchSpec) -> dict[str, str]:
        reasons = super().unsupported(spec)
        if "size" not in reasons and spec.resources.gpus > self.max_gpus:
            reasons["size"] = f"{spec.resources.gpus} GPUs requested but jobs on this cluster may use {self.max_gpus}"
        _, errors = check_template_options(spec.options.get("slurm"), self.cluster.allowed_sbatch)
        reasons.update(errors)
        reasons.update(job_problems(spec))
        return reasons

    # -- commands ------------------------------------------------------------------------
    def _cmd(self, name: str) -> str:
        return f"{self.bin_dir.rstrip('/')}/{name}" if self.bin_dir else name

    async def _run(self, name: str, *args: str, stdin: str | None = None) -> CommandResult:
        result = await self.runner.run([self._cmd(name), *args], stdin=stdin, limit_s=self.command_timeout)
        if not result.ok and sp.controller_unreachable(result.error_text()):
            raise BackendUnavailable(f"Slurm controller unreachable: {result.error_text()}")
        return result

    # -- submit ---------------------------------------------------------------------------
    async def submit(self, spec: LaunchSpec) -> Handle:
        if not INSTANCE_ID_RE.match(spec.instance_id):
            raise BackendError(f"invalid instance id: {spec.instance_id!r}")
        if refused := self.unsupported(spec):
            raise BackendError("; ".join(f"{k}: {v}" for k, v in refused.items()))
        lock = self._submit_locks.setdefault(spec.instance_id, asyncio.Lock())
        try:
            async with lock:  # one submit per instance at a time (idempotency); others run in parallel
                return await self._submit(spec)
        finally:
            if not lock.locked():
                self._submit_locks.pop(spec.instance_id, None)

    async def _submit(self, spec: LaunchSpec) -> Handle:
        existing = await self._find_live_job(spec.instance_id)
        account = await self._account(spec)
        user = account.name if account is not None else spec.owner if self.run_as == "owner" else None
        plan = self._plan(spec, user)
        if existing is not None:
            return self._handle(spec, existing, plan)
        await self._prepare_dirs(plan)
        if account is not None:  # the job's input folder: readable by its account alone
            for path in spec.readable:
                try:
                    await asyncio.to_thread(grant_read, Path(path), account.gid)
                except OSError as exc:
                    raise BackendError(f"cannot let the job read {path}: {exc.strerror or exc}") from exc
        template, _ = check_template_options(spec.options.get("slurm"), self.cluster.allowed_sbatch)
        try:
            script = render_batch_script(spec, plan, self.cluster, self.hub_id, template)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc
        result = await self._run("sbatch", *sbatch_argv(self._cmd("sbatch"), plan)[1:], stdin=script)
        if not result.ok:
            raise BackendError(f"sbatch refused the job: {result.error_text()}")
        try:
            job_id = sp.parse_sbatch(result.stdout)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc
        self._rows_at = float("-inf")  # the next observation must see the new job
        log.info("instance %s submitted as Slurm job %s (user %s)", spec.instance_id, job_id, user or "service")
        return self._handle(spec, job_id, plan)

    def _handle(self, spec: LaunchSpec, job_id: str, plan: JobPlan) -> Handle:
        handle: Handle = {"instance_id": spec.instance_id, "job_id": job_id, "hub_id": self.hub_id,
                          "output": plan.output.replace("%j", job_id), "user": plan.user, "workdir": plan.workdir}
        if is_job(spec):
            handle["kind"] = "job"  # observed as running without a URL: it never calls home
        return handle

    async def _account(self, spec: LaunchSpec) -> Account | None:
        """The per-user account the job runs as (``run_as=accounts``), created if missing."""
        if self._accounts is None:
            return None
        # a job's home is its own directory, not the account's
        home = Path(spec.home) if spec.home and not is_job(spec) else self.state_dir / "homes" / spec.owner
        # the hub's assignment when it uses this backend's prefix; else <prefix><owner> (injective)
        name = spec.account if (spec.account or "").startswith(self.account_prefix) else None
        name = name or account_name(self.account_prefix, spec.owner)
        return await self._accounts.ensure(name, home)

    def _plan(self, spec: LaunchSpec, user: str | None) -> JobPlan:
        account = user or self._service_account()
        if is_job(spec) and spec.home:  # the hub reads the job's artifacts and metrics there
            workdir = spec.home
        else:
            workdir = fill_path(self.workdir, home=spec.home or str(self.state_dir / "work" / spec.owner),
                                user=account, owner=spec.owner, instance_id=spec.instance_id)
        output_dir = fill_path(self.output_dir, home=spec.home, user=account, owner=spec.owner,
                               instance_id=spec.instance_id).rstrip("/")
        callhome = None if is_job(spec) else f"{self.hub_url}/api/v1/instances/{spec.instance_id}/callhome"
        return JobPlan(workdir=workdir, output=f"{output_dir}/{spec.instance_id}/slurm-%j.out",
                       callhome_url=callhome, user=user, group=user)

    async def _prepare_dirs(self, plan: JobPlan) -> None:
        """The working directory and a private output directory, owned by the job's user."""
        for directory in (plan.workdir, plan.output.rsplit("/", 1)[0]):
            await self.runner.make_dir(directory, owner=plan.user, limit_s=self.command_timeout)

    async def _find_live_job(self, iid: str) -> str | None:
        """A job of ours for this instance that is still queued or running (idempotent submit)."""
        result = await self._run("squeue", "-h", "-a", f"--name={job_name(iid)}", "-o", sp.SQUEUE_FORMAT)
        if not result.ok:
            raise BackendError(f"squeue failed: {result.error_text()}")
        for row in sp.parse_squeue(result.stdout).values():
            if row.alive and owned_instance(row.name, row.comment, self.hub_id) == iid:
                return row.job_id
        return None

    # -- call-home ------------------------------------------------------------------------
    def called_home(self, instance_id: str, handle: Handle, report: Mapping[str, Any]) -> Handle:
        """Record where the job listens; return the handle to store.

        Refused (BackendError) when the report names another job than the
        handle's (a stale job), when the host is not an IP address, when it lies
        outside ``node_networks`` (if set), or when it is a loopback, link-local
        or unspecified address while the cluster is reached over SSH: a job
        holding its instance token must not point the hub's proxy at the hub's
        own machine.
        """
        job_id = str(handle.get("job_id", ""))
        reported = str(report.get("job_id") or "")
        if not job_id or reported != job_id:
            raise BackendError(f"job {reported or '?'} is not this instance's current job ({job_id or 'none'})")
        port = report.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise BackendError("port must be an integer between 1 and 65535")
        address = self._check_address(str(report.get("host", "")))
        url = f"http://{f'[{address}]' if address.version == 6 else address}:{port}"
        self._urls[instance_id] = (job_id, url)
        log.info("instance %s (job %s) called home from %s", instance_id, job_id, url)
        return {**handle, "url": url}

    def _check_address(self, host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise BackendError(f"not an IP address: {host!r}") from None
        if self.node_networks:
            if not any(address in net for net in self.node_networks):
                raise BackendError(f"{address} is not in the compute nodes' networks (slurm.node_networks)")
        elif not isinstance(self.runner, LocalRunner) and (
                address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast):
            raise BackendError(f"{address} cannot be a compute node of a cluster reached over SSH")
        return address

    def _url(self, iid: str, handle: Handle) -> str | None:
        job_id = str(handle.get("job_id"))
        known = self._urls.get(iid)
        if known is not None and known[0] == job_id:
            return known[1]
        url = handle.get("url")
        return url if isinstance(url, str) else None

    # -- observe ---------------------------------------------------------------------------
    async def observe_many(self, handles: Mapping[str, Handle]) -> dict[str, Observation]:
        jobs = {iid: str(h.get("job_id", "")) for iid, h in handles.items()}
        valid = {iid: j for iid, j in jobs.items() if j.isdigit()}
        out = {iid: Observation(Phase.GONE, message="no Slurm job id in the handle")
               for iid in handles if iid not in valid}
        if not valid:
            return out
        try:
            rows = await self._snapshot(set(valid.values()))
        except BackendError as exc:
            return {**out, **{iid: Observation(Phase.UNKNOWN, message=str(exc)) for iid in valid}}
        missing = [j for j in valid.values() if j not in rows and j not in self._ended]
        ended_needed = [r.job_id for r in rows.values() if r.job_id in valid.values() and not r.alive
                        and r.job_id not in self._ended]
        if missing or ended_needed:
            try:
                await self._learn_endings(missing, ended_needed)
            except BackendError as exc:
                log.warning("cannot learn how Slurm jobs ended: %s", exc)
        for iid, job_id in valid.items():
            row = rows.get(job_id)
            url = self._url(iid, handles[iid])
            if row is not None:
                obs = sp.observe_row(row, url=url, ended=self._ended.get(job_id), position=self._positions.get(job_id),
                                     calls_home=handles[iid].get("kind") != "job")
            elif job_id in self._ended:
                obs = sp.observe_ended(job_id, self._ended[job_id])
            else:
                obs = Observation(Phase.GONE, message=f"Slurm no longer knows job {job_id}")
            if obs.reason == "CANCELLED" and job_id in self._cancelled:
                obs = dataclasses.replace(obs, message=f"job {job_id} was cancelled by LabHub")
            out[iid] = obs
        return out

    async def _snapshot(self, job_ids: set[str], *, fresh: bool = False) -> dict[str, sp.JobRow]:
        """squeue rows for ``job_ids``, shared with every caller within ``poll_interval``."""
        now = self.monotonic()
        for job_id in job_ids:
            self._interest[job_id] = now
        if not fresh and job_ids <= self._rows_for and now - self._rows_at < self.poll_interval:
            return self._rows
        if self._squeue_lock is None:
            self._squeue_lock = asyncio.Lock()
        async with self._squeue_lock:
            now = self.monotonic()
            if not fresh and job_ids <= self._rows_for and now - self._rows_at < self.poll_interval:
                return self._rows  # somebody refreshed while we waited
            wanted = {j for j, t in self._interest.items() if now - t < INTEREST_S} | job_ids
            self._interest = {j: t for j, t in self._interest.items() if j in wanted}
            started = self.monotonic()
            jobs = ",".join(sorted(wanted, key=int))
            result = await self._run("squeue", "-h", "-a", "--states=all", f"--jobs={jobs}", "-o", sp.SQUEUE_FORMAT)
            if not result.ok and not sp.is_invalid_job(result.error_text()):
                raise BackendError(f"squeue failed: {result.error_text()}")
            rows = sp.parse_squeue(result.stdout) if result.ok else {}
            self._positions = await self._queue_positions(rows) if any(
                r.state == "PENDING" for r in rows.values()) else {}
            self._rows, self._rows_for, self._rows_at = rows, wanted, started
            return rows

    async def _queue_positions(self, rows: Mapping[str, sp.JobRow]) -> dict[str, tuple[int, int]]:
        positions: dict[str, tuple[int, int]] = {}
        for partition in sorted({r.partition for r in rows.values() if r.state == "PENDING"}):
            result = await self._run("squeue", "-h", "-a", "--states=PENDING", f"--partition={partition}",
                                     "--sort=-p,i", "-o", "%i|%P")
            if result.ok:
                positions.update(sp.queue_positions(result.stdout, partition))
        return positions

    async def _learn_endings(self, missing: list[str], ended: list[str]) -> None:
        """Exit codes and reasons of finished jobs: sacct when accounting exists, else scontrol."""
        wanted = sorted({*missing, *ended}, key=int)
        if await self._has_accounting():
            result = await self._run("sacct", "-X", "-n", "-P", f"--jobs={','.join(wanted)}",
                                     f"--format={sp.SACCT_FIELDS}")
            if result.ok:
                for job_id, info in sp.parse_sacct(result.stdout).items():
                    if job_id in wanted and info.state not in sp.ALIVE:
                        self._ended[job_id] = info
                return
        for job_id in ended:  # scontrol still knows jobs squeue lists
            result = await self._run("scontrol", "show", "job", "-o", job_id)
            info = sp.parse_scontrol_job(result.stdout) if result.ok else None
            if info is not None and info.state not in sp.ALIVE:
                self._ended[job_id] = info

    async def _has_accounting(self) -> bool:
        if self._accounting is not None:
            return self._accounting
        result = await self._run("sacct", "-n", "-X", "-o", "JobIDRaw", "--starttime=now")
        if result.ok or "disabled" in result.error_text().lower():  # a definite answer: remember it
            self._accounting = result.ok
            log.info("Slurm accounting %s", "found: using sacct" if result.ok
                     else f"not available ({result.error_text()})")
        return result.ok

    # -- terminate -------------------------------------------------------------------------
    async def terminate(self, handle: Handle, *, grace: float = 5.0) -> bool:
        job_id = str(handle.get("job_id", ""))
        if not job_id.isdigit():
            return True  # nothing was ever submitted for this handle
        try:
            self._cancelled.add(job_id)
            result = await self._run("scancel", job_id)
            if not result.ok and not sp.is_invalid_job(result.error_text()):
                log.info("scancel %s: %s", job_id, result.error_text())  # e.g. already completing
            deadline = self.monotonic() + grace + self.kill_wait
            while True:
                rows = await self._snapshot({job_id}, fresh=True)
                row = rows.get(job_id)
                if row is None or not row.alive:
                    break
                if self.monotonic() >= deadline:
                    return False
                await asyncio.sleep(TERMINATE_POLL_S)
        except BackendError as exc:
            log.warning("job %s: cannot confirm it is gone: %s", job_id, exc)
            return False
        iid = handle.get("instance_id")
        if isinstance(iid, str) and self._urls.get(iid, ("",))[0] == job_id:
            del self._urls[iid]
        return True

    # -- listing, logs, health ---------------------------------------------------------------
    async def list_owned(self) -> list[Handle]:
        states = ",".join(sorted(sp.ALIVE))
        result = await self._run("squeue", "-h", "-a", f"--states={states}", "-o", sp.SQUEUE_FORMAT)
        if not result.ok:
            raise BackendError(f"squeue failed: {result.error_text()}")
        owned = []
        for row in sp.parse_squeue(result.stdout).values():
            iid = owned_instance(row.name, row.comment, self.hub_id)
            if iid is not None and row.alive:
                handle = {"instance_id": iid, "job_id": row.job_id, "hub_id": self.hub_id, "user": row.user}
                if row.comment.endswith(JOB_MARK):  # adopted (find): observed as a job, never waiting for a call
                    handle["kind"] = "job"
                owned.append(handle)
        return owned

    @staticmethod
    def _output_path(handle: Handle) -> str | None:
        """The handle's output file if it is one of ours (``.../<instance id>/slurm-<n>.out``), else None."""
        path = handle.get("output")
        iid = handle.get("instance_id")
        if not isinstance(path, str) or not isinstance(iid, str) or not INSTANCE_ID_RE.match(iid):
            return None
        if f"/{iid}/slurm-" not in path or ".." in path.split("/") or not path.startswith("/"):
            return None  # only ever our own output files
        return path

    async def logs(self, handle: Handle, *, tail: int = 100) -> AsyncIterator[str]:
        # Bytes, not lines: a log without newlines must not come through whole.
        limit = procinfo.MAX_TAIL_BYTES
        data, _ = await self.read_log(handle, -(limit + 1), limit=limit + 1)
        if not data:
            return
        over = len(data) > limit  # one byte more than the window: is the window's first line whole?
        cut = over and data[-limit - 1:-limit] != b"\n"
        for line in procinfo.split_tail(data[-limit:] if over else data, max(1, int(tail)), first_cut=cut):
            yield line

    async def read_log(self, handle: Handle, offset: int, *, limit: int = 1 << 20) -> tuple[bytes, int]:
        """The output file from ``offset``, as :func:`procinfo.read_at` reads it.

        The file lies in a directory the job's account owns, so that account may have replaced it
        with a link (to a file only the hub may read), a FIFO (to hang the reader) or anything else:
        it is read only if it is a regular file, never through a link, never waiting.  With the
        local runner it is read in-process (:func:`procinfo.read_at`).  On a login node: ``stat``
        (which does not follow links) for its size and type, then ``dd`` (``iflag=nofollow,nonblock``)
        for at most ``limit`` bytes from the offset.  Offsets are exact (``dd`` counts the bytes);
        the text comes back through the runner decoded as UTF-8, so bytes that are not UTF-8
        arrive replaced there.
        """
        path = self._output_path(handle)
        if path is None:
            return b"", max(0, offset)
        limit = max(0, int(limit))
        if isinstance(self.runner, LocalRunner):
            return await asyncio.to_thread(procinfo.read_at, path, offset, limit)
        stat = await self.runner.run(["stat", "-c", "%s %f", "--", path], limit_s=self.command_timeout)
        fields = stat.stdout.split() if stat.ok else []
        try:
            size, mode = int(fields[0]), int(fields[1], 16)
        except (IndexError, ValueError):
            return b"", max(0, offset)  # missing
        if mode & 0o170000 != 0o100000:
            return b"", max(0, offset)  # not a regular file: a link, a FIFO
        start = max(0, size + offset) if offset < 0 else min(offset, size)
        count = min(limit, size - start)
        if count <= 0:
            return b"", start
        result = await self.runner.run(
            ["env", "LC_ALL=C", "dd", f"if={path}", "iflag=nofollow,nonblock,skip_bytes,count_bytes",
             f"skip={start}", f"count={count}", "bs=65536"], limit_s=self.command_timeout)
        if not result.ok:
            return b"", start
        data = result.stdout.encode("utf-8", errors="surrogateescape")
        copied = DD_COPIED_RE.search(result.stderr)
        return data, start + (int(copied.group(1)) if copied else len(data))

    async def health(self) -> None:
        result = await self._run("scontrol", "ping")
        if not result.ok:
            raise BackendUnavailable(f"Slurm controller: {result.error_text()}")

    async def close(self) -> None:
        await self.runner.close()
