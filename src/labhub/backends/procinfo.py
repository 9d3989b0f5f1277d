"""Reading ``/proc`` and log files without spawning anything.

Pure helpers for the local backend: every function here is a few file reads,
cheap enough to call for every instance on every reconcile tick.
"""

from __future__ import annotations

import os
import stat
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


MAX_TAIL_BYTES = 256 * 1024  # the most a log tail reads, however many lines are asked for
MAX_LINE_BYTES = 16 * 1024  # a longer line keeps its end
LINE_CUT = "[… cut] "  # starts a line whose beginning was left out


def tail_lines(path: Path | str, n: int, *, block: int = 65536, max_bytes: int = MAX_TAIL_BYTES,
               max_line: int = MAX_LINE_BYTES) -> list[str]:
    """The last ``n`` lines of a file, without newlines, oldest first.

    Reads backwards in blocks from the end, and never more than the last
    ``max_bytes`` of the file, so the cost depends on neither the file size nor
    the line lengths: a log without newlines costs what a short one does.  A
    line that starts before that window, or is longer than ``max_line`` bytes,
    keeps its end and begins with :data:`LINE_CUT`.  Cuts fall between UTF-8
    characters.  A missing file has no lines.  Symlinks are not followed (the
    file may be owned by an instance's account).
    """
    if n <= 0:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        end = os.fstat(fd).st_size
        start = max(0, end - max(1, max_bytes))
        pos = end
        chunks: list[bytes] = []
        newlines = 0
        # One newline more than needed marks where the wanted lines begin; a
        # trailing newline at the very end of the file does not start a line.
        while pos > start and newlines <= n:
            size = min(block, pos - start)
            pos -= size
            chunk = os.pread(fd, size, pos)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
        first_cut = pos > 0 and os.pread(fd, 1, pos - 1) != b"\n"
    finally:
        os.close(fd)
    if end == 0:
        return []
    return split_tail(b"".join(reversed(chunks)), n, first_cut=first_cut, max_line=max_line)


def split_tail(data: bytes, n: int, *, first_cut: bool, max_line: int = MAX_LINE_BYTES) -> list[str]:
    """The last ``n`` lines of ``data`` (the end of a log), cut as :func:`tail_lines` says (pure).

    ``first_cut``: ``data`` starts in the middle of a line.
    """
    if n <= 0:
        return []
    if data.endswith(b"\n"):
        data = data[:-1]
    lines = data.split(b"\n")
    kept = lines[-n:]
    cut = [first_cut and len(kept) == len(lines)] + [False] * (len(kept) - 1)
    return [_line(line, max_line, cut=was_cut) for line, was_cut in zip(kept, cut, strict=True)]


def _line(raw: bytes, max_line: int, *, cut: bool) -> str:
    if len(raw) > max_line:
        raw, cut = raw[-max_line:], True
    if cut:
        raw = raw[_char_start(raw):]
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    return LINE_CUT + text if cut else text


def _char_start(raw: bytes) -> int:
    """How many UTF-8 continuation bytes ``raw`` starts with (at most 3: then it is not UTF-8)."""
    skip = 0
    while skip < min(3, len(raw)) and raw[skip] & 0xC0 == 0x80:
        skip += 1
    return skip


def read_at(path: Path | str, offset: int, limit: int) -> tuple[bytes, int]:
    """Up to ``limit`` bytes of a regular file from ``offset`` (negative: from that many bytes
    before the end), and the offset after them; a missing file, or anything but a regular file
    (never followed if a symlink), reads as empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b"", max(0, offset)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b"", max(0, offset)
        start = max(0, st.st_size + offset) if offset < 0 else min(offset, st.st_size)
        data = os.pread(fd, max(0, min(limit, st.st_size - start)), start)
        return data, start + len(data)
    finally:
        os.close(fd)


def memory_mb() -> int | None:
    """This machine's memory (``MemTotal`` of ``/proc/meminfo``), in MB; None when unreadable."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        return None
    return None
