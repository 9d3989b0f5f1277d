"""Folders over the API: uploads streamed to disk and extracted safely, limits while streaming,
nothing half-made, per-user access."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from labhub.settings import StorageSettings

pytestmark = pytest.mark.asyncio


def targz(files: dict[str, bytes | str], *, top: str = "") -> bytes:
    """A tar.gz of these files (text is UTF-8), made in memory; the tests' uploads."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(top + path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
async def hub(start_hub, sqlite_url):
    limits = StorageSettings(max_folder_bytes=1_000_000, max_user_bytes=1_500_000, max_file_bytes=600_000,
                             max_folder_files=50, max_folders=3)
    return await start_hub(sqlite_url, storage=limits)


def leftovers(hub, user_id: int) -> list[str]:
    staging = hub.hub.folders.user_dir(user_id) / ".staging"
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


async def user_id(hub, name: str) -> int:
    from labhub.services import users

    async with hub.hub.sessions() as session:
        return (await users.get_user(session, name=name)).id


async def test_upload_an_archive_a_file_and_a_form_then_look_inside_and_delete(hub):
    alice = await hub.user("alice")
    resp = await alice.http.post("/api/v1/folders/luca/upload", content=targz({"files.txt": b"a.root\n",
                                                                               "data/a.root": b"x" * 100}))
    assert resp.status_code == 201, resp.text
    assert resp.json()["folder"] | {"created_at": 0, "updated_at": 0} == {
        "name": "luca", "bytes": 107, "files": 2, "created_at": 0, "updated_at": 0}
    single = await alice.http.post("/api/v1/folders/luca/upload", params={"filename": "labels.txt"}, content=b"1\n")
    assert single.status_code == 201 and single.json()["folder"]["files"] == 3
    # curl -F file=@x.tar.gz: multipart, a tarball of one top directory becomes the folder with strip_top
    form = await alice.http.post("/api/v1/folders/other/upload", params={"strip_top": "true"},
                                 files={"file": ("x.tar.gz", targz({"m.py": b"pass"}, top="folder_to_upload/"))})
    assert form.status_code == 201 and form.json()["folder"]["files"] == 1
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("z/params.json", "{}")
    assert (await alice.http.post("/api/v1/folders/other/upload", content=zipped.getvalue())).status_code == 201

    listing = (await alice.http.get("/api/v1/folders")).json()
    assert [(f["name"], f["files"]) for f in listing] == [("luca", 3), ("other", 2)]
    inside = (await alice.http.get("/api/v1/folders/other")).json()
    assert [i["path"] for i in inside["items"]] == ["m.py", "z/params.json"] and inside["truncated"] is False
    assert (await alice.http.get("/api/v1/folders/luca/files/data/a.root")).content == b"x" * 100

    assert (await alice.http.delete("/api/v1/folders/luca/files/data/a.root")).status_code == 204
    assert (await alice.http.get("/api/v1/folders/luca")).json()["files"] == 2
    assert (await alice.http.delete("/api/v1/folders/luca")).status_code == 204
    assert (await alice.http.get("/api/v1/folders/luca")).status_code == 404
    assert not hub.hub.folders.path(await user_id(hub, 'alice'), "luca").exists()
    assert leftovers(hub, await user_id(hub, 'alice')) == []


async def test_an_oversized_upload_gets_413_while_streaming_and_leaves_nothing(hub):
    alice = await hub.user("alice")
    sent = 0

    async def body():
        nonlocal sent
        for _ in range(100):  # 6.4 MB, over the 1 MB folder limit; the hub answers before the end
            sent += 64 * 1024
            yield b"\0" * (64 * 1024)

    resp = await alice.http.post("/api/v1/folders/big/upload", params={"filename": "zeros"}, content=body())
    assert resp.status_code == 413
    assert (await alice.http.get("/api/v1/folders/big")).status_code == 404
    assert leftovers(hub, await user_id(hub, 'alice')) == []
    # one file over the per-file limit, in an archive small enough to pass the body limit
    bomb = targz({"ok.txt": b"fine", "zeros.bin": b"\0" * 700_000})
    resp = await alice.http.post("/api/v1/folders/bomb/upload", content=bomb)
    assert resp.status_code == 413 and "zeros.bin" in resp.json()["detail"]
    assert (await alice.http.get("/api/v1/folders/bomb")).status_code == 404  # no half folder


async def test_a_hostile_archive_is_refused_and_the_users_other_folders_are_untouched(hub, tmp_path):
    alice = await hub.user("alice")
    await alice.http.post("/api/v1/folders/keep/upload", params={"filename": "a.txt"}, content=b"precious")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        good = tarfile.TarInfo("fine.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        evil = tarfile.TarInfo("../keep/a.txt")
        evil.size = 5
        tar.addfile(evil, io.BytesIO(b"owned"))
    resp = await alice.http.post("/api/v1/folders/new/upload", content=buf.getvalue())
    assert resp.status_code == 422 and "../keep/a.txt" in resp.json()["detail"]
    assert (await alice.http.get("/api/v1/folders/keep/files/a.txt")).content == b"precious"
    assert (await alice.http.get("/api/v1/folders/new")).status_code == 404
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        data = tarfile.TarInfo("real.txt")
        data.size = 1
        tar.addfile(data, io.BytesIO(b"r"))
    resp = await alice.http.post("/api/v1/folders/links/upload", content=buf.getvalue())
    assert resp.status_code == 201 and any("passwd" in line for line in resp.json()["skipped"])
    assert [i["path"] for i in (await alice.http.get("/api/v1/folders/links")).json()["items"]] == ["real.txt"]


async def test_limits_per_user_and_bad_names(hub):
    alice = await hub.user("alice")
    for name in ("f1", "f2"):
        resp = await alice.http.post(f"/api/v1/folders/{name}/upload", params={"filename": "x"}, content=b"1" * 590_000)
        assert resp.status_code == 201, resp.text
    over = await alice.http.post("/api/v1/folders/f3/upload", params={"filename": "x"}, content=b"1" * 400_000)
    assert over.status_code == 413  # 1.18 MB + 0.4 MB is over alice's 1.5 MB
    assert (await alice.http.post("/api/v1/folders/f3/upload", params={"filename": "x"}, content=b"1")).status_code == 201
    fourth = await alice.http.post("/api/v1/folders/f4/upload", params={"filename": "x"}, content=b"1")
    assert fourth.status_code == 413 and "at most 3 folders" in fourth.json()["fields"]["name"]
    bad = await alice.http.post("/api/v1/folders/.hidden/upload", params={"filename": "x"}, content=b"1")
    assert bad.status_code == 422 and "name" in bad.json()["fields"]
    noname = await alice.http.post("/api/v1/folders/f1/upload", content=b"not an archive")
    assert noname.status_code == 422 and "filename" in noname.json()["fields"]
    traversal = await alice.http.post("/api/v1/folders/f1/upload", params={"filename": "../../x"}, content=b"1")
    assert traversal.status_code == 422
    bob = await hub.user("bob")
    assert (await bob.http.post("/api/v1/folders/f1/upload", params={"filename": "y"}, content=b"b")).status_code == 201
    assert [f["files"] for f in (await alice.http.get("/api/v1/folders")).json()] == [1, 1, 1]


async def test_a_storage_quota_replaces_the_sites_limit_for_its_user(hub):
    alice, root = await hub.user("alice"), await hub.user("root", admin=True)
    for name in ("f1", "f2"):
        assert (await alice.http.post(f"/api/v1/folders/{name}/upload", params={"filename": "x"},
                                      content=b"1" * 590_000)).status_code == 201
    report = (await alice.http.get("/api/v1/users/alice/quota")).json()
    assert report["limits"]["storage_mb"] == 1 and report["source"]["storage_mb"] == "site"  # 1.5 MB, whole MiB
    assert report["usage"]["storage_mb"] == 1.1
    big = {"params": {"filename": "x"}, "content": b"1" * 400_000}
    assert (await alice.http.post("/api/v1/folders/f3/upload", **big)).status_code == 413
    assert (await root.http.put("/api/v1/users/alice/quota", json={"storage_mb": 2})).status_code == 200
    assert (await alice.http.post("/api/v1/folders/f3/upload", **big)).status_code == 201  # 1.58 MB of 2 MiB
    assert (await root.http.put("/api/v1/users/alice/quota", json={"storage_mb": 1})).json()["over"] == [
        "MB of storage: 1.5 in use, the limit is now 1"]


async def test_folders_are_the_hubs_files(hub):
    """Uploaded files belong to the hub, private: a job's account gets read access to one folder
    when a job of its owner reads it, and nobody else ever."""
    alice = await hub.user("alice")
    await alice.http.post("/api/v1/folders/luca/upload", content=targz({"a/b.txt": b"1"}))
    folder = hub.hub.folders.path(await user_id(hub, 'alice'), "luca")
    for path in (folder, folder / "a", folder / "a" / "b.txt"):
        st = path.stat()
        assert st.st_uid == Path(hub.hub.settings.data_dir).stat().st_uid
        assert st.st_mode & 0o007 == 0, oct(st.st_mode)


async def test_curl_data_binary_uploads_an_archive(hub, tmp_path):
    """`curl --data-binary @x.tar.gz` labels the body a form: its bytes (NULs included) are still the file."""
    import asyncio
    import subprocess

    alice = await hub.user("alice")
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(targz({"a.bin": b"\0\1\2" * 100}))
    done = await asyncio.to_thread(subprocess.run, [
        "curl", "-sS", "-H", f"Authorization: Bearer {alice.token}", "--data-binary", f"@{archive}",
        f"{hub.url}/api/v1/folders/bin/upload"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and '"files":1' in done.stdout.replace(" ", ""), done.stdout + done.stderr
    assert (await alice.http.get("/api/v1/folders/bin/files/a.bin")).content == b"\0\1\2" * 100


async def test_the_mlaas4hep_routes_can_be_switched_off(start_hub, sqlite_url):
    hub = await start_hub(sqlite_url, mlaas4hep_routes=False)
    alice = await hub.user("alice")
    assert (await alice.http.post("/upload", params={"name": "x"}, content=b"1")).status_code == 404
    assert (await alice.http.get("/status_docker", params={"process_name": "x_1"})).status_code == 404
    assert (await alice.http.post("/api/v1/folders/x/upload", params={"filename": "f"}, content=b"1")).status_code == 201


async def test_a_model_file_that_is_a_zip_inside_is_kept_as_it_is(hub):
    """.keras and .skops files are zip archives: "auto" must not unpack them (extract=yes still may)."""
    alice = await hub.user("alice")
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as zf:
        zf.writestr("config.json", "{}")
    for name in ("net.keras", "clf.SKOPS"):
        kept = await alice.http.post("/api/v1/folders/models/upload", params={"filename": name},
                                     content=packed.getvalue())
        assert kept.status_code == 201, kept.text
    files = (await alice.http.get("/api/v1/folders/models")).json()["items"]
    assert sorted(f["path"] for f in files) == ["clf.SKOPS", "net.keras"]
    unpacked = await alice.http.post("/api/v1/folders/unpacked/upload", params={"filename": "net.keras",
                                                                                 "extract": "yes"},
                                     content=packed.getvalue())
    assert unpacked.status_code == 201
    assert [f["path"] for f in (await alice.http.get("/api/v1/folders/unpacked")).json()["items"]] == ["config.json"]
