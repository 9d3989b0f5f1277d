"""The data directory is the hub's: wrong permissions are fixed at start, or the start is refused naming the path."""

from __future__ import annotations

import os
import stat

import pytest

from labhub import storage
from labhub.storage import StorageError


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_open_permissions_are_closed_and_reported(tmp_path):
    data = tmp_path / "data"
    storage.prepare(data, sqlite=data / "labhub.sqlite")
    assert mode(data) == 0o700 and mode(data / "labhub.sqlite") == 0o600  # private from the first byte
    for path, m in ((data, 0o755), (data / "labhub.sqlite", 0o644), (data / "homes", 0o755)):
        path.chmod(m)
    (data / "secret.key").write_text("k" * 64)
    (data / "secret.key").chmod(0o644)
    (data / "labhub.sqlite-wal").write_text("")
    (data / "labhub.sqlite-wal").chmod(0o666)
    (data / "homes" / "alice").mkdir(mode=0o755)
    (data / "instances" / "i1").mkdir(parents=True)
    (data / "instances" / "i1" / "output.log").write_text("x")
    (data / "instances" / "i1" / "output.log").chmod(0o644)
    report = storage.secure(data, group=None)
    assert mode(data) == 0o700 and mode(data / "homes") == 0o700 and mode(data / "instances") == 0o700
    for name in ("labhub.sqlite", "labhub.sqlite-wal", "secret.key"):
        assert mode(data / name) == 0o600, name
    assert mode(data / "homes" / "alice") == 0o700
    assert mode(data / "instances" / "i1" / "output.log") == 0o640  # the hub, and the account it belongs to
    assert any(str(data / "secret.key") in line and "0644 -> 0600" in line for line in report.fixed)
    assert storage.secure(data, group=None).fixed == []  # nothing left to fix


def test_the_instance_group_may_traverse_only(tmp_path):
    data = tmp_path / "data"
    storage.prepare(data)
    gid = os.getegid()
    storage.secure(data, group=gid)
    assert mode(data) == 0o710 and mode(data / "homes") == 0o710 and os.stat(data).st_gid == gid


def test_a_link_or_a_strangers_file_stops_the_start(tmp_path):
    data = tmp_path / "data"
    storage.prepare(data)
    (data / "secret.key").symlink_to("/etc/passwd")
    with pytest.raises(StorageError, match=r"secret.key is a symbolic link"):
        storage.secure(data, group=None)
    (data / "secret.key").unlink()
    if os.geteuid() == 0:
        (data / "labhub.toml").write_text("")
        os.chown(data / "labhub.toml", 65534, 65534)
        with pytest.raises(StorageError, match=r"labhub.toml belongs to uid 65534"):
            storage.secure(data, group=None)
