"""Who listens where: ``/proc/net/tcp{,6}`` and ``/proc/<pid>/fd``, without spawning anything.

Before the hub sends an instance its token (the readiness probe) or routes a
browser to it, the listener on the instance's port must be proven to be the
instance's own: another account's process could have bound the port first
(its number is visible in ``/proc/*/cmdline`` before the instance binds it).
A listening socket is known by its inode; it is the instance's when one of the
instance's processes holds a descriptor to that inode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"
#: local addresses a connection to 127.0.0.1 can reach (hex, as /proc/net shows them)
_LOOPBACK_OR_ANY_V4 = frozenset({"0100007F", "00000000"})
_LOOPBACK_OR_ANY_V6 = frozenset({
    "00000000000000000000000000000000",          # ::
    "0000000000000000FFFF00000100007F",          # ::ffff:127.0.0.1
})


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening TCP socket: its inode and the uid that created it."""

    inode: int
    uid: int


def parse_listeners(text: str, port: int, addresses: frozenset[str]) -> list[Listener]:
    """Listening sockets on ``port`` whose local address is one of ``addresses`` (pure).

    ``text`` is the content of ``/proc/net/tcp`` or ``/proc/net/tcp6``.
    """
    want = f"{port:04X}"
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != LISTEN:
            continue
        address, _, hex_port = fields[1].partition(":")
        if hex_port != want or address not in addresses:
            continue
        try:
            found.append(Listener(inode=int(fields[9]), uid=int(fields[7])))
        except ValueError:
            continue
    return found


def loopback_listeners(port: int) -> list[Listener]:
    """Every listening socket a connection to ``127.0.0.1:port`` could reach."""
    found: list[Listener] = []
    for name, addresses in (("tcp", _LOOPBACK_OR_ANY_V4), ("tcp6", _LOOPBACK_OR_ANY_V6)):
        try:
            text = (PROC / "net" / name).read_text()
        except OSError:
            continue
        found += parse_listeners(text, port, addresses)
    return found


def socket_inodes(pids: Iterable[int]) -> set[int]:
    """Inodes of the sockets the given processes hold descriptors to."""
    inodes: set[int] = set()
    for pid in pids:
        fd_dir = PROC / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(fd_dir / name)
            except OSError:
                continue
            if target.startswith("socket:["):
                try:
                    inodes.add(int(target[8:-1]))
                except ValueError:
                    continue
    return inodes


@dataclass(frozen=True, slots=True)
class Verdict:
    """What listens on an instance's port: ``ours`` once proven, ``stranger`` if another process holds it."""

    listening: bool
    ours: bool
    stranger_uid: int | None = None
    inodes: frozenset[int] = frozenset()


def judge(port: int, members: Callable[[], Iterable[int]], *, known: frozenset[int] = frozenset()) -> Verdict:
    """Whether what listens on ``127.0.0.1:port`` belongs to the processes ``members()`` lists.

    ``known`` are listener inodes already proven to be the instance's (a socket
    is never handed to another process but by its holder), so a steady state
    costs one read of ``/proc/net/tcp``.
    """
    listeners = loopback_listeners(port)
    if not listeners:
        return Verdict(listening=False, ours=False)
    inodes = frozenset(item.inode for item in listeners)
    if inodes <= known:
        return Verdict(listening=True, ours=True, inodes=inodes)
    held = socket_inodes(members())
    strangers = [item for item in listeners if item.inode not in held]
    if strangers:
        return Verdict(listening=True, ours=False, stranger_uid=strangers[0].uid)
    return Verdict(listening=True, ours=True, inodes=inodes)
