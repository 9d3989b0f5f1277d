"""Log tails read by the hub: bounded in time and memory, whatever an instance writes."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

from labhub.backends import procinfo
from labhub.backends.procinfo import LINE_CUT, tail_lines

MiB = 1024 * 1024


def test_a_huge_log_without_newlines_is_not_read_whole(tmp_path: Path):
    """The attack: an instance prints 100 MiB without a newline, then the hub reads its "last lines"."""
    log = tmp_path / "output.log"
    with open(log, "wb") as f:
        f.truncate(100 * MiB - 8)  # sparse: created at once, reads as NUL bytes
        f.seek(0, 2)
        f.write(b"the end!")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        lines = tail_lines(log, 20)
        took = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(lines) == 1 and lines[0].startswith(LINE_CUT) and lines[0].endswith("the end!")
    assert len(lines[0].encode()) <= procinfo.MAX_LINE_BYTES + len(LINE_CUT.encode())
    assert took < 0.5, took
    assert peak < 2 * MiB, peak  # a few times the bytes read, not the file


def test_reads_at_most_max_bytes_from_the_end(tmp_path: Path):
    log = tmp_path / "output.log"
    lines = [f"line {i:06d}" for i in range(100_000)]  # 1.2 MB
    log.write_text("\n".join(lines) + "\n")
    got = tail_lines(log, 10_000, max_bytes=4096)
    assert 0 < len(got) < 4096 // 12 + 2
    assert got[-1] == "line 099999"
    assert got[1:] == lines[-len(got) + 1 :]  # whole lines, in order
    assert got[0].startswith(LINE_CUT) and lines[-len(got)].endswith(got[0][len(LINE_CUT) :])  # 4096 % 12 != 0
    assert sum(len(line) + 1 for line in got) <= 4096 + len(LINE_CUT)
    assert tail_lines(log, 3, max_bytes=4096) == lines[-3:]  # enough lines: nothing is cut


def test_a_line_that_starts_before_the_window_is_marked_and_one_that_does_not_is_not(tmp_path: Path):
    log = tmp_path / "output.log"
    log.write_bytes(b"y" * 5000 + b"\nshort\n")
    assert tail_lines(log, 5, max_bytes=1000) == [LINE_CUT + "y" * (1000 - len("\nshort\n")), "short"]
    log.write_bytes(b"z" * 50 + b"\n" + b"y" * 993 + b"\nshort\n")  # the window starts where a line does
    assert tail_lines(log, 5, max_bytes=1000) == ["y" * 993, "short"]


def test_over_long_lines_are_cut_keeping_their_end(tmp_path: Path):
    log = tmp_path / "output.log"
    log.write_text("first\n" + "a" * 50_000 + "END\nlast\n")
    first, long, last = tail_lines(log, 3, max_line=1000)
    assert (first, last) == ("first", "last")
    assert long == LINE_CUT + "a" * (1000 - 3) + "END"


def test_cuts_never_split_a_character(tmp_path: Path):
    log = tmp_path / "output.log"
    log.write_text("é" * 3000 + "\n" + "€" * 3000)  # 2- and 3-byte characters
    for max_bytes in range(990, 1000):
        for max_line in range(500, 504):
            for line in tail_lines(log, 2, max_bytes=max_bytes, max_line=max_line):
                assert "\ufffd" not in line, (max_bytes, max_line)


def test_small_files_and_edge_cases_are_unchanged(tmp_path: Path):
    log = tmp_path / "output.log"
    assert tail_lines(log, 5) == []  # missing
    log.write_text("")
    assert tail_lines(log, 5) == []
    log.write_text("a\r\nb\n")
    assert tail_lines(log, 5) == ["a", "b"]
    assert tail_lines(log, 0) == []
    link = tmp_path / "link.log"
    link.symlink_to(log)
    try:
        tail_lines(link, 5)
    except OSError:
        pass  # symlinks are not followed
    else:
        raise AssertionError("followed a symlink")
