"""Pure functions that turn a :class:`LaunchSpec` into a Slurm batch script.

The script carries everything the job needs, so nothing but its text crosses
to the cluster (``sbatch`` reads it from stdin, locally or over SSH):

* ``#SBATCH`` lines for the resources, time limit, partition, account, QoS
  and the template's validated options;
* the launch description (argv with placeholders, environment; for a
  workspace the call-home URL and token) as base64 JSON, which contains no
  shell metacharacters;
* a fixed Python launcher (LabHub's own code) that ``exec``s the argv.  No
  shell ever sees a value that came from a template or a user.

Two launchers, by the instance's kind:

* :data:`LAUNCHER` (workspaces, services: they listen) picks a free port on the
  node, calls home, fills ``{port}``/``{ip}``/``{base_url}``/``{home}`` in one
  pass and execs;
* :data:`JOB_LAUNCHER` (``kind == "job"``: it runs to completion and listens
  nowhere) needs nothing from the hub: the payload has no call-home URL and the
  node need not reach the hub.  It creates ``LaunchSpec.dirs`` in the working
  directory (mode 0700, as the job's user, so they are the job's), fills
  ``{home}``/``{base_url}`` and execs.  ``{port}``, ``{ip}`` and ``{socket}``
  have no value for a job and stay as they are (a program's own format string
  may hold them, so they are not refused either).

The program's ``PATH`` (:func:`path_env`): a runtime's ``bin/`` first (and
``VIRTUAL_ENV``) when the spec names one; for a job without one, the system's
``/usr/local/bin:/usr/bin:/bin``, never the hub's own virtualenv; a workspace
without one keeps what ``sbatch`` passed on, as before.

Golden tests (``tests/backends/golden``) pin the output.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labhub.backends.base import LaunchSpec

JOB_PREFIX = "labhub-"
HUB_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
NAME_VALUE_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")  # partition, account, qos, reservation
LIST_VALUE_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}(,[A-Za-z0-9_.+-]{1,64}){0,15}$")  # partition lists
CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.,:&|!*()\[\]-]{1,256}$")
SBATCH_OPTION_RE = re.compile(r"^--([a-z][a-z0-9-]{0,40})(?:=([A-Za-z0-9_.,:=+@%/&|!*()\[\]-]{1,256}))?$")
PATH_RE = re.compile(r"^/[^\s\"'\\`$;&|<>()*?#~]*$")

# Options a template may add as extra #SBATCH lines (a site can narrow or widen this list).
DEFAULT_ALLOWED_SBATCH = frozenset({
    "constraint", "exclusive", "tmp", "reservation", "licenses", "hint", "nice", "exclude", "nodelist",
    "mail-type", "mail-user", "signal", "gres-flags", "switches", "threads-per-core", "cores-per-socket",
    "sockets-per-node", "mem-bind", "cpu-freq", "begin", "deadline",
})
# Never from a template, whatever the site allows: LabHub sets or relies on these.
FORBIDDEN_SBATCH = frozenset({
    "uid", "gid", "output", "error", "input", "chdir", "job-name", "comment", "export", "export-file", "wrap",
    "array", "parsable", "time", "mem", "mem-per-cpu", "cpus-per-task", "gres", "gpus", "ntasks", "nodes",
    "requeue", "no-requeue", "open-mode", "get-user-env", "container", "partition", "account", "qos",
    "batch", "propagate", "test-only", "wait", "dependency", "hold", "kill-on-invalid-dep",
})

LAUNCHER = r"""import base64, http.client, json, os, re, socket, sys, time, urllib.parse
p = json.loads(base64.b64decode(os.environ.pop("LABHUB_LAUNCH")))
def say(msg):
    print("labhub: " + msg, file=sys.stderr, flush=True)
u = urllib.parse.urlsplit(p["callhome"])
ip = p.get("ip") or ""
if not ip:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((u.hostname, u.port or (443 if u.scheme == "https" else 80)))
        ip = s.getsockname()[0]
        s.close()
    except OSError:
        ip = socket.gethostbyname(socket.gethostname())
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
s.bind((ip, 0))
port = s.getsockname()[1]
s.close()
v = {"port": str(port), "ip": ip, "base_url": p["base_url"], "home": p["home"]}
argv = [re.sub(r"\{(port|ip|base_url|home)\}", lambda m: v[m.group(1)], a) for a in p["argv"]]
body = json.dumps({"host": ip, "port": port, "job_id": os.environ.get("SLURM_JOB_ID", "")}).encode()
headers = {"Authorization": "token " + p["token"], "Content-Type": "application/json"}
deadline = time.monotonic() + p.get("callhome_timeout", 60)
delay = 0.1
Conn = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
while True:
    try:
        c = Conn(u.netloc, timeout=10)
        c.request("POST", u.path, body=body, headers=headers)
        r = c.getresponse()
        err = "HTTP %s %s" % (r.status, r.read(300).decode(errors="replace"))
        c.close()
        if r.status < 300:
            break
        if r.status not in (409, 429, 502, 503, 504):
            say("the hub refused the call-home: " + err)
            sys.exit(70)
    except (OSError, http.client.HTTPException) as e:
        err = str(e)
    if time.monotonic() > deadline:
        say("cannot call home to %s: %s" % (u.netloc, err))
        sys.exit(69)
    time.sleep(delay)
    delay = min(delay * 2, 2.0)
say("listening on %s:%s; starting %s" % (ip, port, argv[0]))
env = dict(os.environ)
env.update(p["env"])
env["HOME"] = p["home"]
try:
    os.execvpe(argv[0], argv, env)
except OSError as e:
    say("cannot start %s: %s" % (argv[0], e))
    sys.exit(127)
"""

# A job: no port, no call-home.  ``dirs`` are made here, as the job's user, so they are the job's.
JOB_LAUNCHER = r"""import base64, json, os, re, sys
p = json.loads(base64.b64decode(os.environ.pop("LABHUB_LAUNCH")))
def say(msg):
    print("labhub: " + msg, file=sys.stderr, flush=True)
home = p["home"]
for name in p["dirs"]:
    d = os.path.join(home, name)
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        if os.path.islink(d) or not os.path.isdir(d):
            say("cannot create %s in %s: something else has that name" % (name, home))
            sys.exit(73)
    except OSError as e:
        say("cannot create %s in %s: %s" % (name, home, e))
        sys.exit(73)
v = {"base_url": p["base_url"], "home": home}
argv = [re.sub(r"\{(base_url|home)\}", lambda m: v[m.group(1)], a) for a in p["argv"]]
env = dict(os.environ)
env.pop("VIRTUAL_ENV", None)
env.update(p["env"])
env["HOME"] = home
try:
    os.execvpe(argv[0], argv, env)
except OSError as e:
    say("cannot start %s: %s" % (argv[0], e))
    sys.exit(127)
"""
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"  # a job's PATH without a runtime (the local backend's too)
DIR_NAME_RE = re.compile(r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Site settings that shape every batch script (from ``Settings.slurm``)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres_style: str = "gres"  # "gres": --gres=gpu:N; "gpus": --gpus=N
    python: str = "python3"  # on the compute nodes
    time_limit_slack_minutes: int = 2  # the hub stops at the duration; Slurm's limit is a backstop
    extra_sbatch: tuple[str, ...] = ()  # site #SBATCH options, e.g. "--constraint=ib"
    prologue: tuple[str, ...] = ()  # site shell lines before the launcher, e.g. "module load python"
    allowed_sbatch: frozenset[str] = DEFAULT_ALLOWED_SBATCH
    callhome_timeout_s: int = 60


@dataclass(frozen=True, slots=True)
class TemplateOptions:
    """What a template may add for Slurm (``Template.slurm`` -> ``LaunchSpec.options["slurm"]``)."""

    partition: str | None = None
    constraint: str | None = None
    qos: str | None = None
    account: str | None = None
    reservation: str | None = None
    sbatch: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class JobPlan:
    """Where one job runs from and writes to, and as whom."""

    workdir: str
    output: str  # may contain %j
    callhome_url: str | None = None  # None for a job: it does not call home
    user: str | None = None  # --uid (root only)
    group: str | None = None  # --gid


def job_name(instance_id: str) -> str:
    return JOB_PREFIX + instance_id


JOB_MARK = ":job"  # ends the comment of a LabHub job's batch job, so a hub that adopts it knows its kind


def job_comment(hub_id: str, instance_id: str, *, job: bool = False) -> str:
    return f"labhub:{hub_id}:{instance_id}" + (JOB_MARK if job else "")


def owned_instance(name: str, comment: str, hub_id: str) -> str | None:
    """The instance id of a job this hub created, from its name and comment; else None."""
    if not name.startswith(JOB_PREFIX):
        return None
    iid = name[len(JOB_PREFIX):]
    return iid if comment in (job_comment(hub_id, iid), job_comment(hub_id, iid, job=True)) else None


def check_template_options(raw: Any, allowed: frozenset[str] = DEFAULT_ALLOWED_SBATCH,
                           ) -> tuple[TemplateOptions, dict[str, str]]:
    """Validate ``LaunchSpec.options["slurm"]``; errors keyed ``slurm.<field>``."""
    errors: dict[str, str] = {}
    if raw is None:
        return TemplateOptions(), errors
    if not isinstance(raw, Mapping):
        return TemplateOptions(), {"slurm": "must be a mapping"}
    values: dict[str, Any] = {}
    checks = {"partition": LIST_VALUE_RE, "constraint": CONSTRAINT_RE, "qos": NAME_VALUE_RE,
              "account": NAME_VALUE_RE, "reservation": NAME_VALUE_RE}
    for key, value in raw.items():
        if key == "sbatch":
            continue
        if key not in checks:
            errors[f"slurm.{key}"] = "unknown Slurm option"
        elif value is not None:
            if not isinstance(value, str) or not checks[key].match(value):
                errors[f"slurm.{key}"] = "contains characters Slurm options may not have"
            else:
                values[key] = value
    lines = raw.get("sbatch") or []
    if not isinstance(lines, list | tuple):
        errors["slurm.sbatch"] = "must be a list of --option[=value]"
        lines = []
    for line in lines:
        problem = sbatch_option_problem(line, allowed)
        if problem:
            errors["slurm.sbatch"] = problem
            break
    return TemplateOptions(**values, sbatch=tuple(str(x) for x in lines)), errors


def sbatch_option_problem(line: Any, allowed: frozenset[str]) -> str | None:
    """Why ``line`` cannot be an extra ``#SBATCH`` option from a template, or None."""
    match = SBATCH_OPTION_RE.match(line) if isinstance(line, str) else None
    if match is None:
        return f"{line!r} is not of the form --option or --option=value (letters, digits, few symbols)"
    name = match.group(1)
    if name in FORBIDDEN_SBATCH:
        return f"--{name} is set by LabHub and cannot come from a template"
    if name not in allowed:
        return f"--{name} is not allowed on this cluster (allowed: {', '.join(sorted(allowed))})"
    return None


def time_limit_minutes(seconds: int, slack: int) -> int:
    return max(1, math.ceil(seconds / 60)) + max(0, slack)


def is_job(spec: LaunchSpec) -> bool:
    return spec.kind == "job"


def path_env(spec: LaunchSpec) -> dict[str, str]:
    """``PATH`` (and ``VIRTUAL_ENV``) for the program, as the local backend sets them; empty for a
    workspace without a runtime, which keeps the environment ``sbatch`` passed on."""
    if spec.runtime:
        return {"PATH": f"{spec.runtime.rstrip('/')}/bin:{JOB_PATH}", "VIRTUAL_ENV": spec.runtime}
    return {"PATH": JOB_PATH} if is_job(spec) else {}


def job_problems(spec: LaunchSpec) -> dict[str, str]:
    """Why ``spec`` cannot run as a Slurm job (keyed by field, as ``Backend.unsupported``); pure."""
    problems: dict[str, str] = {}
    if any(not isinstance(d, str) or not DIR_NAME_RE.match(d) for d in spec.dirs):
        problems["dirs"] = "directories to create must be plain names (letters, digits, '.', '_', '-')"
    return problems


def launch_payload(spec: LaunchSpec, plan: JobPlan, cluster: ClusterOptions) -> dict[str, Any]:
    env = {**path_env(spec), **spec.env}  # the template's env may still set PATH (as on the local backend)
    if is_job(spec):
        return {"instance_id": spec.instance_id, "argv": list(spec.command), "env": env,
                "base_url": spec.base_url, "home": plan.workdir, "dirs": list(spec.dirs)}
    return {
        "instance_id": spec.instance_id,
        "argv": list(spec.command),
        "env": env,
        "base_url": spec.base_url,
        "home": plan.workdir,
        "callhome": plan.callhome_url,
        "token": spec.token,
        "callhome_timeout": cluster.callhome_timeout_s,
    }


def render_batch_script(spec: LaunchSpec, plan: JobPlan, cluster: ClusterOptions, hub_id: str,
                        template: TemplateOptions | None = None) -> str:
    """The batch script for ``spec`` (pure).  Values were validated before; paths are checked here."""
    template = template or TemplateOptions()
    if problems := job_problems(spec):
        raise ValueError("; ".join(f"{k}: {v}" for k, v in problems.items()))
    if not is_job(spec) and not plan.callhome_url:
        raise ValueError("a workspace needs a call-home URL")
    for what, path in (("working directory", plan.workdir), ("output file", plan.output)):
        if not PATH_RE.match(path):
            raise ValueError(f"the {what} {path!r} must be an absolute path without spaces or shell characters")
    res = spec.resources
    directives = [
        f"--job-name={job_name(spec.instance_id)}",
        f"--comment={job_comment(hub_id, spec.instance_id, job=is_job(spec))}",
        f"--output={plan.output}",
        f"--chdir={plan.workdir}",
        f"--time={time_limit_minutes(spec.time_limit_s, cluster.time_limit_slack_minutes)}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={max(1, math.ceil(res.cpus))}",
        f"--mem={res.memory_mb}M",
    ]
    if res.gpus:
        directives.append(f"--gpus={res.gpus}" if cluster.gres_style == "gpus" else f"--gres=gpu:{res.gpus}")
    # a workspace restarted elsewhere would lose its state and address; a job run twice would mix its output
    directives.append("--no-requeue")
    directives.extend(cluster.extra_sbatch)  # site defaults; the template's choices below come later and win
    partition = template.partition or cluster.partition
    for option, value in (("partition", partition), ("account", template.account or cluster.account),
                          ("qos", template.qos or cluster.qos), ("constraint", template.constraint),
                          ("reservation", template.reservation)):
        if value:
            directives.append(f"--{option}={value}")
    directives.extend(template.sbatch)
    if any("\n" in d or "\r" in d for d in directives):
        raise ValueError("an #SBATCH option must not contain a line break")
    payload = base64.b64encode(json.dumps(launch_payload(spec, plan, cluster), sort_keys=True).encode()).decode()
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {d}" for d in directives),
        f"# LabHub instance {spec.instance_id}: {spec.kind} {spec.name!r} of {spec.owner!r}; generated, do not edit",
        *cluster.prologue,
        f"export LABHUB_LAUNCH={payload}",
        f"exec {shlex.quote(cluster.python)} -c '{JOB_LAUNCHER if is_job(spec) else LAUNCHER}'",
        "",
    ]
    return "\n".join(lines)


def sbatch_argv(sbatch: str, plan: JobPlan) -> list[str]:
    """``sbatch --parsable`` (the script comes on stdin), as the job's user when the hub may."""
    argv = [sbatch, "--parsable"]
    if plan.user:
        argv.append(f"--uid={plan.user}")
    if plan.group:
        argv.append(f"--gid={plan.group}")
    return argv


def fill_path(pattern: str, *, home: str | None, user: str, owner: str, instance_id: str) -> str:
    """``{home}``, ``{user}`` (the job's account), ``{owner}`` and ``{instance}`` in a settings path."""
    values = {"home": home or "", "user": user, "owner": owner, "instance": instance_id}
    return re.sub(r"\{(home|user|owner|instance)\}", lambda m: values[m.group(1)], pattern)
