"""Golden tests for batch scripts (``labhub.backends.slurm_script``), and the launcher run for real.

The launchers are exercised without Slurm: the rendered script is run with
``bash`` (``#SBATCH`` lines are comments to it), a workspace's against a
stand-in hub, so what reaches the program's argv is checked byte for byte; a
job's with an audit hook that records any socket it would open.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from labhub.backends.base import LaunchSpec, Resources
from labhub.backends.slurm_script import (
    JOB_LAUNCHER,
    JOB_PATH,
    LAUNCHER,
    ClusterOptions,
    JobPlan,
    TemplateOptions,
    check_template_options,
    job_problems,
    launch_payload,
    owned_instance,
    render_batch_script,
    sbatch_argv,
    time_limit_minutes,
)
from labhub.catalog.schema import Template

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("LABHUB_UPDATE_GOLDEN") == "1"
IID = "0123456789abcdef0123456789abcdef"
TOKEN = "tok-" + "secret"
HOSTILE = ["'; rm -rf / #", "$(touch /tmp/pwned)", "`id`", "a\nb", "{port}-{ip}", '"quoted" \\ back', "ü ✓"]


def make_spec(command: list[str] | None = None, *, gpus: int = 0, env: dict[str, str] | None = None,
              options: dict | None = None, runtime: str | None = None) -> LaunchSpec:
    return LaunchSpec(
        instance_id=IID, owner="alice", name="ws1", kind="workspace",
        command=command or ["jupyter-lab", "--ServerApp.ip={ip}", "--ServerApp.port={port}",
                            "--ServerApp.base_url={base_url}", "--ServerApp.root_dir={home}"],
        env=env or {"LABHUB_TOKEN": "tok-secret", "JUPYTER_TOKEN": "tok-secret", "LABHUB_INSTANCE_ID": IID},
        resources=Resources(cpus=1.5, memory_mb=2048, gpus=gpus), base_url="/user/alice/ws1/", token=TOKEN,
        time_limit_s=4 * 3600, home="/srv/labhub/homes/alice", options=options or {}, runtime=runtime,
    )


JOB_HOME = f"/srv/labhub/jobs/{IID}"
JOB_ENV = {"LABHUB_TOKEN": "tok-secret", "JUPYTER_TOKEN": "tok-secret", "LABHUB_INSTANCE_ID": IID,
           "LABHUB_INPUT": "/srv/labhub/folders/7/inputs", "LABHUB_OUTPUT": f"{JOB_HOME}/output",
           "LABHUB_METRICS": f"{JOB_HOME}/metrics.jsonl"}


def make_job(command: list[str] | None = None, *, home: str = JOB_HOME, env: dict[str, str] | None = None,
             runtime: str | None = None, dirs: tuple[str, ...] = ("output",)) -> LaunchSpec:
    return LaunchSpec(
        instance_id=IID, owner="alice", name="train-1", kind="job",
        command=command or ["python3", "-c", "import runpy; runpy.run_path('main.py')", "{home}"],
        env=JOB_ENV if env is None else env, resources=Resources(cpus=2, memory_mb=4096),
        base_url="/user/alice/train-1/", token=TOKEN, time_limit_s=3600, home=home, runtime=runtime, dirs=dirs,
        readable=("/srv/labhub/folders/7/inputs",),
    )


PLAN = JobPlan(workdir="/srv/labhub/homes/alice", output=f"/srv/labhub/slurm/{IID}/slurm-%j.out",
               callhome_url=f"https://hub.example.org/api/v1/instances/{IID}/callhome")
JOB_PLAN = JobPlan(workdir=JOB_HOME, output=f"/srv/labhub/slurm/{IID}/slurm-%j.out", user="labhub-alice",
                   group="labhub-alice")


def check_script(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"{path} did not exist; written: review it and run again")
    assert text == path.read_text(), f"differs from {path} (LABHUB_UPDATE_GOLDEN=1 rewrites it)"


def test_workspace_script_golden():
    check_script("script_workspace.sh", render_batch_script(make_spec(), PLAN, ClusterOptions(), "labhub"))


def test_site_options_gpus_and_template_options_golden():
    cluster = ClusterOptions(partition="cpu", account="physics", qos="normal", gres_style="gpus",
                             python="/opt/python/bin/python3", time_limit_slack_minutes=5,
                             extra_sbatch=("--constraint=ib",), prologue=("module load python/3.11",))
    template = TemplateOptions(partition="gpu,gpu-long", constraint="a100|h100", reservation="course",
                               sbatch=("--exclusive", "--tmp=20G"))
    plan = JobPlan(workdir=PLAN.workdir, output=PLAN.output, callhome_url=PLAN.callhome_url, user="alice",
                   group="alice")
    script = render_batch_script(make_spec(gpus=2), plan, cluster, "hub-a", template)
    check_script("script_gpu_site.sh", script)
    assert "#SBATCH --gpus=2" in script and "#SBATCH --partition=gpu,gpu-long" in script
    assert sbatch_argv("/usr/bin/sbatch", plan) == ["/usr/bin/sbatch", "--parsable", "--uid=alice", "--gid=alice"]


def test_job_script_golden():
    """A job: the job launcher, no call-home URL or token in the payload, the system PATH."""
    script = render_batch_script(make_job(), JOB_PLAN, ClusterOptions(), "labhub")
    check_script("script_job.sh", script)
    assert "#SBATCH --chdir=" + JOB_HOME in script and "#SBATCH --no-requeue" in script
    assert script.endswith(f"exec python3 -c '{JOB_LAUNCHER}'\n")
    payload = payload_of(script)
    assert set(payload) == {"instance_id", "argv", "env", "base_url", "home", "dirs"}
    assert payload["dirs"] == ["output"] and payload["home"] == JOB_HOME
    assert payload["env"] == {**JOB_ENV, "PATH": JOB_PATH}  # never the hub's own virtualenv


def payload_of(script: str) -> dict:
    line = next(x for x in script.split("\n") if x.startswith("export LABHUB_LAUNCH="))
    return json.loads(base64.b64decode(line.split("=", 1)[1]))


def test_the_job_launcher_needs_nothing_from_the_hub():
    assert "'" not in JOB_LAUNCHER  # it sits inside single quotes
    for word in ("socket", "http", "urllib", "callhome", "token"):
        assert word not in JOB_LAUNCHER, word


def test_runtimes_come_first_on_path_for_jobs_and_workspaces():
    job = launch_payload(make_job(runtime="/srv/labhub/runtimes/train-1a2b"), JOB_PLAN, ClusterOptions())
    assert job["env"]["PATH"] == f"/srv/labhub/runtimes/train-1a2b/bin:{JOB_PATH}"
    assert job["env"]["VIRTUAL_ENV"] == "/srv/labhub/runtimes/train-1a2b"
    workspace = launch_payload(make_spec(runtime="/srv/rt/lab"), PLAN, ClusterOptions())
    assert workspace["env"]["PATH"] == f"/srv/rt/lab/bin:{JOB_PATH}"
    assert workspace["env"]["VIRTUAL_ENV"] == "/srv/rt/lab"
    plain = launch_payload(make_spec(), PLAN, ClusterOptions())
    assert "PATH" not in plain["env"] and "VIRTUAL_ENV" not in plain["env"]  # as before: what sbatch passed on


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/etc", "", "x y"])
def test_dirs_must_be_plain_names(name: str):
    assert "dirs" in job_problems(make_job(dirs=("output", name)))


def test_gres_style_and_time_limit():
    script = render_batch_script(make_spec(gpus=1), PLAN, ClusterOptions(), "labhub")
    assert "#SBATCH --gres=gpu:1" in script
    assert f"#SBATCH --time={4 * 60 + 2}" in script
    assert time_limit_minutes(61, 0) == 2 and time_limit_minutes(1, 0) == 1


def test_nothing_from_the_spec_reaches_the_shell_raw():
    spec = make_spec(["prog", *HOSTILE], env={"X": "'; echo pwned; '", "LABHUB_TOKEN": "t"})
    script = render_batch_script(spec, PLAN, ClusterOptions(), "labhub")
    shell_lines = [line for line in script.split("\n") if line and not line.startswith("#")]
    assert shell_lines[0].startswith("export LABHUB_LAUNCH=")
    assert re.fullmatch(r"export LABHUB_LAUNCH=[A-Za-z0-9+/=]+", shell_lines[0])
    assert "\n".join(shell_lines[1:]) == f"exec python3 -c '{LAUNCHER}'"
    assert "'" not in LAUNCHER  # it sits inside single quotes
    payload = json.loads(base64.b64decode(shell_lines[0].split("=", 1)[1]))
    assert payload["argv"] == ["prog", *HOSTILE] and payload["env"]["X"] == "'; echo pwned; '"


@pytest.mark.parametrize("path", ["relative/dir", "/with space", "/a;b", "/$HOME", "/x\ny"])
def test_unsafe_paths_are_refused(path: str):
    plan = JobPlan(workdir=path, output=PLAN.output, callhome_url=PLAN.callhome_url)
    with pytest.raises(ValueError, match="absolute path"):
        render_batch_script(make_spec(), plan, ClusterOptions(), "labhub")


def test_template_options_are_validated_against_the_allow_list():
    ok, errors = check_template_options({"partition": "gpu", "constraint": "a100&ib", "sbatch": ["--exclusive"]})
    assert errors == {} and ok.partition == "gpu" and ok.sbatch == ("--exclusive",)
    cases = {
        "--uid=0": "set by LabHub", "--output=/etc/passwd": "set by LabHub", "--wrap=id": "set by LabHub",
        "--x11": "not allowed", "--tmp=1G\n#SBATCH --uid=0": "not of the form", "-N 2": "not of the form",
        "--begin=now'": "not of the form",
    }
    for line, why in cases.items():
        _, errors = check_template_options({"sbatch": [line]})
        assert why in errors.get("slurm.sbatch", ""), (line, errors)
    _, errors = check_template_options({"partition": "gpu\n#SBATCH --uid=0", "colour": "red"})
    assert set(errors) == {"slurm.partition", "slurm.colour"}
    _, errors = check_template_options({"sbatch": ["--x11"]}, frozenset({"x11"}))
    assert errors == {}  # a site may widen the list ...
    _, errors = check_template_options({"sbatch": ["--uid=0"]}, frozenset({"uid"}))
    assert errors  # ... but never to what LabHub sets itself


def test_template_yaml_slurm_section_reaches_the_launch_spec():
    from labhub.backends.fake import FakeBackend
    from labhub.models import Instance
    from labhub.services.instances import build_spec

    tpl = Template.model_validate({"name": "gpu-lab", "title": "GPU lab", "command": ["jupyter-lab"],
                                   "slurm": {"partition": "gpu", "sbatch": ["--constraint=a100"]}})
    inst = Instance(id=IID, name="ws1", kind="workspace", cpus=1, memory_mb=100, gpus=0, hours=1, params={})
    spec = build_spec(inst, tpl, owner="alice", token=TOKEN, home=None, base_url="/user/alice/ws1/",
                      backend=FakeBackend())
    assert spec.options["slurm"] == {"partition": "gpu", "sbatch": ["--constraint=a100"]}
    with pytest.raises(ValueError):
        Template.model_validate({"name": "bad", "title": "Bad", "command": ["x"],
                                 "slurm": {"sbatch": ["--tmp=1G\n#SBATCH --uid=0"]}})


def test_job_marks():
    assert owned_instance("labhub-abc", "labhub:hub-a:abc", "hub-a") == "abc"
    assert owned_instance("labhub-abc", "labhub:hub-b:abc", "hub-a") is None
    assert owned_instance("labhub-abc", "labhub:hub-a:abd", "hub-a") is None
    assert owned_instance("mine", "labhub:hub-a:mine", "hub-a") is None
    assert owned_instance("labhub-abc", "labhub:hub-a:abc:job", "hub-a") == "abc"  # a LabHub job
    assert owned_instance("labhub-abc", "labhub:hub-a:abc:jobx", "hub-a") is None
    script = render_batch_script(make_job(), JOB_PLAN, ClusterOptions(), "labhub")
    assert f"#SBATCH --comment=labhub:labhub:{IID}:job" in script


# -- the launcher, for real (bash + python, a stand-in hub; no Slurm) --------------------------------


class StandInHub:
    """Answers the launcher's call-home: ``statuses`` in turn (the last repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.calls: list[dict] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hub.calls.append({"path": self.path, "auth": self.headers["Authorization"], "body": json.loads(body)})
                status = hub.statuses.pop(0) if len(hub.statuses) > 1 else hub.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[callable]:
    hubs: list[StandInHub] = []

    def make(statuses: list[int]) -> StandInHub:
        hubs.append(StandInHub(statuses))
        return hubs[-1]

    yield make
    for hub in hubs:
        hub.close()


def run_script(hub: StandInHub, tmp_path: Path, command: list[str], *, timeout_s: int = 60,
               ) -> subprocess.CompletedProcess[str]:
    plan = JobPlan(workdir=str(tmp_path), output=f"{tmp_path}/out-%j.log",
                   callhome_url=f"{hub.url}/api/v1/instances/{IID}/callhome")
    spec = make_spec(command, env={"LABHUB_TOKEN": "tok-secret", "MY_VAR": "$(not expanded)"})
    script = render_batch_script(spec, plan, ClusterOptions(python=sys.executable, callhome_timeout_s=timeout_s),
                                 "labhub")
    return subprocess.run(["bash", "-c", script], env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "4242"},
                          capture_output=True, text=True, timeout=60)


def test_launcher_calls_home_then_execs_with_placeholders_filled(stand_in, tmp_path: Path):
    hub = stand_in([409, 204])  # the hub has not stored the handle yet: the launcher retries
    show = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['MY_VAR'], os.environ['HOME'], " \
           "'LABHUB_LAUNCH' in os.environ]))"
    result = run_script(hub, tmp_path, [sys.executable, "-c", show, "{port}", "{ip}", "{base_url}", "{home}",
                                        *HOSTILE])
    assert result.returncode == 0, result.stderr
    argv, my_var, home, leaked = json.loads(result.stdout)
    report = hub.calls[-1]
    assert len(hub.calls) == 2 and report["path"] == f"/api/v1/instances/{IID}/callhome"
    assert report["auth"] == "token tok-secret"
    assert report["body"]["job_id"] == "4242" and report["body"]["host"] == "127.0.0.1"
    port = report["body"]["port"]
    assert argv[:4] == [str(port), "127.0.0.1", "/user/alice/ws1/", str(tmp_path)]
    assert argv[4:] == [h.replace("{port}", str(port)).replace("{ip}", "127.0.0.1") for h in HOSTILE]
    assert my_var == "$(not expanded)" and home == str(tmp_path) and leaked is False
    assert f"labhub: listening on 127.0.0.1:{port}" in result.stderr


def test_launcher_stops_when_the_hub_refuses(stand_in, tmp_path: Path):
    hub = stand_in([403])
    result = run_script(hub, tmp_path, ["true"])
    assert result.returncode == 70 and "refused the call-home: HTTP 403" in result.stderr


def test_launcher_gives_up_when_the_hub_cannot_be_reached(stand_in, tmp_path: Path):
    hub = stand_in([503])
    result = run_script(hub, tmp_path, ["true"], timeout_s=0)
    assert result.returncode == 69 and "cannot call home" in result.stderr


def test_launcher_reports_a_missing_command(stand_in, tmp_path: Path):
    hub = stand_in([204])
    result = run_script(hub, tmp_path, ["no-such-program-labhub"])
    assert result.returncode == 127 and "cannot start no-such-program-labhub" in result.stderr


# -- the job launcher, for real (bash + python; no Slurm, no hub) -----------------------------------

AUDIT = """\
import os, sys
def hook(event, args):
    if event.startswith("socket.") or event.startswith("http.") or event == "urllib.Request":
        with open(os.environ["AUDIT_LOG"], "a") as fh:
            fh.write(event + "\\n")
sys.addaudithook(hook)
"""


def run_job(tmp_path: Path, spec: LaunchSpec, *, extra_env: dict[str, str] | None = None,
            ) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the rendered job script as sbatch would (a hub's venv on PATH, VIRTUAL_ENV set); every
    socket or HTTP event the launcher's Python raises lands in the audit log."""
    audit = tmp_path / "audit"
    audit.mkdir(exist_ok=True)
    (audit / "sitecustomize.py").write_text(AUDIT)
    plan = JobPlan(workdir=spec.home or str(tmp_path), output=f"{tmp_path}/out-%j.log")
    script = render_batch_script(spec, plan, ClusterOptions(python=sys.executable), "labhub")
    env = {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "VIRTUAL_ENV": "/the/hubs/venv",
           "SLURM_JOB_ID": "4242", "PYTHONPATH": str(audit), "AUDIT_LOG": str(audit / "events"),
           **(extra_env or {})}
    return subprocess.run(["bash", "-c", script], env=env, cwd=spec.home, capture_output=True, text=True,
                          timeout=60), audit / "events"


SHOW_ENV = ("import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['PATH'], "
            "os.environ.get('VIRTUAL_ENV'), os.environ['HOME'], os.environ['LABHUB_OUTPUT'], "
            "'LABHUB_LAUNCH' in os.environ]))")


def test_job_launcher_makes_its_dirs_and_execs_with_the_system_path(tmp_path: Path):
    home = tmp_path / "job"
    home.mkdir()
    spec = make_job([sys.executable, "-c", SHOW_ENV, "{home}", "{base_url}", *HOSTILE], home=str(home),
                    env={**JOB_ENV, "LABHUB_OUTPUT": str(home / "output")}, dirs=("output", "scratch"))
    result, events = run_job(tmp_path, spec)
    assert result.returncode == 0, result.stderr
    argv, path, venv, env_home, output, leaked = json.loads(result.stdout)
    assert argv == [str(home), "/user/alice/train-1/", *HOSTILE]  # no shell; {port} and {ip} have no value
    assert path == JOB_PATH and venv is None  # neither the hub's PATH nor its virtualenv
    assert env_home == str(home) and output == str(home / "output") and leaked is False
    for name in ("output", "scratch"):
        assert (home / name).is_dir() and (home / name).stat().st_mode & 0o777 == 0o700
    assert result.stderr == ""  # a job's log is its own output: the launcher says nothing
    assert not events.exists(), events.read_text()  # no socket, no HTTP: it never calls home
    subprocess.run([sys.executable, "-c", "import socket; socket.socket().close()"], check=True, timeout=30,
                   env={"PYTHONPATH": str(events.parent), "AUDIT_LOG": str(events)})
    assert events.read_text() == "socket.__new__\n"  # (the hook does see a socket when one is opened)


def test_job_launcher_puts_the_runtime_first(tmp_path: Path):
    runtime = tmp_path / "runtime"
    (runtime / "bin").mkdir(parents=True)
    tool = runtime / "bin" / "labhub-test-tool"
    tool.write_text(f"#!/bin/sh\nexec {sys.executable} -c \"{SHOW_ENV}\" \"$@\"\n")
    tool.chmod(0o755)
    home = tmp_path / "job"
    home.mkdir()
    (home / "output").mkdir()  # already there (a resubmission): not an error
    spec = make_job(["labhub-test-tool", "x"], home=str(home), runtime=str(runtime),
                    env={**JOB_ENV, "LABHUB_OUTPUT": str(home / "output")})
    result, _ = run_job(tmp_path, spec)
    assert result.returncode == 0, result.stderr
    argv, path, venv, *_ = json.loads(result.stdout)
    assert argv == ["x"] and path == f"{runtime}/bin:{JOB_PATH}" and venv == str(runtime)


def test_job_launcher_fails_clearly(tmp_path: Path):
    home = tmp_path / "job"
    home.mkdir()
    (home / "output").write_text("a file where the directory goes")
    result, _ = run_job(tmp_path, make_job(["true"], home=str(home)))
    assert result.returncode == 73 and "cannot create output in" in result.stderr
    (home / "output").unlink()
    (home / "output").symlink_to("/etc")
    result, _ = run_job(tmp_path, make_job(["true"], home=str(home)))
    assert result.returncode == 73 and "something else has that name" in result.stderr
    result, _ = run_job(tmp_path, make_job(["no-such-program-labhub"], home=str(home), dirs=()))
    assert result.returncode == 127 and "cannot start no-such-program-labhub" in result.stderr
