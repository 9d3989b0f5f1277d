"""The data directory's layout and permissions: the hub's files are the hub's.

Instances run code their users wrote, as other system accounts, on the same
machine.  So at every start :func:`secure` makes the data directory private:

* the directory itself, ``homes/`` and ``instances/``: the hub's, ``0700``, or
  ``0710`` with the group of the instance accounts (``group``) when there is
  one, so those accounts can *traverse* (never list or read) to their homes;
* the database and its journals, the secret key and ``labhub.toml``: ``0600``;
* ``run/`` (the app's socket): ``0700``;
* each home ``homes/<user>``: ``0700``, owned by its account (not by the hub);
* each instance's log: readable by the hub and the instance's account only.

Modes that are too open are fixed, and said so; a path owned by another
account than the hub's (where the hub expects its own) stops the start, naming
the path, since someone else may already have changed it.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_FILES = ("labhub.sqlite", "labhub.sqlite-wal", "labhub.sqlite-shm", "labhub.sqlite-journal",
                 "secret.key", "labhub.toml")
TRAVERSED_DIRS = ("homes", "instances", "slurm", "folders", "jobs")


class StorageError(Exception):
    """The data directory cannot be made safe; the message names the path."""


@dataclass
class Report:
    """What :func:`secure` changed, one line per path."""

    fixed: list[str] = field(default_factory=list)

    def note(self, path: Path, old: int, new: int) -> None:
        if old & ~new:  # only tightening is news; opening to the instance group is the plan
            self.fixed.append(f"{path}: mode {old:04o} -> {new:04o}")


def _own(path: Path, report: Report, mode: int, *, gid: int | None = None) -> None:
    """``path`` must be the hub's; give it ``mode`` (and group ``gid``)."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise StorageError(f"{path} is a symbolic link; the data directory must hold real files")
    if st.st_uid != os.geteuid():
        raise StorageError(f"{path} belongs to uid {st.st_uid}, not to the hub's user (uid {os.geteuid()}); "
                           f"fix its ownership (chown) before starting LabHub")
    if gid is not None and st.st_gid != gid:
        os.chown(path, -1, gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
        report.note(path, stat.S_IMODE(st.st_mode), mode)


def prepare(data_dir: Path, *, sqlite: Path | None = None) -> None:
    """Create the data directory (private from the start) and, for SQLite, a private database file."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data_dir / "homes").mkdir(mode=0o700, exist_ok=True)
    if sqlite is not None:
        sqlite.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:  # SQLite gives its journals the database's mode: create it private
            os.close(os.open(sqlite, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            pass
        for suffix in ("", "-wal", "-shm", "-journal"):
            path = sqlite.with_name(sqlite.name + suffix)
            if path.exists() and not path.is_symlink() and path.stat().st_uid == os.geteuid():
                os.chmod(path, 0o600)


def prepare_storage(storage_dir: Path | None, data_dir: Path, *, group: int | None) -> None:
    """Create ``folders/`` and ``jobs/`` in the storage directory: the hub's, traversable (never
    listable) by the instance accounts' group, as the data directory is.  Under the data directory
    :func:`secure` keeps them so; elsewhere (a shared file system) they are set here."""
    root = storage_dir or data_dir
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("folders", "jobs"):
        path = root / name
        path.mkdir(mode=0o700, exist_ok=True)
        if root.resolve() != data_dir.resolve():
            _own(path, Report(), 0o710 if group is not None else 0o700, gid=group)


def secure(data_dir: Path, *, group: int | None) -> Report:
    """Make the data directory's permissions what the module docstring says; returns what was fixed.

    Raises :class:`StorageError` for what cannot be fixed safely.
    """
    report = Report()
    dir_mode = 0o710 if group is not None else 0o700
    _own(data_dir, report, dir_mode, gid=group)
    for name in TRAVERSED_DIRS:
        path = data_dir / name
        if path.exists():
            _own(path, report, dir_mode, gid=group)
    run = data_dir / "run"
    if run.exists():
        _own(run, report, 0o700)
    for name in PRIVATE_FILES:
        path = data_dir / name
        if path.exists() or path.is_symlink():
            _own(path, report, 0o600)
    homes = data_dir / "homes"
    if homes.is_dir():
        for home in homes.iterdir():
            st = home.lstat()
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                raise StorageError(f"{home} is not a directory; homes must be real directories")
            if st.st_mode & 0o077:
                os.chmod(home, stat.S_IMODE(st.st_mode) & 0o700)
                report.note(home, stat.S_IMODE(st.st_mode), stat.S_IMODE(st.st_mode) & 0o700)
    instances = data_dir / "instances"
    if instances.is_dir():
        for log_path in instances.glob("*/output.log"):
            st = log_path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o037:
                os.chmod(log_path, stat.S_IMODE(st.st_mode) & 0o740)
                report.note(log_path, stat.S_IMODE(st.st_mode), stat.S_IMODE(st.st_mode) & 0o740)
    for line in report.fixed:
        log.warning("data directory permissions fixed: %s", line)
    return report
