"""labhub.files.tree against an output directory its job's account has booby-trapped, then an honest one.

The "job" here is the test itself, planting what an untrusted account could: symlinks out, a directory swapped
for a symlink (once, and in a loop while the hub reads), FIFOs, other people's files, hard links, a sparse
giant, very deep and very wide trees. Outside the root sits a directory with a secret that must never be read,
listed or deleted.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from labhub.files.tree import (
    Entry,
    TreeError,
    _Exactly,
    open_file,
    remove_tree,
    usage,
    walk,
    write_targz,
)

T = TypeVar("T")
JOB_UID = 4242  # the job's account in the uid tests; nobody owns files as it on a test machine
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files are chown'ed to a job uid")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "secret.txt").write_text("SECRET")
    (secret / "sub").mkdir()
    (secret / "sub" / "more.txt").write_text("SECRET too")
    return secret


@pytest.fixture
def root(tmp_path: Path) -> Path:
    out = tmp_path / "output"
    out.mkdir()
    return out


def finishes(call: Callable[[], T], seconds: float = 5.0) -> T:
    """call() in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    if error:
        raise error[0]
    return result[0]


def paths(entries: list[Entry]) -> list[str]:
    return [entry.path for entry in entries]


def read_targz(root: Path, **kwargs: object) -> tuple[bytes, int]:
    """write_targz into a pipe (not seekable) drained by a thread, as a socket would be."""
    r, w = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 65536), b"")), daemon=True)
    reader.start()
    with os.fdopen(w, "wb") as out:
        assert not out.seekable()
        added = finishes(lambda: write_targz(root, out, **kwargs))  # type: ignore[arg-type]
    reader.join(5)
    os.close(r)
    return b"".join(chunks), added


# --- attacks -------------------------------------------------------------------------------------------------


def test_symlinks_out_are_not_followed(root: Path, outside: Path) -> None:
    (root / "real.txt").write_text("mine")
    (root / "shadow").symlink_to("/etc/shadow")
    (root / "secret.txt").symlink_to(outside / "secret.txt")
    (root / "dir").symlink_to(outside)
    (root / "loop").symlink_to("loop")
    entries, truncated = walk(root)
    assert paths(entries) == ["real.txt"]
    assert not truncated
    for rel in ("shadow", "secret.txt", "dir/secret.txt", "dir/sub/more.txt", "loop", "loop/x"):
        with pytest.raises(TreeError) as info:
            open_file(root, rel)
        assert info.value.not_found
    assert usage(root)[1] == 1


def test_directory_replaced_by_symlink(root: Path, outside: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_text("inside")
    assert paths(walk(root)[0]) == ["d/f.txt"]
    (root / "d" / "f.txt").unlink()
    (root / "d").rmdir()
    (root / "d").symlink_to(outside / "sub")
    assert walk(root)[0] == []
    with pytest.raises(TreeError):
        open_file(root, "d/more.txt")


def test_directory_swapped_while_reading(root: Path, outside: Path) -> None:
    # The job flips root/d between a real directory and a symlink out, as fast as it can, while the hub
    # opens root/d/f.txt and walks root: the hub must only ever see "inside", never the secret.
    (outside / "f.txt").write_text("SECRET")
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_text("inside")
    (root / "link").symlink_to(outside)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            os.rename(root / "d", root / "real")
            os.rename(root / "link", root / "d")
            os.rename(root / "d", root / "link")
            os.rename(root / "real", root / "d")

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    seen: set[str] = set()
    try:
        for _ in range(2000):
            try:
                with open_file(root, "d/f.txt") as f:
                    seen.add(f.read().decode())
            except TreeError:
                seen.add("refused")
        for _ in range(50):
            assert {entry.path for entry in walk(root)[0]} <= {"d/f.txt", "real/f.txt"}
    finally:
        stop.set()
        flipper.join(5)
    assert "SECRET" not in seen
    assert "inside" in seen


def test_fifo_never_blocks(root: Path) -> None:
    os.mkfifo(root / "pipe")
    (root / "a.txt").write_text("a")
    assert paths(finishes(lambda: walk(root))[0]) == ["a.txt"]
    for rel in ("pipe", "pipe/x"):
        with pytest.raises(TreeError) as info:
            finishes(lambda rel=rel: open_file(root, rel))
        assert info.value.not_found
    with pytest.raises(TreeError):
        finishes(lambda: walk(root / "pipe"))
    data, added = read_targz(root)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["a.txt"]
    assert added == 1


def test_socket_and_directory_are_not_files(root: Path) -> None:
    import socket

    (root / "sub").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
        assert walk(root)[0] == []
        for rel in ("sock", "sub", "missing.txt"):
            with pytest.raises(TreeError) as info:
                open_file(root, rel)
            assert info.value.not_found


@needs_root
def test_other_accounts_files_are_skipped(root: Path, outside: Path) -> None:
    (root / "mine.txt").write_text("mine")
    os.chown(root / "mine.txt", JOB_UID, JOB_UID)
    (root / "planted-by-root.txt").write_text("not the job's")
    os.link(outside / "secret.txt", root / "hardlink.txt")  # keeps the secret's owner, root
    entries, _ = walk(root, uid=JOB_UID)
    assert paths(entries) == ["mine.txt"]
    assert paths(walk(root)[0]) == ["hardlink.txt", "mine.txt", "planted-by-root.txt"]
    for rel in ("hardlink.txt", "planted-by-root.txt"):
        with pytest.raises(TreeError) as info:
            open_file(root, rel, uid=JOB_UID)
        assert info.value.not_found
    with open_file(root, "mine.txt", uid=JOB_UID) as f:
        assert f.read() == b"mine"
    assert usage(root, uid=JOB_UID)[1] == 1
    data, _ = read_targz(root, uid=JOB_UID)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["mine.txt"]


@pytest.mark.parametrize(
    "relpath", ["../outside/secret.txt", "/etc/passwd", "a/../../x", "", "..", "a\x00b", "\u2025/x"]
)
def test_bad_relpaths_refused(root: Path, outside: Path, relpath: str) -> None:
    with pytest.raises(TreeError) as info:
        open_file(root, relpath)
    assert not info.value.not_found


def test_max_entries_truncates(root: Path) -> None:
    for i in range(5):
        (root / f"d{i}").mkdir()
        for j in range(5):
            (root / f"d{i}" / f"f{j}").write_text("x")
    entries, truncated = walk(root, max_entries=10)
    assert len(entries) == 10 and truncated
    assert paths(entries) == sorted(paths(entries))
    entries, truncated = walk(root, max_entries=25)
    assert len(entries) == 25 and not truncated
    assert usage(root, max_entries=10)[1] == 10


def test_junk_does_not_make_walk_scan_forever(root: Path) -> None:
    for i in range(1500):
        os.symlink("/", root / f"l{i}")
    (root / "z.txt").write_text("z")
    entries, truncated = walk(root, max_entries=10)
    assert truncated
    assert len(entries) <= 1


def test_depth_is_limited(root: Path) -> None:
    deep = root.joinpath(*["d"] * 70)
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("x")
    (root / "top.txt").write_text("x")
    entries, truncated = walk(root)
    assert paths(entries) == ["top.txt"]
    assert truncated


def test_unlistable_names_are_skipped(root: Path) -> None:
    (root / "ok.txt").write_text("ok")
    (root / "new\nline.txt").write_text("x")
    os.close(os.open(os.path.join(os.fsencode(root), b"bad\xffutf8"), os.O_CREAT | os.O_WRONLY, 0o644))
    assert paths(walk(root)[0]) == ["ok.txt"]


def test_missing_root(tmp_path: Path, outside: Path) -> None:
    with pytest.raises(TreeError) as info:
        walk(tmp_path / "nope")
    assert info.value.not_found
    (tmp_path / "rootlink").symlink_to(outside)
    with pytest.raises(TreeError):
        walk(tmp_path / "rootlink")  # root's own last component is not followed either
    with pytest.raises(TreeError):
        open_file(tmp_path / "rootlink", "secret.txt")


def test_sparse_giant(root: Path) -> None:
    with open(root / "sparse.bin", "wb") as f:
        f.truncate(100 << 30)
    entries, _ = walk(root)
    assert entries[0].size == 100 << 30
    used, files = usage(root)
    assert files == 1 and used < 1 << 20  # disk usage, not apparent size
    with pytest.raises(TreeError) as info:
        read_targz(root, max_bytes=1 << 30)
    assert info.value.too_large


def test_file_changing_size_keeps_archive_valid() -> None:
    shrunk = _Exactly(io.BytesIO(b"abc"), 5)
    assert shrunk.read(5) == b"abc\0\0"
    grown = _Exactly(io.BytesIO(b"abcdefgh"), 5)
    assert grown.read(4) + grown.read(4) == b"abcde"


# --- an honest output directory ------------------------------------------------------------------------------


def _honest(root: Path) -> dict[str, bytes]:
    files = {
        "model.pt": os.urandom(3 << 20),
        "logs/train.log": b"epoch 1\n",
        "logs/deep/er/metrics.json": b"{}",
        "r\u00e9sum\u00e9.txt": b"unicode",
        "empty": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_walk_and_open(root: Path) -> None:
    files = _honest(root)
    entries, truncated = walk(root)
    assert not truncated
    assert paths(entries) == sorted(files)
    assert {e.path: e.size for e in entries} == {rel: len(data) for rel, data in files.items()}
    assert all(e.mtime > 0 for e in entries)
    for rel, data in files.items():
        with open_file(root, rel) as f:
            assert f.read() == data
    with open_file(root, "./logs//train.log") as f:
        assert f.read() == b"epoch 1\n"
    used, count = usage(root)
    assert count == len(files) and used >= 3 << 20


def test_write_targz_streams_into_a_pipe(root: Path, outside: Path) -> None:
    files = _honest(root)
    (root / "escape").symlink_to(outside)
    (root / "secret.txt").symlink_to(outside / "secret.txt")
    data, added = read_targz(root, prefix="job-7/")
    assert added == sum(map(len, files.values()))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["job-7/" + rel for rel in sorted(files)]
        for m in members:
            assert m.isreg() and m.mode == 0o644 and m.uid == m.gid == 0 and m.uname == m.gname == ""
            f = tar.extractfile(m)
            assert f is not None and f.read() == files[m.name.removeprefix("job-7/")]
    assert b"SECRET" not in data


def test_write_targz_max_entries(root: Path) -> None:
    for i in range(20):
        (root / f"f{i:02d}").write_text("x")
    data, added = read_targz(root, max_entries=5)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert len(tar.getnames()) == 5
    assert added == 5


# --- removal -------------------------------------------------------------------------------------------------


def _outside_state(outside: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(outside)), p.read_bytes() if p.is_file() else b"") for p in outside.rglob("*"))


def test_remove_tree_keeps_link_targets(root: Path, outside: Path) -> None:
    before = _outside_state(outside)
    _honest(root)
    (root / "logs" / "escape").symlink_to(outside)
    (root / "secret.txt").symlink_to(outside / "secret.txt")
    os.link(outside / "sub" / "more.txt", root / "hard.txt")
    os.mkfifo(root / "logs" / "pipe")
    finishes(lambda: remove_tree(root))
    assert not root.exists()
    assert _outside_state(outside) == before
    remove_tree(root)  # already gone: fine


def test_remove_tree_root_is_a_symlink(tmp_path: Path, outside: Path) -> None:
    before = _outside_state(outside)
    link = tmp_path / "output"
    link.symlink_to(outside)
    remove_tree(link)
    assert not link.is_symlink()
    assert _outside_state(outside) == before


def test_remove_tree_very_deep_and_wide(root: Path) -> None:
    # Deeper than Python's recursion limit and than a process's descriptors, and one wide directory.
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        os.close(os.open("bottom.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    wide = root / "wide"
    wide.mkdir()
    for i in range(2500):
        (wide / f"f{i}").touch()
    try:
        remove_tree(root)
        assert not root.exists()
    finally:
        if root.exists():
            _unchain(root)  # else pytest's own cleanup (shutil.rmtree) dies on it in every later session
            shutil.rmtree(root)


def _unchain(root: Path) -> None:
    """Remove the chain root/d/d/.../d bottom-up, one descriptor and no recursion (only for cleaning up)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.open(root, flags)
    depth = 0
    while True:
        try:
            sub = os.open("d", flags, dir_fd=fd)
        except FileNotFoundError:
            break
        os.close(fd)
        fd, depth = sub, depth + 1
    for _ in range(depth):
        for name in os.listdir(fd):
            os.unlink(name, dir_fd=fd)
        parent = os.open("..", flags, dir_fd=fd)
        os.close(fd)
        fd = parent
        os.rmdir("d", dir_fd=fd)
    os.close(fd)


def test_remove_tree_while_the_job_swaps_links(root: Path, outside: Path) -> None:
    before = _outside_state(outside)
    for i in range(50):
        (root / f"d{i}").mkdir()
        (root / f"d{i}" / "f.txt").write_text("x")
    stop = threading.Event()

    def swap() -> None:
        i = 0
        while not stop.is_set():
            name = root / f"d{i % 50}"
            try:
                os.rename(name, root / f"moved{i}")
                os.symlink(outside, name)
            except OSError:
                pass
            i += 1

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        for _ in range(5):
            try:
                finishes(lambda: remove_tree(root))
                break
            except OSError:
                continue  # the job keeps creating entries; the caller would stop it first
    finally:
        stop.set()
        swapper.join(5)
    remove_tree(root)
    assert not root.exists()
    assert _outside_state(outside) == before
