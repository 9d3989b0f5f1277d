"""Building a runtime: a virtualenv from pinned wheels, made where instance accounts can run it.

The contract of :func:`build`:

* idempotent: a built runtime is returned at once, untouched;
* safe between processes: builds of one runtime are serialised by an ``fcntl`` lock under
  ``root/.locks``; the second builder waits, then finds the runtime built;
* atomic: everything happens in ``root/.tmp-<name>-<digest>-<random>``, which is renamed to the
  runtime's location only when complete (the marker file written last); a failure or a
  cancellation removes it, so a runtime's directory is either complete or absent;
* readable by everyone: directories 0755, files 0644 (0755 when executable), whatever the umask,
  because jobs run as per-user accounts, not as the hub.

Every command runs from an argv list (never a shell) and each line it prints goes to ``progress``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from labhub.runtimes.runtime import MARKER, PYTHON_VERSION, Runtime, is_built, location

Progress = Callable[[str], None]
REQUIREMENTS_FILE = "labhub-requirements.txt"
_TAIL = 40  # lines of a failed command's output a RuntimeBuildError carries
_PIP_PYTHON_OPTION = (22, 3)  # the first pip with `--python`, which installs into another interpreter's env


class RuntimeBuildError(RuntimeError):
    """A runtime could not be built; ``output`` holds the last lines the failing command printed."""

    def __init__(self, message: str, output: Sequence[str] = ()) -> None:
        self.output = tuple(output)
        detail = "\n".join(self.output)
        super().__init__(f"{message}\n{detail}" if detail else message)


def _ignore(line: str) -> None:
    pass


def default_python() -> str:
    """The interpreter runtimes are made from: the system's ``/usr/bin/pythonX.Y`` of the hub's version.

    A system interpreter, because instance accounts must be able to execute it (a pyenv under
    /root is unreadable to them); the hub's own interpreter when the system has none.
    """
    system = Path(f"/usr/bin/python{PYTHON_VERSION}")
    return str(system) if os.access(system, os.X_OK) else sys.executable


async def build(
    root: Path,
    runtime: Runtime,
    *,
    python: str | None = None,
    progress: Progress = _ignore,
) -> Path:
    """Build ``runtime`` under ``root`` unless it is built already; return its location.

    Raises :class:`RuntimeBuildError` (with the failing command's last lines) when the interpreter
    is not of the hub's Python version, or when creating the virtualenv or installing fails; then
    nothing of this build is left under ``root``.
    """
    root = Path(root)
    target = location(root, runtime)
    if is_built(root, runtime):
        return target
    python = python or default_python()
    _make_dir(root)
    _warn_unreachable(root, progress)
    locks = root / ".locks"
    _make_dir(locks)
    async with _locked(locks / f"{target.name}.lock", target.name, progress):
        if is_built(root, runtime):
            progress(f"{target.name}: already built")
            return target
        if target.exists():  # not made by build(), which renames only complete directories
            progress(f"{target.name}: removing an incomplete directory")
            await asyncio.to_thread(shutil.rmtree, target)
        for stale in root.glob(f".tmp-{target.name}-*"):  # left by a builder that died; we hold the lock
            await asyncio.to_thread(shutil.rmtree, stale, ignore_errors=True)
        tmp = root / f".tmp-{target.name}-{secrets.token_hex(4)}"
        try:
            await _build_into(tmp, target, runtime, python, progress)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def build_sync(root: Path, runtime: Runtime, *, python: str | None = None, progress: Progress = _ignore) -> Path:
    """:func:`build` for callers without an event loop (the CLI, test fixtures)."""
    return asyncio.run(build(root, runtime, python=python, progress=progress))


async def _build_into(tmp: Path, target: Path, runtime: Runtime, python: str, progress: Progress) -> None:
    started = time.monotonic()
    say = _prefixed(target.name, progress)
    version = (await _capture([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])).strip()
    if version != PYTHON_VERSION:
        raise RuntimeBuildError(f"{python} is Python {version}; this hub's runtimes are built for {PYTHON_VERSION}")
    say(f"creating a virtualenv with {python}")
    await _run([python, "-m", "venv", "--without-pip", str(tmp)], progress)
    venv_python = tmp / "bin" / "python"
    if runtime.requirements:
        requirements = tmp / REQUIREMENTS_FILE
        requirements.write_text("\n".join(runtime.requirements) + "\n", encoding="utf-8")
        say(f"installing {len(runtime.requirements)} pinned requirements")
        await _run([*await _pip_for(venv_python, progress), *_install_args(requirements)], progress)
    if runtime.modules:
        site = Path((await _capture([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]))
                    .strip())
        copied = []
        for source in runtime.module_paths():
            shutil.copyfile(source, site / source.name)
            copied.append(str(site / source.name))
        say(f"adding {', '.join(Path(path).name for path in copied)}")
        # Compiled now, as the hub: instance accounts cannot write __pycache__ here.
        await _run([str(venv_python), "-m", "compileall", "-q", *copied], progress)
    # Off the event loop: a runtime is thousands of files.
    await asyncio.to_thread(_relocate, tmp, target)
    await asyncio.to_thread(_open_up, tmp)
    seconds = round(time.monotonic() - started, 1)
    marker = {
        "name": runtime.name,
        "digest": runtime.digest(),
        "python": python,
        "python_version": PYTHON_VERSION,
        "requirements": list(runtime.requirements),
        "modules": [path.name for path in runtime.module_paths()],
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": seconds,
    }
    fd = os.open(tmp / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o644)
        json.dump(marker, out, indent=2)
        out.write("\n")
    say(f"built in {seconds} s")


def _install_args(requirements: Path) -> list[str]:
    # Wheels only, so a build never compiles (no compilers on the hub, no slow builds, same bytes each time).
    return ["install", "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
            "--no-warn-script-location", "--only-binary=:all:", "-r", str(requirements)]


async def _pip_for(venv_python: Path, progress: Progress) -> list[str]:
    """The command that runs a pip installing into ``venv_python``'s environment.

    The hub's own pip with ``--python`` when it is recent enough (nothing extra in the runtime);
    otherwise the runtime gets its own pip from ensurepip.
    """
    with contextlib.suppress(RuntimeBuildError):
        found = re.match(r"pip (\d+)\.(\d+)", await _capture([sys.executable, "-m", "pip", "--version"]))
        if found and (int(found[1]), int(found[2])) >= _PIP_PYTHON_OPTION:
            return [sys.executable, "-m", "pip", "--python", str(venv_python)]
    progress("the hub's pip cannot install into another environment; using ensurepip")
    await _run([str(venv_python), "-m", "ensurepip", "--default-pip"], progress)
    return [str(venv_python), "-m", "pip"]


async def _run(argv: Sequence[str], progress: Progress) -> None:
    """Run ``argv`` (no shell), passing each output line to ``progress``; raise on a non-zero exit."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env, limit=1 << 20,
    )
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL)
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            progress(line)
        code = await proc.wait()
    except BaseException:  # cancelled: the command must not outlive the build it belongs to
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if code != 0:
        raise RuntimeBuildError(f"{Path(argv[0]).name} {' '.join(argv[1:3])} ... exited with status {code}", tail)


async def _capture(argv: Sequence[str]) -> str:
    """The standard output of a short command; RuntimeBuildError when it fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise RuntimeBuildError(f"cannot run {argv[0]}: {exc}") from exc
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeBuildError(f"{argv[0]} exited with status {proc.returncode}",
                                err.decode(errors="replace").splitlines()[-_TAIL:])
    return out.decode(errors="replace")


@contextlib.asynccontextmanager
async def _locked(path: Path, name: str, progress: Progress) -> AsyncIterator[None]:
    """Hold an exclusive ``flock`` on ``path``, polling so the wait stays cancellable."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    progress(f"{name}: waiting for another build of it to finish")
                    waiting = True
                await asyncio.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _make_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o755)  # noqa: S103 - instance accounts must reach the runtimes


def _warn_unreachable(root: Path, progress: Progress) -> None:
    """Say so when some directory above ``root`` keeps other accounts out (the build still works)."""
    for directory in [root.resolve(), *root.resolve().parents]:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            progress(f"warning: {directory} is not searchable by other accounts, so jobs run as them cannot "
                     f"use runtimes under {root}")
            return


def _prefixed(name: str, progress: Progress) -> Progress:
    return lambda line: progress(f"{name}: {line}")


def _relocate(tmp: Path, target: Path) -> None:
    """Point the scripts venv and pip wrote (shebangs, activate, pyvenv.cfg) at the final location."""
    # The full path first, then the bare name (activate's prompt); the temporary name is unique.
    replacements = [(str(tmp).encode(), str(target).encode()), (tmp.name.encode(), target.name.encode())]
    for path in [tmp / "pyvenv.cfg", *(tmp / "bin").iterdir()]:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
            continue
        data = original = path.read_bytes()
        for old, new in replacements:
            data = data.replace(old, new)
        if data != original:
            path.write_bytes(data)


def _open_up(top: Path) -> None:
    """Directories 0755, files 0644, or 0755 where the owner may execute; links left alone."""
    for directory, _dirs, files in os.walk(top):
        os.chmod(directory, 0o755)  # noqa: S103 - readable by design: jobs run as other accounts
        for name in files:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                wanted = 0o755 if mode & stat.S_IXUSR else 0o644
                if stat.S_IMODE(mode) != wanted:
                    os.chmod(path, wanted)
