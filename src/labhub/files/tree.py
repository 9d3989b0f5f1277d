"""Reading and removing a directory that an untrusted account owns and may change while the hub reads it.

A job's output directory belongs to the job's account, which can swap a directory for a symlink between two
system calls, plant symlinks to /etc/shadow, FIFOs that block readers, hard links to other people's files, a
million files or a 100 GB sparse file. So, here:

* every path is walked one component at a time relative to the parent's descriptor with ``O_NOFOLLOW``; a
  symlink anywhere below ``root`` is never followed, and a directory swapped for one is simply not entered;
* only regular files are listed, opened or archived, checked with ``fstat`` on the opened descriptor (what was
  opened is what was checked); opens use ``O_NONBLOCK``, so a FIFO cannot hang the hub;
* with ``uid``, only files owned by that account count: a hard link to someone else's file keeps its owner;
* listings are bounded (entries, entries examined, depth); archives can be bounded in bytes.

``root`` itself is opened with ``O_NOFOLLOW`` too, but the directories above it are trusted: the caller must
make sure the account cannot write to root's parent.
"""

from __future__ import annotations

import errno
import gzip
import os
import secrets
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .archive import CHUNK, MAX_DEPTH, MAX_NAME_BYTES, ArchiveError, check_name

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Entries of any kind examined per regular file listed: bounds the work a directory full of symlinks, FIFOs or
# other people's files can cause.
_SCAN_FACTOR = 4
# remove_tree descends this deep, then moves what lies below up to the top, so an arbitrarily deep tree needs
# neither deep recursion nor a descriptor per level.
_REMOVE_DEPTH = 128


@dataclass(frozen=True, slots=True)
class Entry:
    """A regular file below the root: relative POSIX path, size in bytes (st_size) and mtime."""

    path: str
    size: int
    mtime: float


class TreeError(Exception):
    """The root or path cannot be read as asked; str() is fit to show the user.

    ``not_found``: the path names no regular file (of that account) there, or the root is missing (404);
    ``too_large``: a size limit was hit (413); neither: the path itself was refused (422).
    """

    def __init__(self, message: str, *, not_found: bool = False, too_large: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found
        self.too_large = too_large


def walk(root: Path, *, uid: int | None = None, max_entries: int = 10_000) -> tuple[list[Entry], bool]:
    """The regular files below ``root`` (owned by ``uid`` when given), sorted by path, and whether it stopped early.

    ``truncated`` is True when more than ``max_entries`` files were found, when more than 4 * max_entries + 1000
    entries of any kind had to be examined, or when a directory lies deeper than MAX_DEPTH levels; which files
    are then returned is arbitrary. Symlinks, FIFOs, devices and sockets are left out, as are names that
    :func:`check_name` refuses (control characters, invalid UTF-8...), since open_file could not open them.
    Raises TreeError (not_found) if ``root`` is not a directory.
    """
    walker = _Walker(uid, max_entries)
    fd = _open_root(root)
    try:
        entries = [Entry(path, st.st_size, st.st_mtime) for path, st in walker.files(fd)]
    finally:
        os.close(fd)
    entries.sort(key=lambda entry: entry.path)
    return entries, walker.truncated


def open_file(root: Path, relpath: str, *, uid: int | None = None) -> BinaryIO:
    """``root/<relpath>`` opened for reading, if it is a regular file (owned by ``uid`` when given).

    Each component is opened relative to its parent with O_NOFOLLOW; the file with O_NONBLOCK|O_NOCTTY, then
    checked with fstat, so what is returned is the file that was checked. Raises TreeError: not_found for a
    missing file, a symlink, a directory, a FIFO or another account's file; plain for a refused ``relpath``.
    """
    try:
        parts = check_name(relpath).split("/")
    except ArchiveError as exc:
        raise TreeError(str(exc)) from None
    fd = _open_root(root)
    try:
        for part in parts[:-1]:
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError:  # missing, a file, or a symlink (ELOOP): not a directory we enter
                raise TreeError(f"{relpath!r}: no such file", not_found=True) from None
            os.close(fd)
            fd = sub
        try:
            leaf = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
        except OSError:
            raise TreeError(f"{relpath!r}: no such file", not_found=True) from None
    finally:
        os.close(fd)
    try:
        st = os.fstat(leaf)
        if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
            raise TreeError(f"{relpath!r}: no such file", not_found=True)
        os.set_blocking(leaf, True)
        return os.fdopen(leaf, "rb")
    except BaseException:
        os.close(leaf)
        raise


def usage(root: Path, *, uid: int | None = None, max_entries: int = 100_000) -> tuple[int, int]:
    """(bytes, files) of the regular files below ``root``, by walk's rules.

    Bytes are disk usage, ``st_blocks * 512``, each inode counted once: a 100 GB sparse file costs what it
    occupies, and a file hard-linked many times costs once. Files are counted per path. Both stop growing
    after ``max_entries`` files (or when walk would report truncation), so they are then lower bounds.
    """
    walker = _Walker(uid, max_entries)
    fd = _open_root(root)
    inodes: set[tuple[int, int]] = set()
    used = files = 0
    try:
        for _, st in walker.files(fd):
            files += 1
            if (st.st_dev, st.st_ino) not in inodes:
                inodes.add((st.st_dev, st.st_ino))
                used += st.st_blocks * 512
    finally:
        os.close(fd)
    return used, files


def write_targz(
    root: Path,
    out: BinaryIO,
    *,
    uid: int | None = None,
    prefix: str = "",
    max_entries: int = 10_000,
    max_bytes: int | None = None,
) -> int:
    """Stream a tar.gz of the regular files below ``root`` to ``out``; return the bytes of content added.

    Files are those :func:`walk` lists (at most ``max_entries``), each reopened with :func:`open_file`'s rules
    (one that vanished or changed into something else meanwhile is left out). Members are named
    ``prefix + path``, mode 0o644, uid/gid 0, no user names, the file's mtime. A file's size is taken when it
    is opened; if it shrinks while being read it is padded with NULs, if it grows the rest is cut off, so the
    archive stays valid. ``out`` only needs ``write``: nothing is seeked, nothing is built in memory or on disk.

    With ``max_bytes``, raises TreeError (too_large) before writing anything if the listed files are larger,
    and leaves out any file that grew past the remaining budget since.
    """
    entries, _ = walk(root, uid=uid, max_entries=max_entries)
    if max_bytes is not None and sum(entry.size for entry in entries) > max_bytes:
        raise TreeError(f"the files are larger than {max_bytes:,} bytes", too_large=True)
    added = 0
    # Our own GzipFile rather than mode "w|gz": tarfile's stream compresses at level 9, which costs about
    # twice the CPU of level 6 for a percent or two of size; mtime=0 and no file name keep the header neutral.
    with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=out, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:
            for entry in entries:
                try:
                    src = open_file(root, entry.path, uid=uid)
                except TreeError:
                    continue
                with src:
                    st = os.fstat(src.fileno())
                    if max_bytes is not None and added + st.st_size > max_bytes:
                        continue
                    info = tarfile.TarInfo(prefix + entry.path)
                    info.size = st.st_size
                    info.mtime = max(0, int(st.st_mtime))
                    info.mode = 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, _Exactly(src, st.st_size))
                    added += st.st_size
    return added


def remove_tree(root: Path) -> None:
    """Delete ``root`` and everything below it without following any symlink; a missing root is fine.

    A symlink or file standing in root's place is itself removed, never its target. Everything below is
    removed relative to directory descriptors opened with O_NOFOLLOW|O_DIRECTORY|O_NONBLOCK, so an entry
    swapped for a symlink (to a directory or a FIFO) is unlinked, not entered, and nothing blocks. Depth costs
    neither recursion nor descriptors. The account should be stopped first: files it keeps creating make the
    final rmdir fail (OSError) after a few attempts.
    """
    # Not shutil.rmtree: on Python 3.11 it opens each subdirectory with plain O_RDONLY, which follows a symlink
    # swapped in after its lstat (it then refuses to delete, but a FIFO behind the link blocks it forever);
    # it also lists whole directories into memory and recurses one level per directory.
    try:
        fd = os.open(root, _DIR_FLAGS | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError:  # ELOOP or ENOTDIR: a symlink or a file stands there
        try:
            os.unlink(root)
        except FileNotFoundError:
            pass
        return
    try:
        for attempt in range(3):
            _empty(fd, fd, 0)
            try:
                os.rmdir(root)
                return
            except FileNotFoundError:
                return
            except OSError:
                if attempt == 2:
                    raise
    finally:
        os.close(fd)


class _Walker:
    """Regular files below a directory descriptor, depth first, within the bounds walk() documents."""

    def __init__(self, uid: int | None, max_entries: int) -> None:
        self.uid = uid
        self.max_entries = max_entries
        self.budget = _SCAN_FACTOR * max_entries + 1000
        self.found = 0
        self.truncated = False

    def files(self, fd: int, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, os.stat_result]]:
        subdirs: list[str] = []
        with os.scandir(fd) as it:
            for item in it:
                if self.budget <= 0:
                    self.truncated = True
                    return
                self.budget -= 1
                try:
                    check_name(item.name)
                except ArchiveError:
                    continue
                path = prefix + item.name
                if len(path.encode()) > MAX_NAME_BYTES:
                    continue
                try:
                    st = os.stat(item.name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed meanwhile
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append(item.name)
                elif stat.S_ISREG(st.st_mode) and (self.uid is None or st.st_uid == self.uid):
                    if self.found >= self.max_entries:
                        self.truncated = True
                        return
                    self.found += 1
                    yield path, st
        # Subdirectories after this directory's own files, so the scandir iterator is closed before descending.
        for name in subdirs:
            if depth + 1 >= MAX_DEPTH:  # files in it would have more than MAX_DEPTH components
                self.truncated = True
                continue
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:  # replaced by a symlink or removed since: not followed
                continue
            try:
                yield from self.files(sub, f"{prefix}{name}/", depth + 1)
            finally:
                os.close(sub)
            if self.truncated and (self.budget <= 0 or self.found >= self.max_entries):
                return


def _open_root(root: Path) -> int:
    try:
        return os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise TreeError(f"{str(root)!r} does not exist", not_found=True) from None
    except OSError:
        raise TreeError(f"{str(root)!r} is not a directory", not_found=True) from None


class _Exactly:
    """Exactly ``size`` bytes of a file that may change while it is read: cut if it grew, NUL-padded if it shrank."""

    def __init__(self, src: BinaryIO, size: int) -> None:
        self._src = src
        self._left = size

    def read(self, n: int) -> bytes:
        n = min(n, self._left)
        data = self._src.read(n)
        while len(data) < n:
            more = self._src.read(n - len(data))
            if not more:
                data += bytes(n - len(data))
                break
            data += more
        self._left -= n
        return data


def _empty(top: int, fd: int, depth: int) -> None:
    """Remove everything in directory ``fd``; below _REMOVE_DEPTH, move subtrees up into ``top`` instead."""
    while True:
        # In batches: a directory of a million names is never listed into memory at once.
        with os.scandir(fd) as it:
            batch = [item.name for _, item in zip(range(1000), it, strict=False)]
        if not batch:
            return
        for name in batch:
            try:
                os.unlink(name, dir_fd=fd)
                continue
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                pass
            if depth >= _REMOVE_DEPTH:
                # Renamed into the top, it is emptied there on a later pass of the top's loop.
                os.rename(name, "." + secrets.token_hex(8), src_dir_fd=fd, dst_dir_fd=top)
                continue
            try:
                sub = os.open(name, _DIR_FLAGS | os.O_NONBLOCK, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                continue  # swapped for a symlink or a file since the unlink: the next batch unlinks it
            try:
                _empty(top, sub, depth + 1)
            finally:
                os.close(sub)
            try:
                os.rmdir(name, dir_fd=fd)
            except FileNotFoundError:
                pass
