"""Building runtimes: atomic, idempotent, safe when two builders race, readable by every account.

These use tiny runtimes (no requirement, or one small wheel) so they run in seconds; the train
runtime itself is built once by the ``train_runtime`` fixture.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labhub.runtimes import MARKER, Runtime, RuntimeBuildError, build, build_sync, is_built, location

SMALL_WHEEL = "six==1.17.0"
IS_ROOT = os.geteuid() == 0
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def tiny(program_dir: Path, *requirements: str, name: str = "tiny") -> Runtime:
    """A runtime carrying one program, ``tinyprog``, that prints a line."""
    program = program_dir / "tinyprog.py"
    program.write_text("print('tiny ok')\n")
    return Runtime(name, requirements, modules=(str(program),))


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A runtimes root other accounts can reach (pytest's tmp_path is private to this account)."""
    top = Path(tempfile.mkdtemp(prefix="labhub-runtimes-"))
    os.chmod(top, 0o755)  # noqa: S103 - the point of the test
    yield top / "runtimes"
    shutil.rmtree(top)


def leftovers(root: Path) -> list[str]:
    """What a build left under ``root`` besides its lock files."""
    found = [path.name for path in root.iterdir() if path.name != ".locks"]
    found += [f".locks/{path.name}" for path in (root / ".locks").iterdir() if not path.name.endswith(".lock")]
    return sorted(found)


def children() -> list[int]:
    """Live processes whose parent is this one."""
    mine = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                mine.append(int(entry.name))
    return mine


def test_build_makes_a_runtime_every_account_can_run(shared_root: Path, tmp_path: Path) -> None:
    runtime = tiny(tmp_path, SMALL_WHEEL)
    lines: list[str] = []
    old = os.umask(0o077)  # the hub's umask must not leak into what other accounts need to read
    try:
        path = build_sync(shared_root, runtime, progress=lines.append)
    finally:
        os.umask(old)

    assert path == location(shared_root, runtime) and is_built(shared_root, runtime)
    marker = json.loads((path / MARKER).read_text())
    assert marker["digest"] == runtime.digest() and marker["requirements"] == [SMALL_WHEEL]
    assert any("Successfully installed six-1.17.0" in line for line in lines), lines
    assert stat.S_IMODE(os.stat(shared_root).st_mode) == 0o755
    for directory, _dirs, files in os.walk(path):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755, directory
        for name in files:
            mode = os.lstat(os.path.join(directory, name)).st_mode
            if stat.S_ISREG(mode):
                assert stat.S_IMODE(mode) in (0o644, 0o755), (directory, name, oct(mode))
    site = next(path.glob("lib/python3.*/site-packages"))
    assert (site / "tinyprog.py").is_file() and list((site / "__pycache__").glob("tinyprog.*.pyc"))
    # Built in a temporary directory, then renamed: nothing may still point there.
    for text in [path / "pyvenv.cfg", *(path / "bin").glob("activate*")]:
        assert ".tmp-" not in text.read_text(), text
    assert leftovers(shared_root) == [path.name]

    check = [str(path / "bin" / "python"), "-c", "import six, runpy; runpy.run_module('tinyprog')"]
    assert subprocess.run(check, capture_output=True, text=True, check=True).stdout == "tiny ok\n"
    if IS_ROOT:  # the real question: can an instance account (here nobody) run it?
        result = subprocess.run([*NOBODY, *check], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert result.returncode == 0 and result.stdout == "tiny ok\n", result.stderr


def test_build_is_idempotent(tmp_path: Path) -> None:
    runtime = tiny(tmp_path, name="idem")
    root = tmp_path / "runtimes"
    path = build_sync(root, runtime)
    marker = (path / MARKER).stat()
    again: list[str] = []
    assert build_sync(root, runtime, progress=again.append) == path
    assert again == []  # returned at once: no lock, no command
    assert (path / MARKER).stat().st_mtime_ns == marker.st_mtime_ns


def test_a_failed_install_leaves_nothing_behind(tmp_path: Path) -> None:
    runtime = Runtime("broken", ("labhub-test-no-such-distribution==0.0.1",))
    root = tmp_path / "runtimes"
    lines: list[str] = []
    with pytest.raises(RuntimeBuildError) as failure:
        build_sync(root, runtime, progress=lines.append)
    assert "exited with status" in str(failure.value)
    # pip's own words come with the error (the hub shows them as the launch's reason).
    assert any("labhub-test-no-such-distribution" in line for line in failure.value.output), failure.value.output
    assert leftovers(root) == [] and not is_built(root, runtime)


def test_an_interpreter_that_cannot_run_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "runtimes"
    with pytest.raises(RuntimeBuildError, match="cannot run /nonexistent/python3"):
        build_sync(root, tiny(tmp_path), python="/nonexistent/python3")
    assert leftovers(root) == []


def test_an_interpreter_of_another_version_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "python-other"
    fake.write_text("#!/bin/sh\necho 2.7\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeBuildError, match=r"is Python 2.7; this hub's runtimes are built for 3\."):
        build_sync(tmp_path / "runtimes", tiny(tmp_path), python=str(fake))


def test_a_half_made_directory_and_a_dead_builders_leftovers_are_replaced(tmp_path: Path) -> None:
    runtime = tiny(tmp_path)
    root = tmp_path / "runtimes"
    target = location(root, runtime)
    (target / "bin").mkdir(parents=True)
    (target / "bin" / "junk").write_text("from a crashed copy")
    stale = root / f".tmp-{target.name}-deadbeef"
    stale.mkdir()
    assert build_sync(root, runtime) == target
    assert is_built(root, runtime) and not (target / "bin" / "junk").exists()
    assert leftovers(root) == [target.name]


BUILDER = """
import sys
from labhub.runtimes import Runtime, build_sync
runtime = Runtime("race", (sys.argv[2],), modules=(sys.argv[3],))
print(build_sync(sys.argv[1], runtime, progress=lambda line: print("progress:", line, flush=True)))
"""


def test_two_processes_building_at_once_build_it_once(tmp_path: Path) -> None:
    root = tmp_path / "runtimes"
    runtime = tiny(tmp_path, SMALL_WHEEL, name="race")
    argv = [sys.executable, "-c", BUILDER, str(root), SMALL_WHEEL, runtime.modules[0]]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    target = str(location(root, runtime))
    assert [output.splitlines()[-1] for output in outputs] == [target, target]
    builders = [output for output in outputs if "creating a virtualenv" in output]
    waiters = [output for output in outputs if "waiting for another build" in output]
    assert len(builders) == 1 and len(waiters) == 1, outputs
    assert "already built" in waiters[0]
    assert leftovers(root) == [Path(target).name]


async def test_two_builds_in_one_event_loop_build_it_once(tmp_path: Path) -> None:
    root = tmp_path / "runtimes"
    runtime = tiny(tmp_path, name="gather")
    lines: list[str] = []
    first, second = await asyncio.gather(build(root, runtime, progress=lines.append),
                                         build(root, runtime, progress=lines.append))
    assert first == second == location(root, runtime)
    assert sum("creating a virtualenv" in line for line in lines) == 1, lines
    assert any("already built" in line for line in lines), lines


async def test_a_cancelled_build_leaves_nothing_and_no_process(tmp_path: Path) -> None:
    root = tmp_path / "runtimes"
    runtime = tiny(tmp_path, SMALL_WHEEL, name="cancelled")
    installing = asyncio.Event()
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if "six" in line and "installing" not in line:  # pip itself has started and speaks
            installing.set()

    before = set(children())  # other tests' servers (Slurm, XRootD) may be this process's children too
    task = asyncio.create_task(build(root, runtime, progress=progress))
    await asyncio.wait_for(installing.wait(), timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(root) == [] and not is_built(root, runtime)
    assert set(children()) - before == set()
    assert not any("Successfully installed" in line for line in lines), lines
