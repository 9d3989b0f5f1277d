"""In a real browser: upload a folder on the Folders page, submit a job that reads it, watch its log and
metrics chart grow while it runs, see it succeed and download what it wrote."""

from __future__ import annotations

import asyncio
import re
import shutil
import tarfile
import textwrap
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.api.test_folders import targz
from tests.web.conftest import PASSWORD, PHONE, README_SCREENSHOTS, audit, screenshot

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]

# the system python3 runs a script of the input folder (as tests/api/test_jobs.py's SCRIPT_TEMPLATE)
TEMPLATE = textwrap.dedent("""\
    title: Python script
    description: Runs a Python script of your folder with the system's python3.
    kind: job
    input: required
    command:
      - python3
      - -c
      - "import os, runpy, sys; runpy.run_path(os.path.join(os.environ['LABHUB_INPUT'], sys.argv[1]))"
      - "{param:script}"
    params:
      - name: script
        title: Script
        default: train.py
    hours: {default: 1, max: 2}
""")
EPOCHS = 8
NOISE = 7000
TRAIN = textwrap.dedent(f"""\
    import json, os, time
    data = open(os.path.join(os.environ["LABHUB_INPUT"], "data.txt")).read()
    print("read", len(data), "bytes", flush=True)
    print("\\n".join(f"n {{i}}" for i in range({NOISE})), flush=True)  # more than the page keeps
    for epoch in range(1, {EPOCHS + 1}):
        with open(os.environ["LABHUB_METRICS"], "a") as fh:
            fh.write(json.dumps({{"epoch": epoch, "loss": 1.0 / epoch, "accuracy": 0.5 + epoch / 20}}) + "\\n")
        print(f"epoch {{epoch}} loss={{1.0 / epoch:.3f}} <b>not bold</b>", flush=True)
        time.sleep(0.5)
    with open(os.path.join(os.environ["LABHUB_OUTPUT"], "model.txt"), "w") as out:
        out.write("model for " + data)
    print("done", flush=True)
""")
DATA = "hello jobs\n"


def member_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


async def readme_screenshot(page, name: str) -> None:  # noqa: ANN001
    path = await screenshot(page, name)
    README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, README_SCREENSHOTS / f"{name}.png")


POINTS = "() => (document.querySelector('#metrics-chart polyline[data-metric=loss]')?.getAttribute('points') || '')" \
         ".split(' ').filter(Boolean).length"


async def test_upload_a_folder_submit_a_job_watch_it_and_download_its_artifact(start_hub, sqlite_url, tmp_path,
                                                                               browser):
    site = tmp_path / "templates"
    site.mkdir()
    (site / "script.yaml").write_text(TEMPLATE)
    hub = await start_hub(sqlite_url, templates_dir=site)
    await hub.user("alice", password=PASSWORD)
    web = await browser.user(hub.url)
    page = await web.login("alice")

    # Folders: name one, pick two archives; one is refused, and says why
    await page.get_by_role("link", name="Folders", exact=True).click()
    await expect(page.get_by_role("heading", name="No folders yet")).to_be_visible()
    await audit(page)
    await page.get_by_label("Folder name").fill("inputs")
    await page.get_by_label("Files").set_input_files([
        {"name": "inputs.tar.gz", "mimeType": "application/gzip",
         "buffer": targz({"train.py": TRAIN, "data.txt": DATA})},
        {"name": "evil.tar.gz", "mimeType": "application/gzip", "buffer": targz({"../escape.txt": "x"})},
    ])
    items = page.locator("#uploads li")
    await expect(items).to_have_count(2)
    await expect(items.nth(0)).to_contain_text("Added 2 files")
    await expect(items.nth(0).locator("progress")).to_have_attribute("value", "100")
    await expect(items.nth(1).locator(".upload-state")).to_have_text("failed")
    await expect(items.nth(1).locator(".upload-result")).to_contain_text("..")
    row = page.locator('#folders tr[data-folder="inputs"]')  # the list, refreshed
    await expect(row.locator('[data-label="Files"]')).to_have_text("2")
    await audit(page)
    await readme_screenshot(page, "folders")

    # The folder's page: its files, and a job to submit with it
    await row.get_by_role("link", name="inputs", exact=True).click()
    await expect(page.locator("#files-table")).to_contain_text("train.py")
    await page.locator("#dropzone").evaluate("""zone => {
        const dt = new DataTransfer();
        dt.items.add(new File(["dropped text"], "notes.txt", {type: "text/plain"}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""")
    await expect(page.locator("#uploads li")).to_contain_text("Added 1 file (12 bytes) to inputs.")
    await expect(page.locator("#files-table")).to_contain_text("notes.txt")  # the list, refreshed
    await expect(page.locator("#folder-summary")).to_contain_text("3 files")
    await audit(page)
    await screenshot(page, "folder")
    await page.get_by_role("link", name="Submit a job: Python script").click()
    await expect(page.get_by_label("Input folder")).to_have_value("inputs")
    await page.get_by_label("Name", exact=True).fill("train-1")
    await audit(page)
    await screenshot(page, "launch-job")
    await page.get_by_role("button", name="Launch", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/instances/[0-9a-f]{32}$"))  # the job's own page
    job_page = page.url
    await expect(page.get_by_role("link", name="inputs")).to_have_attribute("href", "/folders/inputs")

    # While it runs: the log streams in, the chart grows
    await page.wait_for_function("() => document.getElementById('job-log').textContent.includes('epoch 2') && "
                                 "document.getElementById('status').textContent === 'running'", timeout=20_000)
    await expect(page.locator("#job-log")).to_contain_text("<b>not bold</b>")  # text, not markup
    await expect(page.locator("#job-log b")).to_have_count(0)
    await expect(page.locator("#job-log-trimmed")).to_be_visible()  # the page keeps the last 5,000 lines
    kept = await page.locator("#job-log").evaluate("el => el.textContent.split('\\n').length")
    assert 5000 <= kept <= 5500
    await page.wait_for_function(f"() => {{ const n = ({POINTS})(); return n >= 1 && n < {EPOCHS} && "
                                 "document.getElementById('status').textContent === 'running'; }", timeout=20_000)
    partial = await page.evaluate(POINTS)
    await expect(page.locator("#metrics-legend")).to_contain_text("accuracy")
    await page.wait_for_function(f"() => ({POINTS})() > {partial}", timeout=20_000)

    # It ends: the page shows how, and what it wrote
    await expect(page.locator("#exit-code")).to_contain_text("Exit code 0", timeout=20_000)
    await expect(page.locator("#status")).to_have_text("succeeded")
    await expect(page.locator("#why")).to_contain_text("Finished successfully.")
    await expect(page.locator("#job-log")).to_contain_text("done")
    await page.wait_for_function(f"() => ({POINTS})() === {EPOCHS}")
    await expect(page.locator("#metrics-chart polyline")).to_have_count(2)
    artifacts = page.locator("#artifacts-table")
    await expect(artifacts).to_contain_text("model.txt")
    await expect(page.locator("#artifacts-note")).to_contain_text("Kept until")
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download model.txt").click()
    download = await info.value
    saved = await download.path()
    assert await asyncio.to_thread(Path(saved).read_text) == "model for " + DATA
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download all (tar.gz)").click()
    bundle = await info.value
    assert await asyncio.to_thread(member_names, await bundle.path()) == ["train-1/model.txt"]
    await audit(page)
    await readme_screenshot(page, "job")

    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Home").click()
    job_row = page.locator('tr[data-name="train-1"]')
    await expect(job_row.locator("[data-status]")).to_have_text("succeeded")
    await expect(job_row.locator('[data-label="Template"]')).to_contain_text("(job)")
    await screenshot(page, "home-job")

    # Chromium logs the refused upload's answer (the test asked for it); nothing else may go wrong
    refused = [e for e in web.errors() if "status of 422" in e.text and "/api/v1/folders/inputs/upload" in e.source]
    assert len(refused) == 1
    assert [(e.url, e.text) for e in web.errors() if e not in refused] == []
    assert web.blocked == []

    # and on a phone: nothing scrolls sideways
    phone = await browser.user(hub.url, viewport=PHONE)
    small = await phone.login("alice")
    for url, name in ((job_page, "job"), (f"{hub.url}/folders", "folders"), (f"{hub.url}/folders/inputs", "folder")):
        await small.goto(url)
        await audit(small)
        if name == "job":
            await screenshot(small, "job-phone")
    assert [(e.url, e.text) for e in phone.errors()] == []
