"""The job commands end to end on the real local backend: upload a directory, submit and wait,
follow the log, download the artifacts; and the typed client they are built on."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from labhub.cli.main import app
from labhub.client import Hub, HubError
from tests.api.test_jobs import SCRIPT_TEMPLATE, TRAIN

runner = CliRunner()
pytestmark = pytest.mark.asyncio


@pytest.fixture
async def hub(start_hub, sqlite_url, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "script.yaml").write_text(SCRIPT_TEMPLATE)
    return await start_hub(sqlite_url, templates_dir=templates)


async def test_upload_submit_follow_download(hub, tmp_path):
    alice = await hub.user("alice")
    env = {"LABHUB_URL": hub.url, "LABHUB_TOKEN": alice.token}

    def cli(*args: str):
        return asyncio.to_thread(runner.invoke, app, list(args), env=env, catch_exceptions=False)

    inputs = tmp_path / "inputs"
    (inputs / "deep").mkdir(parents=True)
    (inputs / "main.py").write_text(TRAIN)
    (inputs / "data.txt").write_text("some data")
    (inputs / "deep" / "extra.bin").write_bytes(b"\1" * 1000)
    (inputs / "link").symlink_to("/etc/passwd")  # not sent: the hub would skip it anyway

    up = await cli("upload", str(inputs), "--name", "luca")
    assert up.exit_code == 0, up.output
    assert "luca: 3 files" in up.output
    listed = await cli("folders")
    assert "luca" in listed.output and "3" in listed.output
    inside = await cli("folders", "luca")
    assert "deep/extra.bin" in inside.output and "link" not in inside.output

    submitted = await cli("submit", "script", "--input", "luca", "--param", "script=main.py", "--wait")
    assert submitted.exit_code == 0, submitted.output
    assert "script-1: succeeded (exit code 0)" in submitted.output
    followed = await cli("logs", "script-1", "--follow")  # ended already: the whole log, then it returns
    assert "epoch 3" in followed.output and "done" in followed.output
    out = tmp_path / "results"
    got = await cli("download", "script-1", "-o", str(out))
    assert got.exit_code == 0, got.output
    assert (out / "script-1" / "model.bin").read_bytes() == b"weights" * 1000
    assert (out / "script-1" / "sub" / "notes.txt").read_text() == "SOME DATA"

    second = await cli("submit", "script", "--input", "luca", "--param", "script=nope.py", "--wait")
    assert second.exit_code == 1 and "script-2: failed" in second.output  # numbered, and says why
    assert "FileNotFoundError" in second.output
    missing = await cli("submit", "script", "--input", "nope")
    assert missing.exit_code == 1 and "input: you have no folder named 'nope'" in missing.output


async def test_the_typed_client(hub, tmp_path):
    alice = await hub.user("alice")
    (tmp_path / "main.py").write_text(TRAIN)

    def drive() -> None:
        with Hub(hub.url, alice.token) as client:
            client.upload(tmp_path / "main.py", folder="f")
            (tmp_path / "data.txt").write_text("abc")
            seen: list[tuple[int, int | None]] = []
            client.upload(tmp_path / "data.txt", folder="f", progress=lambda done, total: seen.append((done, total)))
            assert seen[-1] == (3, 3)
            job = client.submit("script", input="f", params={"script": "main.py"})
            ended = client.wait(job["id"])
            assert ended["status"] == "succeeded"
            assert "done" in "".join(client.log(job["id"]))
            assert [m["epoch"] for m in client.metrics(job["id"])] == [1, 2, 3]
            assert {a["path"] for a in client.artifacts(job["id"])["items"]} == {"model.bin", "sub/notes.txt"}
            one = client.download(job["id"], tmp_path, path="sub/notes.txt")
            assert one.read_text() == "ABC"
            try:
                client.folder("missing")
            except HubError as exc:
                assert exc.status == 404
            else:
                raise AssertionError("no error for a missing folder")

    await asyncio.to_thread(drive)
