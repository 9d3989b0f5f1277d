"""labhub.files.archive against the uploads an attacker would send, then the ones a user would.

Every hostile archive is built here with tarfile/zipfile (or by hand where those refuse to write it). Each
extraction runs through ``attempt``, which also checks that nothing appeared, vanished or changed outside
``dest`` (a sentinel directory sits next to it).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import os
import resource
import stat
import tarfile
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from labhub.files.archive import (
    RATIO_FLOOR,
    ArchiveError,
    Limits,
    Report,
    check_name,
    extract,
    kind,
    save_file,
)

MiB = 1 << 20
GiB = 1 << 30
LIMITS = Limits(max_file_bytes=50 * MiB, max_total_bytes=50 * MiB, max_files=1000)


@dataclass
class Box:
    """tmp_path laid out as an extraction sees it: dest, a sentinel next to it, and a place for archives."""

    root: Path
    dest: Path
    up: Path

    def outside(self) -> dict[str, tuple[int, str]]:
        """Everything under root but outside dest: path -> (file type, content hash or link target)."""
        seen: dict[str, tuple[int, str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            if here == self.dest:
                dirnames.clear()
                continue
            for name in dirnames + filenames:
                path = here / name
                st = path.lstat()
                if stat.S_ISREG(st.st_mode):
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    digest = os.readlink(path)
                else:
                    digest = ""
                seen[str(path.relative_to(self.root))] = (stat.S_IFMT(st.st_mode), digest)
        return seen

    def written(self) -> dict[str, bytes]:
        """dest's regular files: relative path -> content."""
        return {str(p.relative_to(self.dest)): p.read_bytes() for p in sorted(self.dest.rglob("*")) if p.is_file()}

    def disk_bytes(self) -> int:
        return sum(p.lstat().st_size for p in self.dest.rglob("*"))


@pytest.fixture
def box(tmp_path: Path) -> Box:
    dest = tmp_path / "dest"
    dest.mkdir()
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("keep me")
    up = tmp_path / "up"
    up.mkdir()
    return Box(tmp_path, dest, up)


def attempt(box: Box, archive: Path, limits: Limits = LIMITS, **kwargs: bool) -> Report | ArchiveError:
    """extract(), returning its report or its ArchiveError, after checking nothing changed outside dest."""
    before = box.outside()
    try:
        result: Report | ArchiveError = extract(archive, box.dest, limits, **kwargs)
    except ArchiveError as exc:
        result = exc
    assert box.outside() == before, "something changed outside dest"
    return result


def refused(result: Report | ArchiveError, *, too_large: bool = False, says: str = "") -> ArchiveError:
    assert isinstance(result, ArchiveError), f"accepted: {result}"
    assert result.too_large is too_large, str(result)
    assert says in str(result)
    return result


# --- building archives -------------------------------------------------------------------------------------


def reg(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o6777  # setuid, setgid, world-writable: must all be ignored
    return info, data


def special(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    if type_ in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    return info, b""


def directory(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return special(name, tarfile.DIRTYPE)


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def make_zip(
    path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def tiny_tar(path: Path, count: int) -> Path:
    """A plain tar of ``count`` empty regular files, fast: one ustar header patched per name."""
    template = bytearray(tarfile.TarInfo("f000000").tobuf(tarfile.USTAR_FORMAT))
    with open(path, "wb") as out:
        for i in range(count):
            header = bytearray(template)
            header[0:7] = b"f%06d" % i
            header[148:156] = b" " * 8
            header[148:156] = b"%06o\0 " % sum(header)
            out.write(header)
        out.write(bytes(1024))
    return path


def unique_tmp() -> Path:
    return Path(tempfile.gettempdir()) / f"labhub-evil-{uuid.uuid4().hex}"


# --- names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "./",
        "/",
        "../evil",
        "a/../../x",
        "a/..",
        "/etc/x",
        "C:evil",
        "c:/windows",
        "a\\b",
        "..\\evil",
        "a\x00b",
        "a\nb",
        "a\x1bb",
        "a\x7fb",
        "a\x85b",
        "gpj.\u202eexe",
        "\u2025/evil",
        "a/\u2025",
        "\uff0e\uff0e/evil",
        "a\uff0fb",
        "a\uff3cb",
        "\u2024",
        "C\uff1a",
        "x" * 256,
        "a/" * 2100,
        "d/" * 64 + "f",
        "bad\udcffutf8",
    ],
)
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(ArchiveError) as info:
        check_name(name)
    assert info.value.too_large is False


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("a.txt", "a.txt"),
        ("./x", "x"),
        ("a//b/", "a/b"),
        ("./a/./b", "a/b"),
        ("café/naïve.txt", "café/naïve.txt"),
        ("...", "..."),
        ("a..b", "a..b"),
        ("x" * 255, "x" * 255),
        ("d/" * 63 + "f", "d/" * 63 + "f"),
        ("run:1.txt", "run:1.txt"),
    ],
)
def test_check_name_accepts(name: str, canonical: str) -> None:
    assert check_name(name) == canonical


# --- tar abuse -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "a/../../x", "ABSOLUTE", "./../evil", "a/\u2025/evil", "a\uff0f..\uff0fx"])
def test_tar_traversal_refused(box: Box, name: str) -> None:
    absolute = unique_tmp()
    name = name.replace("ABSOLUTE", str(absolute))
    archive = make_tar(box.up / "slip.tar", [reg("ok.txt"), reg(name, b"pwned")])
    refused(attempt(box, archive))
    assert not absolute.exists()
    assert not (box.root / "evil").exists() and not (box.root / "x").exists()


def test_tar_symlink_then_write_through_it(box: Box) -> None:
    target = unique_tmp()
    target.mkdir()
    try:
        archive = make_tar(
            box.up / "link.tar",
            [special("link", tarfile.SYMTYPE, str(target)), reg("link/pwned", b"pwned")],
        )
        refused(attempt(box, archive), says="is not a directory")
        assert list(target.iterdir()) == []
        assert not (box.dest / "link").is_symlink()
    finally:
        target.rmdir()


def test_tar_links_devices_and_fifos_are_skipped(box: Box) -> None:
    archive = make_tar(
        box.up / "special.tar",
        [
            reg("real.txt", b"real"),
            special("passwd", tarfile.LNKTYPE, "/etc/passwd"),
            special("again", tarfile.LNKTYPE, "real.txt"),
            special("up", tarfile.SYMTYPE, "../sentinel"),
            special("null", tarfile.CHRTYPE),
            special("disk", tarfile.BLKTYPE),
            special("pipe", tarfile.FIFOTYPE),
            special("volume", b"V"),  # a GNU volume header, unknown to tarfile
        ],
    )
    report = attempt(box, archive)
    assert isinstance(report, Report)
    assert report.files == 1
    assert box.written() == {"real.txt": b"real"}
    assert [p.name for p in box.dest.iterdir()] == ["real.txt"]
    passwd = os.stat("/etc/passwd")
    assert (box.dest / "real.txt").stat().st_ino != passwd.st_ino
    assert report.skipped == [
        "passwd: hard link",
        "again: hard link",
        "up: symbolic link",
        "null: character device",
        "disk: block device",
        "pipe: FIFO",
        "volume: unsupported tar member type b'V'",
    ]


def test_tar_member_modes_are_ignored(box: Box) -> None:
    archive = make_tar(box.up / "modes.tar", [directory("d"), reg("d/tool", b"#!/bin/sh\n")])
    assert isinstance(attempt(box, archive), Report)
    assert stat.S_IMODE((box.dest / "d").stat().st_mode) == 0o750
    assert stat.S_IMODE((box.dest / "d" / "tool").stat().st_mode) == 0o640


@pytest.mark.parametrize(
    "names",
    [
        [("a.txt", "f"), ("a.txt", "f")],
        [("./a.txt", "f"), ("a.txt", "f")],
        [("a", "f"), ("a", "d")],
        [("a", "d"), ("a", "f")],
        [("a", "f"), ("a/b", "f")],
        [("a/b", "f"), ("a", "f")],
        [("a", "d"), ("a/", "d")],
        [("caf\u00e9", "f"), ("cafe\u0301", "f")],  # NFC and NFD spellings of one name
        [("\ufb01le", "f"), ("file", "f")],  # the "fi" ligature is "fi" under NFKC
        [("link", "l"), ("link", "f")],
    ],
)
def test_tar_duplicates_refused(box: Box, names: list[tuple[str, str]]) -> None:
    members = []
    for name, what in names:
        if what == "f":
            members.append(reg(name))
        elif what == "d":
            members.append(directory(name))
        else:
            members.append(special(name, tarfile.SYMTYPE, "/etc"))
    archive = make_tar(box.up / "dup.tar", members)
    refused(attempt(box, archive))


def test_tar_implicit_then_explicit_directory_is_fine(box: Box) -> None:
    archive = make_tar(box.up / "order.tar", [reg("a/b.txt", b"b"), directory("a")])
    assert isinstance(attempt(box, archive), Report)
    assert box.written() == {"a/b.txt": b"b"}


@pytest.mark.parametrize("name", ["a\x00b", "a\nb", "a\x01b", "a\x7fb", "a\x9bb", "a\u2028b"])
def test_tar_control_characters_refused(box: Box, name: str) -> None:
    info, data = reg("placeholder")
    info.pax_headers = {"path": name}  # a pax header carries any byte, NUL included
    archive = make_tar(box.up / "ctl.tar", [(info, data)])
    with tarfile.open(archive) as tar:
        assert tar.getnames() == [name]  # the trick survives tarfile's own parsing
    refused(attempt(box, archive), says="control characters")


def test_tar_invalid_utf8_refused(box: Box) -> None:
    info, data = reg("placeholder")
    archive = box.up / "bytes.tar"
    raw = bytearray(info.tobuf(tarfile.USTAR_FORMAT) + data.ljust(512, b"\0") + bytes(1024))
    raw[0:11] = b"bad\xffname\0\0\0"
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    archive.write_bytes(bytes(raw))
    refused(attempt(box, archive), says="UTF-8")


def test_tar_long_names_refused(box: Box) -> None:
    refused(attempt(box, make_tar(box.up / "c.tar", [reg("x" * 256)])), says="255")
    refused(attempt(box, make_tar(box.up / "n.tar", [reg("/".join(["y" * 200] * 21))])), says="4096")


def test_tar_huge_pax_header_is_refused_before_it_is_read(box: Box) -> None:
    info, data = reg("a.txt")
    info.pax_headers = {"comment": "z" * (8 * MiB)}
    archive = make_tar(box.up / "pax.tar.gz", [(info, data)], mode="w:gz")
    refused(attempt(box, archive), too_large=True, says="headers")


def test_tar_chained_pax_headers_refused(box: Box) -> None:
    # Thousands of pax headers in a row, all read for one member (and parsed by recursion in tarfile).
    pax = tarfile.TarInfo("pax")
    pax.type = tarfile.XHDTYPE
    record = b"12 path=abc\n"
    pax.size = len(record)
    block = pax.tobuf(tarfile.USTAR_FORMAT) + record.ljust(512, b"\0")
    archive = box.up / "chain.tar.gz"
    archive.write_bytes(gzip.compress(block * 20_000 + bytes(1024)))
    refused(attempt(box, archive), too_large=True, says="headers")


def test_tar_gz_bomb_stops_at_the_limit(box: Box) -> None:
    # 2 GiB of zeros in about 2 MiB: gzip members may be concatenated, so one compressed MiB is repeated.
    header, _ = reg("bomb.bin")
    header.size = 2 * GiB
    zeros = gzip.compress(bytes(MiB), 9)
    archive = box.up / "bomb.tar.gz"
    with open(archive, "wb") as out:
        out.write(gzip.compress(header.tobuf(tarfile.PAX_FORMAT)))
        for _ in range(2048):
            out.write(zeros)
        out.write(gzip.compress(bytes(1024)))
    assert archive.stat().st_size < 3 * MiB
    limits = Limits(max_file_bytes=GiB, max_total_bytes=50 * MiB, max_files=10, max_ratio=1e6)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    refused(attempt(box, archive, limits), too_large=True, says="exceeds")
    assert time.monotonic() - started < 10
    assert box.disk_bytes() <= 50 * MiB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 64 * 1024  # KiB: no 2 GiB in memory


def test_tar_gz_bomb_stopped_by_ratio(box: Box) -> None:
    header, _ = reg("bomb.bin")
    header.size = 256 * MiB
    zeros = gzip.compress(bytes(MiB), 9)
    archive = box.up / "ratio.tar.gz"
    archive.write_bytes(gzip.compress(header.tobuf(tarfile.PAX_FORMAT)) + zeros * 256 + gzip.compress(bytes(1024)))
    limits = Limits(max_file_bytes=10 * GiB, max_total_bytes=10 * GiB, max_files=10)
    refused(attempt(box, archive, limits), too_large=True, says="decompression bomb")
    assert box.disk_bytes() <= max(100 * archive.stat().st_size, RATIO_FLOOR)


def test_tar_skipped_member_data_counts_towards_the_stream(box: Box) -> None:
    # A 2 GiB "__MACOSX" file is never written, but decompressing past it is work all the same.
    header, _ = reg("__MACOSX/._bomb")
    header.size = 2 * GiB
    zeros = gzip.compress(bytes(MiB), 9)
    archive = box.up / "skip.tar.gz"
    archive.write_bytes(gzip.compress(header.tobuf(tarfile.PAX_FORMAT)) + zeros * 2048 + gzip.compress(bytes(1024)))
    limits = Limits(max_file_bytes=MiB, max_total_bytes=MiB, max_files=10)
    started = time.monotonic()
    refused(attempt(box, archive, limits), too_large=True, says="expands")
    assert time.monotonic() - started < 10


def test_tar_member_and_total_limits(box: Box) -> None:
    big = make_tar(box.up / "big.tar", [reg("big.bin", os.urandom(3 * MiB))])
    refused(attempt(box, big, Limits(MiB, 10 * MiB, 10)), too_large=True, says="larger than")
    assert box.disk_bytes() <= MiB

    many = make_tar(box.up / "many.tar", [reg(f"f{i}", os.urandom(MiB)) for i in range(3)])
    for child in box.dest.iterdir():
        child.unlink()
    refused(attempt(box, many, Limits(2 * MiB, 2 * MiB + 1, 10)), too_large=True, says="exceeds")
    assert box.disk_bytes() <= 2 * MiB + 1


@pytest.fixture(scope="module")
def hundred_thousand(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tar(tmp_path_factory.mktemp("many") / "many.tar", 100_000)


def test_tar_file_count_limit(box: Box, hundred_thousand: Path) -> None:
    started = time.monotonic()
    refused(attempt(box, hundred_thousand, Limits(MiB, MiB, 10_000)), too_large=True, says="more than 10,000 files")
    assert time.monotonic() - started < 10
    assert len(os.listdir(box.dest)) == 10_000


def test_tar_entry_count_limit_counts_skipped_members(box: Box) -> None:
    archive = make_tar(box.up / "links.tar", [special(f"l{i}", tarfile.SYMTYPE, "/") for i in range(1100)])
    refused(attempt(box, archive, Limits(MiB, MiB, 10)), too_large=True, says="entries")


def test_tar_truncated(box: Box) -> None:
    members = [reg(f"f{i}.bin", os.urandom(64 * 1024)) for i in range(8)]
    whole = make_tar(box.up / "whole.tar.gz", members, mode="w:gz").read_bytes()
    cut = box.up / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    refused(attempt(box, cut), says="corrupt")


def test_tar_without_end_marker(box: Box) -> None:
    # Cut exactly after a member: tarfile alone would call this a complete archive.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in [reg("a.txt", b"a"), reg("b.txt", b"b")]:
            tar.addfile(info, io.BytesIO(data))
        end = buf.tell()
    cut = box.up / "cut.tar"
    cut.write_bytes(buf.getvalue()[:end])
    refused(attempt(box, cut), says="end-of-archive")


def test_tar_garbage_header(box: Box) -> None:
    raw = make_tar(box.up / "ok.tar", [reg("a.txt", b"a"), reg("b.txt", b"b")]).read_bytes()
    bad = box.up / "bad.tar"
    second = raw.index(b"b.txt") // 512 * 512
    bad.write_bytes(raw[:second] + os.urandom(512) + raw[second + 512 :])
    refused(attempt(box, bad), says="corrupt")


def test_not_an_archive(box: Box) -> None:
    text = box.up / "notes.tar.gz"
    text.write_text("just some text, named like an archive\n" * 40)
    refused(attempt(box, text), says="not a tar or zip archive")
    gz = box.up / "data.csv.gz"
    gz.write_bytes(gzip.compress(b"a,b\n1,2\n" * 200))
    refused(attempt(box, gz), says="not a tar or zip archive")
    empty = box.up / "empty.zip"
    empty.write_bytes(b"")
    refused(attempt(box, empty), says="not a tar or zip archive")


def test_kind_reads_content_not_names(box: Box) -> None:
    zip_named_tar = make_zip(box.up / "x.tar.gz", [("a.txt", b"a")])
    tar_named_zip = make_tar(box.up / "x.zip", [reg("a.txt")], mode="w:gz")
    assert kind(zip_named_tar) == "zip"
    assert kind(tar_named_zip) == "tar"
    for mode in ("w", "w:bz2", "w:xz"):
        assert kind(make_tar(box.up / f"k{mode[2:]}", [reg("a")], mode=mode)) == "tar"
    (box.up / "t.txt").write_text("hello")
    assert kind(box.up / "t.txt") is None
    (box.up / "b.bz2").write_bytes(bz2.compress(b"hello" * 300))
    assert kind(box.up / "b.bz2") is None


# --- zip abuse -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "ABSOLUTE", "..\\evil.txt", "\u2025/evil.txt"])
def test_zip_traversal_refused(box: Box, name: str) -> None:
    absolute = unique_tmp()
    name = name.replace("ABSOLUTE", str(absolute))
    archive = make_zip(box.up / "slip.zip", [("ok.txt", b"ok"), (name, b"pwned")])
    refused(attempt(box, archive))
    assert not absolute.exists()
    assert not (box.root / "evil.txt").exists()


def test_zip_nul_in_name_refused(box: Box) -> None:
    # zipfile cuts names at NUL and will not write one, so the bytes are patched in.
    raw = make_zip(box.up / "ok.zip", [("evil.txtQ.jpg", b"x")]).read_bytes()
    nul = box.up / "nul.zip"
    nul.write_bytes(raw.replace(b"evil.txtQ.jpg", b"evil.txt\0.jpg"))
    with zipfile.ZipFile(nul) as zf:
        assert zf.namelist() == ["evil.txt"]  # what a naive extractor would create
    refused(attempt(box, nul), says="control characters")


def test_zip_symlink_and_special_entries_skipped(box: Box) -> None:
    link = zipfile.ZipInfo("link")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    fifo = zipfile.ZipInfo("pipe")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    archive = make_zip(box.up / "link.zip", [(link, b"/etc/passwd"), (fifo, b""), ("real.txt", b"real")])
    report = attempt(box, archive)
    assert isinstance(report, Report)
    assert report.skipped == ["link: symbolic link", "pipe: not a regular file (mode 0o10000)"]
    assert box.written() == {"real.txt": b"real"}
    assert not (box.dest / "link").exists() and not (box.dest / "link").is_symlink()


def test_zip_symlink_then_write_through_it(box: Box) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(box.up / "through.zip", [(link, str(box.root / "sentinel").encode()), ("link/pwned", b"x")])
    refused(attempt(box, archive), says="is not a directory")


def test_zip_duplicates_refused(box: Box) -> None:
    archive = box.up / "dup.zip"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", b"one")
        zf.writestr("a.txt", b"two")
    refused(attempt(box, archive), says="duplicate")
    archive = make_zip(box.up / "filedir.zip", [("a", b"file"), ("a/", b"")])
    refused(attempt(box, archive), says="duplicate")


def _zip_bomb(path: Path, size: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("bomb.bin", "w", force_zip64=True) as member:
            chunk = bytes(MiB)
            for _ in range(size // MiB):
                member.write(chunk)
    return path


def test_zip_bomb_stops_at_the_limit(box: Box) -> None:
    archive = _zip_bomb(box.up / "bomb.zip", 200 * MiB)
    assert archive.stat().st_size < 1 * MiB
    limits = Limits(max_file_bytes=GiB, max_total_bytes=50 * MiB, max_files=10, max_ratio=1e6)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    refused(attempt(box, archive, limits), too_large=True, says="exceeds")
    assert time.monotonic() - started < 10
    assert box.disk_bytes() <= 50 * MiB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 64 * 1024


def test_zip_bomb_stopped_by_ratio(box: Box) -> None:
    archive = _zip_bomb(box.up / "ratio.zip", 64 * MiB)
    limits = Limits(max_file_bytes=10 * GiB, max_total_bytes=10 * GiB, max_files=10)
    refused(attempt(box, archive, limits), too_large=True, says="decompression bomb")
    assert box.disk_bytes() <= max(100 * archive.stat().st_size, RATIO_FLOOR)


def test_zip_overlapping_entries_bomb(box: Box) -> None:
    # Many central-directory entries pointing at one compressed member: each looks small, together huge.
    one = _zip_bomb(box.up / "one.zip", 16 * MiB).read_bytes()
    central = one.index(b"PK\x01\x02")
    entry = one[central : one.index(b"PK\x05\x06")]
    entries = b"".join(entry.replace(b"bomb.bin", b"bomb%04d" % i) for i in range(40))  # names of equal length
    end = b"PK\x05\x06" + bytes(4) + (40).to_bytes(2, "little") * 2
    end += len(entries).to_bytes(4, "little") + central.to_bytes(4, "little") + bytes(2)
    archive = box.up / "overlap.zip"
    archive.write_bytes(one[:central] + entries + end)
    limits = Limits(max_file_bytes=GiB, max_total_bytes=64 * MiB, max_files=100, max_ratio=1e6)
    assert isinstance(attempt(box, archive, limits), ArchiveError)
    assert box.disk_bytes() <= 64 * MiB


def test_zip_bzip2_members_refused(box: Box) -> None:
    # zipfile inflates bzip2 without an output bound; such members are refused before a byte is read.
    archive = make_zip(box.up / "bz.zip", [("a.txt", b"a" * 100)], method=zipfile.ZIP_BZIP2)
    refused(attempt(box, archive), says="compression method")


def test_zip_entry_count_limit(box: Box) -> None:
    archive = make_zip(box.up / "many.zip", [(f"d{i}/", b"") for i in range(1100)])
    refused(attempt(box, archive, Limits(MiB, MiB, 10)), too_large=True, says="entries")
    assert list(box.dest.iterdir()) == []


def test_zip_corrupt(box: Box) -> None:
    whole = make_zip(box.up / "ok.zip", [(f"f{i}", os.urandom(10_000)) for i in range(5)]).read_bytes()
    cut = box.up / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    refused(attempt(box, cut), says="corrupt")
    flipped = bytearray(whole)
    flipped[200] ^= 0xFF  # inside the first member's data: its CRC no longer matches
    bad = box.up / "bad.zip"
    bad.write_bytes(bytes(flipped))
    refused(attempt(box, bad), says="corrupt")


# --- happy paths ---------------------------------------------------------------------------------------------

TREE = {
    "folder/files_test.txt": b"hello\n",
    "folder/data/run1.root": os.urandom(300_000),
    "folder/data/deep/er/x.csv": b"a,b\n1,2\n",
    "folder/caf\u00e9.txt": "é".encode(),
    "folder/empty.txt": b"",
}


def _tree_on_disk(base: Path) -> Path:
    for rel, data in TREE.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (base / "folder" / "nothing").mkdir()
    return base


@pytest.mark.parametrize("mode", ["w:gz", "w", "w:bz2", "w:xz"])
def test_tar_round_trip(box: Box, mode: str) -> None:
    src = _tree_on_disk(box.up / "src")
    archive = box.up / "folder.tar"
    with tarfile.open(archive, mode) as tar:
        tar.add(src / "folder", arcname="folder")
    report = attempt(box, archive)
    assert isinstance(report, Report)
    assert report == Report(files=len(TREE), bytes=sum(map(len, TREE.values())), skipped=[])
    assert box.written() == TREE
    assert (box.dest / "folder" / "nothing").is_dir()


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_zip_round_trip(box: Box, method: int) -> None:
    src = _tree_on_disk(box.up / "src")
    archive = box.up / "folder.zip"
    with zipfile.ZipFile(archive, "w", method) as zf:
        for path in sorted((src / "folder").rglob("*")):
            zf.write(path, path.relative_to(src))
    report = attempt(box, archive)
    assert isinstance(report, Report)
    assert report.files == len(TREE)
    assert box.written() == TREE
    assert (box.dest / "folder" / "nothing").is_dir()
    assert stat.S_IMODE((box.dest / "folder" / "files_test.txt").stat().st_mode) == 0o640


def test_strip_top_tar_and_zip(box: Box) -> None:
    src = _tree_on_disk(box.up / "src")
    archive = box.up / "folder.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".")  # "./", "./folder", "./folder/files_test.txt"...: `tar -C src -czf x .`
    assert isinstance(attempt(box, archive, strip_top=True), Report)
    assert box.written() == {rel.removeprefix("folder/"): data for rel, data in TREE.items()}

    other = box.root / "zipdest"
    other.mkdir()
    zipped = make_zip(box.up / "folder.zip", [("folder_to_upload/", b""), ("folder_to_upload/files_test.txt", b"t")])
    extract(zipped, other, LIMITS, strip_top=True)
    assert sorted(os.listdir(other)) == ["files_test.txt"]


def test_strip_top_only_when_one_top_directory(box: Box) -> None:
    two = make_tar(box.up / "two.tar", [reg("a/x"), reg("b/y")])
    assert isinstance(attempt(box, two, strip_top=True), Report)
    assert sorted(box.written()) == ["a/x", "b/y"]

    one_file = box.root / "onefile"
    one_file.mkdir()
    extract(make_tar(box.up / "one.tar", [reg("only.txt")]), one_file, LIMITS, strip_top=True)
    assert os.listdir(one_file) == ["only.txt"]

    with_link = box.root / "withlink"
    with_link.mkdir()
    linked = make_tar(box.up / "l.tar", [reg("top/x"), special("up", tarfile.SYMTYPE, "/")])
    extract(linked, with_link, LIMITS, strip_top=True)
    assert os.listdir(with_link) == ["top"]


def test_strip_top_child_named_like_the_top(box: Box) -> None:
    archive = make_tar(box.up / "same.tar", [reg("a/a/x", b"x"), reg("a/y", b"y")])
    assert isinstance(attempt(box, archive, strip_top=True), Report)
    assert box.written() == {"a/x": b"x", "y": b"y"}


def test_macos_metadata_skipped(box: Box) -> None:
    archive = make_zip(
        box.up / "mac.zip",
        [("folder/", b""), ("folder/a.txt", b"a"), ("__MACOSX/folder/._a.txt", b"meta"), ("folder/._a.txt", b"m")],
    )
    report = attempt(box, archive, strip_top=True)
    assert isinstance(report, Report)
    assert box.written() == {"a.txt": b"a"}
    assert report.skipped == ["__MACOSX/folder/._a.txt: macOS metadata", "folder/._a.txt: macOS metadata"]


# --- single files --------------------------------------------------------------------------------------------


def test_save_file(box: Box) -> None:
    data = os.urandom(3 * MiB + 17)
    report = save_file(io.BytesIO(data), box.dest, "sub/dir/run.root", LIMITS)
    assert report == Report(files=1, bytes=len(data))
    assert box.written() == {"sub/dir/run.root": data}
    assert stat.S_IMODE((box.dest / "sub" / "dir" / "run.root").stat().st_mode) == 0o640
    save_file(io.BytesIO(b"second"), box.dest, "sub/other.txt", LIMITS)  # existing directories are reused
    assert (box.dest / "sub" / "other.txt").read_bytes() == b"second"


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "a\x00b", "\u2025/evil", ""])
def test_save_file_refuses_names(box: Box, name: str) -> None:
    before = box.outside()
    with pytest.raises(ArchiveError) as info:
        save_file(io.BytesIO(b"x"), box.dest, name, LIMITS)
    assert info.value.too_large is False
    assert box.outside() == before
    assert list(box.dest.iterdir()) == []


def test_save_file_limit_removes_partial_file(box: Box) -> None:
    with pytest.raises(ArchiveError) as info:
        save_file(io.BytesIO(bytes(5 * MiB)), box.dest, "big.bin", Limits(2 * MiB, 10 * MiB, 10))
    assert info.value.too_large is True
    assert not (box.dest / "big.bin").exists()


def test_save_file_never_overwrites_or_follows(box: Box) -> None:
    (box.dest / "a.txt").write_text("original")
    with pytest.raises(ArchiveError, match="already exists"):
        save_file(io.BytesIO(b"new"), box.dest, "a.txt", LIMITS)
    assert (box.dest / "a.txt").read_text() == "original"
    (box.dest / "link").symlink_to(box.root / "sentinel")
    with pytest.raises(ArchiveError, match="not a directory"):
        save_file(io.BytesIO(b"x"), box.dest, "link/pwned", LIMITS)
    (box.dest / "flink").symlink_to(box.root / "sentinel" / "keep.txt")
    with pytest.raises(ArchiveError, match="already exists"):
        save_file(io.BytesIO(b"x"), box.dest, "flink", LIMITS)
    assert (box.root / "sentinel" / "keep.txt").read_text() == "keep me"
    assert os.listdir(box.root / "sentinel") == ["keep.txt"]
