"""The folder pages over HTTP (no browser): only one's own folders, the upload form without JavaScript
(and forged or other-site posts of it), deletes, hostile file names, and the launch form's input folder."""

from __future__ import annotations

import html
import io
import re
import tarfile
import textwrap

import pytest

from labhub.backends.fake import FakeBackend
from tests.web.test_pages import browser_login, field_errors

pytestmark = pytest.mark.asyncio

XSS = "<img src=x onerror=alert(1)>.txt"
JOB_TEMPLATE = textwrap.dedent("""\
    title: Train
    kind: job
    input: required
    command: [python3, -c, "print('hi')"]
    hours: {default: 1, max: 2}
""")


def targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
async def hub(start_hub, sqlite_url, echo_upstream, tmp_path):
    site = tmp_path / "templates"
    site.mkdir()
    (site / "train.yaml").write_text(JOB_TEMPLATE)
    return await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)}, templates_dir=site)


async def api_upload(client, folder: str, files: dict[str, bytes]) -> dict:
    """Upload as the pages' script does: the session cookie and the X-CSRF-Token header."""
    resp = await client.post(f"/api/v1/folders/{folder}/upload", content=targz(files),
                             headers={"X-CSRF-Token": client.csrf, "Content-Type": "application/octet-stream"})
    assert resp.status_code == 201, resp.text
    return resp.json()


def upload_action(page: str) -> str:
    match = re.search(r'<form method="post" action="([^"]+)" enctype="multipart/form-data"', page)
    assert match, "the page has no upload form"
    return html.unescape(match.group(1))


async def test_the_folders_page_lists_only_mine(hub):
    alice = await browser_login(hub, "alice")
    bob = await browser_login(hub, "bob")
    await api_upload(alice, "inputs", {"main.py": b"print(1)\n", "data/a.txt": b"abc"})
    await api_upload(bob, "bobs-data", {"x.txt": b"x"})

    page = await alice.get("/folders")
    assert page.status_code == 200 and 'aria-current="page">Folders<' in page.text
    assert 'href="/folders/inputs"' in page.text and "bobs-data" not in page.text
    assert re.search(r'data-label="Files">2<', page.text)
    assert 'href="/folders/inputs#submit"' in page.text  # two job templates read folders: the folder's page lists them
    assert "inputs" not in (await bob.get("/folders")).text
    empty = await browser_login(hub, "carol")
    assert "No folders yet" in (await empty.get("/folders")).text


async def test_the_upload_form_works_without_javascript(hub):
    alice = await browser_login(hub, "alice")
    bad = await alice.get("/folders", params={"new": "no spaces"})
    assert bad.status_code == 422 and "must be 1-63 characters" in field_errors(bad.text)["folder-name"]
    go = await alice.get("/folders", params={"new": "fresh"})
    assert go.status_code == 303 and go.headers["location"] == "/folders/fresh?new=1"
    assert (await alice.get("/folders/fresh")).status_code == 404  # nothing is made until something is uploaded
    new = await alice.get("/folders/fresh?new=1")
    assert new.status_code == 200 and "New: upload files to create it." in new.text
    action = upload_action(new.text)
    assert action.startswith("/folders/fresh/upload?csrf_token=")

    done = await alice.post(action, files={"file": ("in.tar.gz", targz({"main.py": b"pass\n", "d/x.bin": b"12"}))})
    assert done.status_code == 303 and done.headers["location"] == "/folders/fresh?added=2"
    page = await alice.get(done.headers["location"])
    assert "Uploaded: 2 files added." in page.text
    assert '<code class="wrap">d/x.bin</code>' in page.text
    assert 'href="/api/v1/folders/fresh/files/d/x.bin"' in page.text
    assert 'href="/launch/train?input=fresh"' in page.text  # "Submit a job with this folder"
    one = await alice.post(upload_action(page.text), files={"file": ("notes.txt", b"plain file")})  # saved as is
    assert one.status_code == 303
    assert (await alice.get("/api/v1/folders/fresh/files/notes.txt")).content == b"plain file"

    nothing = await alice.post(upload_action(page.text), files={"file": ("", b"")})  # no file chosen
    assert nothing.status_code == 422 and "The upload failed: choose a file first." in nothing.text
    hostile = await alice.post(upload_action(page.text), files={"file": ("evil.tar.gz", targz({"../up.txt": b"x"}))})
    assert hostile.status_code == 422 and "The upload failed:" in hostile.text
    assert (await alice.get("/api/v1/folders/fresh")).json()["files"] == 3


async def test_forged_and_other_site_uploads_are_refused(hub):
    alice = await browser_login(hub, "alice")
    body = {"file": ("in.tar.gz", targz({"a.txt": b"a"}))}
    forged = await alice.post("/folders/target/upload?csrf_token=forged", files=body)
    assert forged.status_code == 403
    missing = await alice.post("/folders/target/upload", files=body)
    assert missing.status_code == 403
    offsite = await alice.post(f"/folders/target/upload?csrf_token={alice.csrf}", files=body,
                               headers={"Origin": "http://evil.example"})
    assert offsite.status_code == 403
    sibling = await alice.post(f"/folders/target/upload?csrf_token={alice.csrf}", files=body,
                               headers={"Sec-Fetch-Site": "same-site"})
    assert sibling.status_code == 403
    anonymous = hub.client(headers={"Accept": "text/html"})
    assert (await anonymous.post("/folders/target/upload", files=body)).status_code in (303, 403)
    in_header = await alice.post("/folders/target/upload", files=body, headers={"X-CSRF-Token": "forged"})
    assert in_header.status_code == 403
    assert (await alice.get("/api/v1/folders")).json() == []
    ok = await alice.post(f"/folders/target/upload?csrf_token={alice.csrf}", files=body,
                          headers={"Origin": hub.url})
    assert ok.status_code == 303
    header = await alice.post("/folders/target/upload", files=body, headers={"X-CSRF-Token": alice.csrf})
    assert header.status_code == 303  # the token may come as the API's header too


async def test_bob_cannot_see_or_delete_alices_folder(hub):
    alice = await browser_login(hub, "alice")
    bob = await browser_login(hub, "bob")
    await api_upload(alice, "inputs", {"secret.txt": b"alice's data"})
    assert (await bob.get("/folders/inputs")).status_code == 404
    assert (await bob.get("/folders/inputs?new=1")).text.count("secret.txt") == 0  # his own, empty namespace
    assert (await bob.get("/api/v1/folders/inputs/files/secret.txt")).status_code == 404
    delete = await bob.post("/folders/inputs/delete", data={"csrf_token": bob.csrf})
    assert delete.status_code == 404
    remove = await bob.post("/folders/inputs/remove", data={"csrf_token": bob.csrf, "path": "secret.txt"})
    assert remove.status_code == 404
    # and alice's own delete needs her token
    assert (await alice.post("/folders/inputs/delete", data={"csrf_token": bob.csrf})).status_code == 403
    assert (await alice.get("/api/v1/folders/inputs")).json()["files"] == 1

    gone = await alice.post("/folders/inputs/delete", data={"csrf_token": alice.csrf})
    assert gone.status_code == 303 and gone.headers["location"] == "/folders?deleted=inputs"
    assert "Deleted the folder inputs." in (await alice.get(gone.headers["location"])).text
    assert (await alice.get("/folders/inputs")).status_code == 404


async def test_hostile_file_names_are_shown_as_text(hub):
    alice = await browser_login(hub, "alice")
    await api_upload(alice, "web", {XSS: b"x", 'q"uote\'s.txt': b"y"})
    page = (await alice.get("/folders/web")).text
    assert "<img src=x" not in page and "onerror=alert(1)&gt;.txt</code>" in page
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in page
    assert 'href="/api/v1/folders/web/files/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt"' in page
    assert 'q&#34;uote&#39;s.txt' in page
    download = await alice.get("/api/v1/folders/web/files/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt")
    assert download.content == b"x" and "attachment" in download.headers["content-disposition"]
    removed = await alice.post("/folders/web/remove", data={"csrf_token": alice.csrf, "path": XSS})
    assert removed.status_code == 303 and removed.headers["location"] == "/folders/web?removed=1"
    assert [i["path"] for i in (await alice.get("/api/v1/folders/web")).json()["items"]] == ['q"uote\'s.txt']


async def test_a_job_is_submitted_with_its_input_folder(hub):
    alice = await browser_login(hub, "alice")
    empty = await alice.get("/launch/train")
    assert 'id="input"' in empty.text and "You have no folders yet" in empty.text
    await api_upload(alice, "inputs", {"main.py": b"print(1)\n"})
    await api_upload(alice, "other", {"main.py": b"print(2)\n"})
    form = await alice.get("/launch/train", params={"input": "inputs"})
    assert '<option value="inputs" selected>inputs (1 file, 9 bytes)</option>' in form.text
    assert '<option value="other">' in form.text

    data = {"csrf_token": alice.csrf, "name": "train-1", "size": "small", "hours": "1"}
    missing = await alice.post("/launch/train", data=data)
    assert missing.status_code == 422 and "upload one first" in field_errors(missing.text)["input"]
    assert re.search(r'<select id="input"[^>]*aria-invalid="true"', missing.text)
    wrong = await alice.post("/launch/train", data={**data, "input": "nope"})
    assert wrong.status_code == 422 and "no folder named &#39;nope&#39;" in field_errors(wrong.text)["input"]
    ok = await alice.post("/launch/train", data={**data, "input": "inputs"})
    assert ok.status_code == 303 and re.fullmatch(r"/instances/[0-9a-f]{32}", ok.headers["location"])  # its page
    page = (await alice.get(ok.headers["location"])).text
    assert '<a href="/folders/inputs">inputs</a>' in page and 'id="job-log"' in page and 'id="metrics-chart"' in page
    assert "/static/job.js" in page and ">Open</a>" not in page
    again = await alice.get(f"/launch/train?again={ok.headers['location'].split('/')[2]}")
    assert '<option value="inputs" selected>' in again.text
    bob = await browser_login(hub, "bob")
    assert (await bob.get(ok.headers["location"])).status_code == 403
