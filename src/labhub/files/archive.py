"""Safe extraction of uploaded folders: tar (plain, gz, bz2, xz) and zip archives, and single files.

The hub runs as root and every uploader is an attacker, so nothing an archive says is trusted:

* every member name passes :func:`check_name` before anything is created, and paths are then built one
  component at a time relative to directory descriptors with ``O_NOFOLLOW`` (and ``O_EXCL|O_CREAT`` for files),
  so no symlink is ever followed and nothing can land outside ``dest``;
* links, devices, FIFOs and other special members are skipped (and reported), never created;
* sizes are counted as bytes are written, never taken from headers, so a lying header or a decompression bomb
  stops at the limit; the decompressed tar stream and each member's headers are bounded as well.

Member modes, owners and timestamps are ignored: files are 0o640, directories 0o750, and the caller sets owner
and final modes once the folder is in place.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import secrets
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

CHUNK = 1 << 20  # copy unit: members are streamed, never held whole in memory
RATIO_FLOOR = 1 << 20  # small archives may always expand to this much, whatever their ratio
MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 64  # path components; tree.walk descends no deeper, so every extracted file stays listable

# What tarfile may read for one member's headers (pax records, GNU long names, sparse maps): legitimate ones
# are a few KiB, and tarfile reads and parses them whole, so a huge one is a memory and CPU bomb.
_HEADER_MAX = 64 << 10
# Decompressed tar bytes allowed per entry beyond the data written: headers, padding, skipped members' data.
_ENTRY_OVERHEAD = 8 << 10
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# C0, DEL and C1 controls, line/paragraph separators, and bidi controls (which make "gpj.exe" read as
# "exe.jpg" in a listing).
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_DRIVE = re.compile("[A-Za-z]:")

# Everything reading a damaged archive can raise; only reads are wrapped, so a failing write (a full disk)
# still surfaces as the server error it is.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,  # includes RecursionError: tarfile follows chained pax headers recursively
)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one upload may put on disk. Every limit is checked against bytes actually written."""

    max_file_bytes: int  # one member's size
    max_total_bytes: int  # everything extracted in this call
    max_files: int  # regular files extracted in this call; entries of any kind are capped at 2 * max_files + 1000
    max_ratio: float = 100.0  # extracted bytes / archive bytes, with a floor of RATIO_FLOOR


@dataclass
class Report:
    """What an extraction wrote: regular files, their bytes, and one "name: why" line per skipped member."""

    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


class ArchiveError(Exception):
    """The upload is refused; str() names the member and the reason, fit to show the user.

    ``too_large`` is True when a size/count/ratio limit was hit (the API answers 413), else False (422).
    """

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def kind(path: Path) -> Literal["tar", "zip"] | None:
    """Say "zip" or "tar" (plain, gzip, bzip2 or xz), judged by content, never by file name; None for anything else.

    A tar is recognised by tarfile parsing its first header through the same reader :func:`extract` uses, so
    whatever this calls a tar, extract opens the same way.
    """
    with open(path, "rb") as raw:
        if raw.read(4) in (b"PK\x03\x04", b"PK\x05\x06"):  # a local file header, or the end record of an empty zip
            return "zip"
        raw.seek(0)
        try:
            with _decompressed(raw) as inner:
                tarfile.open(fileobj=_Guard(inner, cap=2 * _HEADER_MAX), mode="r:")
        except ArchiveError:
            return "tar"  # a tar whose first header is hostile: extract will say why
        except _READ_ERRORS:
            return None
    return "tar"


def check_name(name: str) -> str:
    """The safe relative POSIX path for a member or uploaded file name, or raise ArchiveError (not too_large).

    ``./`` components, empty components and a trailing ``/`` are dropped ("./a//b/" is "a/b"). Refused: empty
    names, absolute paths, drive letters, backslashes, ``..``, control/bidi characters, names that are not valid
    UTF-8, components whose NFKC form yields ``.``, ``..``, ``/``, ``\\`` or a control character (so no later
    normalisation can turn them into a traversal), components over 255 bytes, names over 4096 bytes, and more
    than MAX_DEPTH components.
    """
    return "/".join(_parts(name))


def extract(archive: Path, dest: Path, limits: Limits, *, strip_top: bool = False) -> Report:
    """Extract ``archive`` into ``dest``, an existing empty directory, and report what was written.

    Raises ArchiveError for a refused archive (a hostile or duplicate name, corruption, truncation, a limit);
    ``dest`` may then hold part of the archive and is the caller's to delete. Nothing is ever created outside
    ``dest``. Symlinks, hard links, devices, FIFOs and other special members are skipped and reported, as are
    macOS metadata (``__MACOSX/``, ``._*``). With ``strip_top``, when every member lies under one top-level
    directory, that directory's contents become ``dest``'s.
    """
    what = kind(archive)
    if what is None:
        raise ArchiveError("not a tar or zip archive")
    ratio_cap = max(int(limits.max_ratio * os.stat(archive).st_size), RATIO_FLOOR)
    job = _Extraction(dest, limits, ratio_cap)
    try:
        if what == "zip":
            _extract_zip(archive, job)
        else:
            _extract_tar(archive, job)
        if strip_top:
            job.strip_top()
    finally:
        job.close()
    return job.report


def save_file(src: BinaryIO, dest: Path, name: str, limits: Limits) -> Report:
    """Stream one uploaded file to ``dest/<check_name(name)>``, creating missing directories below ``dest``.

    The same limits apply as for an archive (the ratio does not). Raises ArchiveError for a refused name, an
    existing file or a directory in the way, or a limit; a partly written file is removed. Errors reading
    ``src`` propagate unchanged.
    """
    parts = _parts(name)
    job = _Extraction(dest, limits, ratio_cap=None)
    try:
        job.write(parts, src.read, read_errors=(), keep_partial=False)
    finally:
        job.close()
    return job.report


def _parts(name: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """check_name's work, as components; () for the folder itself ("." or "./") when ``allow_root``."""
    if not isinstance(name, str) or not name:
        raise ArchiveError("empty name")
    shown = _show(name)
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # tarfile and os.listdir keep undecodable bytes as lone surrogates
        raise ArchiveError(f"{shown}: not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise ArchiveError(f"{shown}: name longer than {MAX_NAME_BYTES} bytes")
    if _BAD_CHARS.search(name):
        raise ArchiveError(f"{shown}: control characters are not allowed in names")
    if "\\" in name:
        raise ArchiveError(f"{shown}: backslashes are not allowed in names")
    if name.startswith("/"):
        raise ArchiveError(f"{shown}: absolute paths are not allowed")
    if _DRIVE.match(name):
        raise ArchiveError(f"{shown}: drive letters are not allowed")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    for i, part in enumerate(parts):
        if part == "..":
            raise ArchiveError(f"{shown}: '..' is not allowed in names")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ArchiveError(f"{shown}: a path component is longer than {MAX_COMPONENT_BYTES} bytes")
        folded = unicodedata.normalize("NFKC", part)
        if folded != part and (
            folded in (".", "..")
            or "/" in folded
            or "\\" in folded
            or _BAD_CHARS.search(folded)
            or (i == 0 and _DRIVE.match(folded))
        ):
            raise ArchiveError(f"{shown}: {_show(part)} normalises to {_show(folded)}")
    if not parts:
        if allow_root:
            return ()
        raise ArchiveError(f"{shown}: empty name")
    if len(parts) > MAX_DEPTH:
        raise ArchiveError(f"{shown}: more than {MAX_DEPTH} levels deep")
    return parts


def _show(name: str) -> str:
    """A name fit for an error message: quoted, escaped, and cut short."""
    return repr(name[:200] + "…" if len(name) > 200 else name)


class _Tree:
    """Directories and files created below one directory descriptor, one component at a time, never via a link."""

    def __init__(self, dest: Path) -> None:
        self.fd = os.open(dest, _DIR_FLAGS)
        # Members come grouped by directory, so keeping the last parent open saves re-walking it for each file.
        self._last: tuple[tuple[str, ...], int] | None = None

    def close(self) -> None:
        self.forget()
        os.close(self.fd)

    def forget(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None

    def directory(self, parts: tuple[str, ...]) -> int:
        """The descriptor of ``dest/<parts>``, made (0o750) where missing; it stays owned by this object."""
        if not parts:
            return self.fd
        if self._last is not None and self._last[0] == parts:
            return self._last[1]
        self.forget()
        fd = self.fd
        try:
            for i, part in enumerate(parts):
                try:
                    os.mkdir(part, 0o750, dir_fd=fd)
                    made = True
                except FileExistsError:
                    made = False
                try:
                    sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:  # ENOTDIR: a file stands there; ELOOP: a symlink
                    where = _show("/".join(parts[: i + 1]))
                    raise ArchiveError(f"{where} is not a directory ({exc.strerror})") from None
                if made:
                    os.fchmod(sub, 0o750)  # exact, whatever the umask
                if fd != self.fd:
                    os.close(fd)
                fd = sub
        except BaseException:
            if fd != self.fd:
                os.close(fd)
            raise
        self._last = (parts, fd)
        return fd

    def create(self, parts: tuple[str, ...]) -> int:
        """A new file ``dest/<parts>`` (0o640) open for writing; O_EXCL, so an existing name is refused."""
        parent = self.directory(parts[:-1])
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, 0o640, dir_fd=parent)
        except FileExistsError:
            raise ArchiveError(f"{_show('/'.join(parts))} already exists") from None
        os.fchmod(fd, 0o640)
        return fd


class _Extraction:
    """One call's bookkeeping: names seen, limits spent, the top-level directory for strip_top."""

    def __init__(self, dest: Path, limits: Limits, ratio_cap: int | None) -> None:
        self.limits = limits
        self.ratio_cap = ratio_cap
        self.entry_cap = 2 * limits.max_files + 1000
        self.written_cap = min(limits.max_total_bytes, ratio_cap if ratio_cap is not None else limits.max_total_bytes)
        self.report = Report()
        self.tree = _Tree(dest)
        self._entries = 0
        # Normalised path -> "file" | "dir" | "implicit" (a parent of some member) | "other" (a skipped member).
        self._seen: dict[str, str] = {}
        self._top: str | None = None
        self._one_top = True

    def close(self) -> None:
        self.tree.close()

    def admit(self, name: str, what: Literal["file", "dir", "other"]) -> tuple[str, ...] | None:
        """Check one member; its components to create, or None when it is skipped (and reported if worth it)."""
        self._entries += 1
        if self._entries > self.entry_cap:
            raise ArchiveError(f"the archive has more than {self.entry_cap:,} entries", too_large=True)
        parts = _parts(name, allow_root=(what == "dir"))
        if not parts:
            return None  # "./", the folder itself
        if parts[0] == "__MACOSX" or parts[-1].startswith("._"):
            self.report.skipped.append(f"{'/'.join(parts)}: macOS metadata")
            return None
        self._claim(parts, what)
        if self._top is None:
            self._top = parts[0]
        if parts[0] != self._top or (len(parts) == 1 and what != "dir"):
            self._one_top = False
        return parts

    def _claim(self, parts: tuple[str, ...], what: str) -> None:
        # Keys are NFKC-normalised so that two names a user (or a later tool) cannot tell apart are one name.
        keys = [unicodedata.normalize("NFKC", part) for part in parts]
        for i in range(1, len(parts)):
            key = "/".join(keys[:i])
            seen = self._seen.setdefault(key, "implicit")
            if seen in ("file", "other"):
                raise ArchiveError(f"{_show('/'.join(parts))}: {_show('/'.join(parts[:i]))} is not a directory")
        key = "/".join(keys)
        seen = self._seen.get(key)
        if seen is not None and not (what == "dir" and seen == "implicit"):
            raise ArchiveError(f"{_show('/'.join(parts))}: duplicate name in the archive")
        self._seen[key] = what

    def skip(self, parts: tuple[str, ...], why: str) -> None:
        self.report.skipped.append(f"{'/'.join(parts)}: {why}")

    def write(
        self,
        parts: tuple[str, ...],
        read: Callable[[int], bytes],
        *,
        read_errors: tuple[type[BaseException], ...],
        keep_partial: bool = True,
    ) -> None:
        """Create ``parts`` and copy ``read``'s bytes into it, spending the limits before each chunk is written.

        On an error the partial file stays (the caller deletes the staging directory) unless not
        ``keep_partial``; a file that already existed is never touched (O_EXCL refused it).
        """
        name = "/".join(parts)
        limits, report = self.limits, self.report
        if report.files >= limits.max_files:
            raise ArchiveError(f"{_show(name)}: more than {limits.max_files:,} files", too_large=True)
        report.files += 1
        fd = self.tree.create(parts)
        try:
            self._copy(name, read, fd, read_errors)
        except BaseException:
            if not keep_partial:
                # The parent is still the tree's cached descriptor: create() just opened it.
                os.unlink(parts[-1], dir_fd=self.tree.directory(parts[:-1]))
            raise
        finally:
            os.close(fd)

    def _copy(
        self, name: str, read: Callable[[int], bytes], fd: int, read_errors: tuple[type[BaseException], ...]
    ) -> None:
        written = 0
        while True:
            try:
                chunk = read(CHUNK)
            except read_errors as exc:
                raise ArchiveError(f"{_show(name)}: corrupt or truncated archive ({exc})") from None
            if not chunk:
                return
            self._spend(name, written, len(chunk))
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            written += len(chunk)

    def _spend(self, name: str, written: int, n: int) -> None:
        limits = self.limits
        if written + n > limits.max_file_bytes:
            raise ArchiveError(f"{_show(name)}: larger than {limits.max_file_bytes:,} bytes", too_large=True)
        total = self.report.bytes + n
        if total > limits.max_total_bytes:
            raise ArchiveError(f"{_show(name)}: the folder exceeds {limits.max_total_bytes:,} bytes", too_large=True)
        if self.ratio_cap is not None and total > self.ratio_cap:
            raise ArchiveError(
                f"{_show(name)}: the archive expands to more than {self.ratio_cap:,} bytes "
                f"({limits.max_ratio:g} times its size); refused as a likely decompression bomb",
                too_large=True,
            )
        self.report.bytes = total

    def strip_top(self) -> None:
        """Move the single top-level directory's contents up into dest, if there is exactly one."""
        if not self._one_top or self._top is None:
            return
        self.tree.forget()
        dest = self.tree.fd
        try:
            top = os.open(self._top, _DIR_FLAGS, dir_fd=dest)
        except FileNotFoundError:
            return  # every member under it was skipped
        try:
            children = os.listdir(top)
            # First move the top aside, so a child of the same name ("a/a") can take its place.
            aside = "." + secrets.token_hex(8)
            while aside in children:
                aside = "." + secrets.token_hex(8)
            os.rename(self._top, aside, src_dir_fd=dest, dst_dir_fd=dest)
            for child in children:
                os.rename(child, child, src_dir_fd=top, dst_dir_fd=dest)
        finally:
            os.close(top)
        os.rmdir(aside, dir_fd=dest)


def _zip_kind(info: zipfile.ZipInfo) -> tuple[Literal["file", "dir", "other"], str]:
    fmt = stat.S_IFMT(info.external_attr >> 16)  # Unix mode, where the creator recorded one
    if fmt == stat.S_IFLNK:
        return "other", "symbolic link"
    if fmt == stat.S_IFDIR or info.is_dir() or info.external_attr & 0x10:  # 0x10: MS-DOS directory attribute
        return "dir", ""
    if fmt not in (0, stat.S_IFREG):
        return "other", f"not a regular file (mode {fmt:#o})"
    return "file", ""


def _extract_zip(archive: Path, job: _Extraction) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except _READ_ERRORS as exc:
        raise ArchiveError(f"corrupt zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > job.entry_cap:
            raise ArchiveError(f"the archive has more than {job.entry_cap:,} entries", too_large=True)
        for info in infos:
            # orig_filename: zipfile cuts .filename at a NUL, which would hide the trick from check_name.
            what, why = _zip_kind(info)
            parts = job.admit(info.orig_filename, what)
            if parts is None:
                continue
            if what == "dir":
                job.tree.directory(parts)
            elif what == "other":
                job.skip(parts, why)
            else:
                name = _show("/".join(parts))
                if info.flag_bits & 0x1:
                    raise ArchiveError(f"{name}: encrypted zip members are not supported")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    # zipfile inflates bzip2 and lzma members without an output bound: 177 bytes of bzip2 are
                    # 200 MiB in one call, before any limit of ours can look.
                    raise ArchiveError(f"{name}: zip compression method {info.compress_type} is not supported")
                try:
                    src = zf.open(info)
                except _READ_ERRORS as exc:
                    raise ArchiveError(f"{name}: corrupt zip archive ({exc})") from None
                with src:
                    job.write(parts, src.read, read_errors=_READ_ERRORS)


def _tar_skip_reason(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    return f"unsupported tar member type {member.type!r}"


def _extract_tar(archive: Path, job: _Extraction) -> None:
    stream_cap = job.written_cap + RATIO_FLOOR + job.entry_cap * _ENTRY_OVERHEAD
    with open(archive, "rb") as raw, _decompressed(raw) as inner:
        guard = _Guard(inner, stream_cap)
        try:
            tf = tarfile.open(fileobj=guard, mode="r:")
        except _READ_ERRORS as exc:
            raise ArchiveError(f"corrupt tar archive ({exc})") from None
        while True:
            guard.header_bytes = 0
            try:
                member = tf.next()
            except _READ_ERRORS as exc:
                raise ArchiveError(f"corrupt tar archive ({exc})") from None
            if member is None:
                break
            tf.members.clear()  # tarfile remembers every member for random access we never use
            if member.isdir():
                parts = job.admit(member.name, "dir")
                if parts is not None:
                    job.tree.directory(parts)
            elif member.isreg():
                parts = job.admit(member.name, "file")
                if parts is not None:
                    src = tf.extractfile(member)
                    assert src is not None  # a regular member always has a file object
                    guard.in_data = True
                    try:
                        job.write(parts, src.read, read_errors=_READ_ERRORS)
                    finally:
                        guard.in_data = False
            else:
                parts = job.admit(member.name, "other")
                if parts is not None:
                    job.skip(parts, _tar_skip_reason(member))
        # tarfile ends quietly at a truncated or garbled header; only a zero block is a real end of archive.
        if guard.last != _ZERO_BLOCK:
            raise ArchiveError("truncated or corrupt tar archive (no end-of-archive marker)")
        guard.in_data = True
        try:
            while guard.read(CHUNK):  # to the end, so gzip/bzip2/xz verify their checksums
                pass
        except _READ_ERRORS as exc:
            raise ArchiveError(f"corrupt tar archive ({exc})") from None


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """``raw`` as a decompressed stream, by magic bytes; plain tars pass through."""
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw, "rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, "rb", format=lzma.FORMAT_XZ)
    return raw


class _Guard:
    """The decompressed tar stream as tarfile sees it: forward only, counted, with bounded header reads.

    tarfile reads a member's pax/GNU headers in single reads of whatever size they claim, so those reads (all
    reads while ``in_data`` is False) are capped at _HEADER_MAX per member; the whole stream, data included, is
    capped at ``cap``. Forward seeks read and discard, so every decompressed byte is counted. A backward seek
    never happens when members are read in order, and would re-decompress from the start, so it is refused.
    """

    def __init__(self, inner: BinaryIO, cap: int) -> None:
        self._inner = inner
        self._cap = cap
        self._pos = 0
        self.header_bytes = 0
        self.in_data = False
        self.last = b""  # the last read: tells a real end-of-archive block from a truncated one

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            raise ArchiveError("corrupt tar archive (unbounded read)")
        if not self.in_data:
            self.header_bytes += n
            if self.header_bytes > _HEADER_MAX:
                raise ArchiveError(f"a tar member's headers exceed {_HEADER_MAX:,} bytes", too_large=True)
        data = self._inner.read(n)
        self._pos += len(data)
        if self._pos > self._cap:
            raise ArchiveError(f"the archive expands to more than {self._cap:,} bytes", too_large=True)
        self.last = data
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            pos += self._pos
        elif whence != os.SEEK_SET:
            raise ArchiveError("corrupt tar archive (seek from end)")
        if pos < self._pos:
            raise ArchiveError("corrupt tar archive (seeks backwards)")
        while self._pos < pos:
            data = self._inner.read(min(CHUNK, pos - self._pos))
            if not data:
                break  # past the end: tarfile's next read comes back short and it reports the truncation
            self._pos += len(data)
            if self._pos > self._cap:
                raise ArchiveError(f"the archive expands to more than {self._cap:,} bytes", too_large=True)
        return self._pos
