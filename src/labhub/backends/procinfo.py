"""Reading ``/proc`` and log files without spawning anything.

Pure helpers for the local backend: every function here is a few file reads,
cheap enough to call for every instance on every reconcile tick.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the local backend needs."""

    pid: int
    state: str  # "R", "S", "D", "Z" (zombie), "X" (dead), ...
    ppid: int
    pgrp: int
    session: int
    start_ticks: int  # field 22: start time in clock ticks since boot

    @property
    def dead(self) -> bool:
        """A zombie has exited; only its exit status is left to collect."""
        return self.state in ("Z", "X")


def parse_stat(pid: int, text: str) -> ProcStat:
    """Parse the content of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may itself contain spaces
    and parentheses, so split after its *last* closing parenthesis.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    return ProcStat(
        pid=pid,
        state=rest[0],
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        session=int(rest[3]),
        start_ticks=int(rest[19]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or ``None`` if there is no such process."""
    if pid <= 0:
        return None
    try:
        with open(PROC / str(pid) / "stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        return parse_stat(pid, text)
    except (ValueError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``, or ``None`` if the process is gone."""
    st = read_stat(pid)
    return None if st is None else st.start_ticks


def is_alive(pid: int, ticks: int) -> bool:
    """True if ``pid`` runs and is the process that started at ``ticks``.

    A pid number is reused once its process is gone; the start time tells the
    original apart from a newcomer.  Zombies count as dead.
    """
    st = read_stat(pid)
    return st is not None and st.start_ticks == ticks and not st.dead


def proc_uid(pid: int) -> int | None:
    """The effective uid of ``pid`` (owner of ``/proc/<pid>``), or ``None``."""
    try:
        return os.stat(PROC / str(pid)).st_uid
    except OSError:
        return None


def status_uids(pid: int) -> tuple[int, int, int, int] | None:
    """Real, effective, saved and filesystem uids from ``/proc/<pid>/status``."""
    try:
        with open(PROC / str(pid) / "status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Uid:"):
                    r, e, s, fs = (int(x) for x in line.split()[1:5])
                    return r, e, s, fs
    except OSError:
        return None
    return None


def all_stats() -> list[ProcStat]:
    """Every live (non-zombie) process on the machine; one ``/proc`` scan."""
    out: list[ProcStat] = []
    try:
        names = os.listdir(PROC)
    except OSError:
        return out
    for name in names:
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None and not st.dead:
                out.append(st)
    return out


def instance_group(pid: int, pgid: int, ticks: int | None, uid: int | None) -> set[int]:
    """Live processes of the group an instance's leader ``pid`` started.

    The kernel does not hand out a number again while a process group of that
    number has members, so if ``pid`` now belongs to a different process (its
    start time differs), the instance's group is empty and any group with that
    number is somebody else's.  Otherwise members started before the leader or
    running as another uid are not counted either.  One ``/proc`` scan.
    """
    leader = read_stat(pid)
    if leader is not None and leader.start_ticks != ticks:
        return set()
    return {
        st.pid
        for st in all_stats()
        if st.pgrp == pgid
        and (ticks is None or st.start_ticks >= ticks)
        and (uid is None or proc_uid(st.pid) == uid)
    }


def tail_lines(path: Path | str, n: int, *, block: int = 65536) -> list[str]:
    """The last ``n`` lines of a file, without newlines, oldest first.

    Reads backwards in blocks, so the cost depends on ``n`` and the line
    length, not on the file size.  A missing file has no lines.  Symlinks are
    not followed (the file may be owned by an instance's account).
    """
    if n <= 0:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        end = os.fstat(fd).st_size
        pos = end
        chunks: list[bytes] = []
        newlines = 0
        # One newline more than needed marks where the wanted lines begin; a
        # trailing newline at the very end of the file does not start a line.
        while pos > 0 and newlines <= n:
            size = min(block, pos)
            pos -= size
            chunk = os.pread(fd, size, pos)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    finally:
        os.close(fd)
    data = b"".join(reversed(chunks))
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data and end == 0:
        return []
    lines = data.split(b"\n")
    return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines[-n:]]
