"""A typed Python client for a LabHub hub's REST API (what the ``labhub`` CLI uses itself).

    from labhub.client import Hub

    hub = Hub()                       # LABHUB_URL / LABHUB_TOKEN, else what `labhub login` saved
    hub.upload("inputs/", folder="luca")
    job = hub.submit("mlaas4hep", input="luca", params={"fout": "higgs"}, size="small")
    job = hub.wait(job["id"])         # until it has ended
    for chunk in hub.log(job["id"]):  # the output, followed while it runs
        print(chunk, end="")
    hub.download(job["id"], "results/")
    svc = hub.deploy(job["name"], name="higgs")   # its only model, as a service (see deploy)
    print(hub.service(svc["id"])["url"])

Every method raises :class:`HubError` (status, detail, fields) for an error answer.  Long
transfers take a ``progress(done, total)`` callable; ``total`` is None when unknown.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

TERMINAL = frozenset({"stopped", "succeeded", "failed", "expired"})
MODEL_SUFFIXES = (".keras", ".onnx", ".skops")  # what the model service loads (pickles only where a site allows)
MODEL_SERVICE = "model-service"
CHUNK = 1024 * 1024
Progress = Callable[[int, int | None], None]


class HubError(Exception):
    """An error answer: ``status`` (HTTP), ``detail`` and ``fields`` (field -> message)."""

    def __init__(self, status: int, detail: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.fields = status, detail, fields or {}


def config_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "labhub" / "client.json"


def saved_credentials() -> tuple[str | None, str | None]:
    """The hub URL and token: the environment first, then the file ``labhub login`` writes."""
    url, token = os.environ.get("LABHUB_URL"), os.environ.get("LABHUB_TOKEN")
    if not (url and token):
        try:
            saved = json.loads(config_path().read_text())
        except (OSError, ValueError):
            saved = {}
        url, token = url or saved.get("url"), token or saved.get("token")
    return url, token


def save_credentials(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url.rstrip("/"), "token": token}, fh)
    return path


def _ok(resp: httpx.Response) -> None:
    """A streamed answer: raise for an error, else leave its body to be streamed."""
    if resp.status_code >= 400:
        _check(resp)


def _check(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        resp.read()
        try:
            body = resp.json()
        except ValueError:
            body = {"detail": resp.text[:500]}
        raise HubError(resp.status_code, str(body.get("detail", resp.reason_phrase)), body.get("fields"))
    if resp.status_code == 204:
        return None
    if resp.headers.get("content-type", "").startswith("application/json"):
        return resp.json()
    return resp.text


class _Reader:
    """A file read in chunks for an upload body, reporting progress."""

    def __init__(self, fh: IO[bytes], total: int | None, progress: Progress | None) -> None:
        self.fh, self.total, self.progress, self.done = fh, total, progress, 0

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.fh.read(CHUNK):
            self.done += len(chunk)
            if self.progress is not None:
                self.progress(self.done, self.total)
            yield chunk


class Hub:
    """One hub, one API token.  Use as a context manager, or call :meth:`close`."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        saved_url, saved_token = saved_credentials()
        url, token = url or saved_url, token or saved_token
        if not (url and token):
            raise HubError(401, "not logged in: run `labhub login` or set LABHUB_URL and LABHUB_TOKEN")
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {token}"},
                                 timeout=timeout)

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- who, what ----------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        return _check(self.http.get("/me"))

    def templates(self) -> list[dict[str, Any]]:
        return _check(self.http.get("/templates"))

    def instances(self, *, name: str | None = None, all_users: bool = False,
                  owner: str | None = None) -> list[dict[str, Any]]:
        """Your instances (admins: ``owner``'s, or everyone's with ``all_users``), newest first."""
        params: dict[str, Any] = {}
        if name is not None:
            params["name"] = name
        if owner is not None:
            params["owner"] = owner
        if all_users:
            params["all"] = "true"
        return _check(self.http.get("/instances", params=params))

    def instance(self, instance_id: str) -> dict[str, Any]:
        return _check(self.http.get(f"/instances/{instance_id}"))

    def find(self, name: str) -> dict[str, Any]:
        """Your instance ``name``: the active one, else the newest that ended; or its id."""
        rows = self.instances(name=name)
        if not rows:
            if len(name) == 32 and all(c in "0123456789abcdef" for c in name):
                return self.instance(name)
            raise HubError(404, f"you have no instance named {name!r}")
        active = [r for r in rows if r["status"] not in TERMINAL]
        return (active or rows)[0]

    # -- launching ------------------------------------------------------------------------
    def launch(self, template: str, name: str, *, size: str | None = None, hours: float | None = None,
               params: dict[str, Any] | None = None, input: str | None = None,  # noqa: A002
               backend: str | None = None, public: bool | None = None, min_replicas: int | None = None,
               replicas: int | None = None, custom: dict[str, Any] | None = None,
               owner: str | None = None) -> dict[str, Any]:
        """Launch ``template`` as ``name``; the instance (``status`` ``queued`` with ``queue_position``
        while it waits for admission).  ``custom``: ``{"cpus", "memory_mb", "gpus"}`` with size
        ``"custom"`` (the default size when ``custom`` is given); ``owner``: admins launch for that user."""
        if custom is not None and size is None:
            size = "custom"
        body = {"template": template, "name": name, "size": size, "hours": hours, "params": params or {},
                "input": input, "backend": backend, "public": public, "min_replicas": min_replicas,
                "replicas": replicas, "custom": custom, "owner": owner}
        return _check(self.http.post("/instances", json={k: v for k, v in body.items() if v is not None}))

    def submit(self, template: str, *, input: str | None = None, name: str | None = None,  # noqa: A002
               **launch: Any) -> dict[str, Any]:
        """Launch a job; unnamed jobs are numbered (``<template>-1``, ``-2``, ...)."""
        if name is None:
            taken = {r["name"] for r in self.instances()}
            n = 1
            while f"{template}-{n}" in taken:
                n += 1
            name = f"{template}-{n}"
        return self.launch(template, name, input=input, **launch)

    def stop(self, instance_id: str) -> dict[str, Any]:
        return _check(self.http.delete(f"/instances/{instance_id}"))

    def extend(self, name_or_id: str, hours: float) -> dict[str, Any]:
        """Give your instance (by name, or id) ``hours`` more before it expires, within its template's
        maximum; the instance as it is now (422 says how much it can still get)."""
        return _check(self.http.post(f"/instances/{self.find(name_or_id)['id']}/extend", json={"hours": hours}))

    def restart(self, name_or_id: str, size: str, *, custom: dict[str, Any] | None = None) -> dict[str, Any]:
        """Restart your instance (by name, or id) with a new size: it stops and is launched again under
        its name; the new instance (queued, if it does not fit yet)."""
        body: dict[str, Any] = {"size": "custom" if custom else size}
        if custom:
            body["custom"] = custom
        return _check(self.http.post(f"/instances/{self.find(name_or_id)['id']}/restart", json=body))

    def delete(self, instance_id: str) -> None:
        """Delete an ended instance's record (and a job's artifacts)."""
        _check(self.http.delete(f"/instances/{instance_id}/record"))

    def events(self, instance_id: str, *, follow: bool = False) -> Iterator[dict[str, Any]]:
        if not follow:
            yield from _check(self.http.get(f"/instances/{instance_id}/events"))
            return
        with self.http.stream("GET", f"/instances/{instance_id}/events", headers={"Accept": "text/event-stream"},
                              timeout=httpx.Timeout(30, read=None)) as resp:
            _ok(resp)
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: {}":
                    yield json.loads(line[6:])

    def wait(self, instance_id: str, *, until: Iterable[str] = TERMINAL,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Wait (following its events) until the instance's status is in ``until`` or it has ended."""
        stops = set(until) | TERMINAL
        current = self.instance(instance_id)
        if current["status"] not in stops:
            for event in self.events(instance_id, follow=True):
                if on_event is not None:
                    on_event(event)
                if event["status"] in stops:
                    break
        return self.instance(instance_id)

    # -- services -------------------------------------------------------------------------
    def deploy(self, source: str | Path, name: str, *, size: str | None = None, hours: float | None = None,
               public: bool = False, sleep_when_idle: bool = False, replicas: int | None = None,
               folder: str = "models", template: str = MODEL_SERVICE,
               progress: Progress | None = None) -> dict[str, Any]:
        """Serve a model as the service ``name``; ``source`` (see :meth:`model_reference`) is a job's
        only model (``JOB``), one artifact (``JOB/PATH``), an uploaded file (``folder:FOLDER/PATH``),
        or a local file (a :class:`~pathlib.Path`), uploaded into ``folder`` first.

        ``public``: anyone may call its inference routes without a token (rate-limited per client);
        ``sleep_when_idle``: no process runs while it is idle, and the next request wakes it;
        ``replicas``: processes serving it, each of the size (default one)."""
        model = self.model_reference(source, folder=folder, progress=progress)
        return self.launch(template, name, size=size, hours=hours, params={"model": model}, public=public,
                           min_replicas=0 if sleep_when_idle else 1, replicas=replicas)

    def model_reference(self, source: str | Path, *, folder: str = "models",
                        progress: Progress | None = None) -> str:
        """What a service's ``model`` parameter names for ``source``: ``JOB/PATH`` and
        ``folder:FOLDER/PATH`` as they are; ``JOB`` as its one artifact ending in .keras, .onnx or
        .skops (an error, listing them, when it has several or none); a local file (a ``Path``)
        uploaded into ``folder`` first, then as ``folder:FOLDER/NAME`` (its name with characters a
        model's path may not have, such as spaces, as ``_``)."""
        if isinstance(source, Path):
            name = _model_file_name(source.name)
            self.upload(source, folder=folder, progress=progress, filename=name)
            return f"folder:{folder}/{name}"
        if source.startswith("folder:") or "/" in source:
            return source
        job = self.find(source)
        if job["kind"] != "job":
            raise HubError(422, f"{source!r} is a {job['kind']}, not a job", {"model": "name a job or a file"})
        models = [a["path"] for a in self.artifacts(job["id"])["items"] if a["path"].endswith(MODEL_SUFFIXES)]
        if not models:
            raise HubError(422, f"job {source!r} left no model ({', '.join(MODEL_SUFFIXES)})",
                           {"model": "name a job that wrote one, or a file"})
        if len(models) > 1:
            listed = ", ".join(f"{source}/{m}" for m in models)
            raise HubError(422, f"job {source!r} left several models: name one of {listed}",
                           {"model": f"one of {listed}"})
        return f"{source}/{models[0]}"

    def service(self, instance_id: str) -> dict[str, Any]:
        """A service's status, URL, access, models and counters (``models``/``metrics`` None unless running)."""
        return _check(self.http.get(f"/instances/{instance_id}/service"))

    def change_service(self, instance_id: str, *, public: bool | None = None,
                       sleep_when_idle: bool | None = None) -> dict[str, Any]:
        """Make a service public or private, or let it sleep when idle or not; the instance as it is now."""
        body: dict[str, Any] = {}
        if public is not None:
            body["public"] = public
        if sleep_when_idle is not None:
            body["min_replicas"] = 0 if sleep_when_idle else 1
        return _check(self.http.patch(f"/instances/{instance_id}", json=body))

    # -- sharing ----------------------------------------------------------------------------
    def shares(self, instance_id: str) -> list[dict[str, Any]]:
        """Whom the instance is shared with: ``{"id", "user", "group", "created_by", "created_at", ...}`` each."""
        return _check(self.http.get(f"/instances/{instance_id}/shares"))

    def share(self, instance_id: str, *, user: str | None = None, group: str | None = None) -> dict[str, Any]:
        """Share the instance with ``user`` or with ``group``'s members (idempotent); the share."""
        body = {"user": user} if user is not None else {"group": group}
        return _check(self.http.post(f"/instances/{instance_id}/shares", json=body))

    def unshare(self, instance_id: str, *, user: str | None = None, group: str | None = None,
                share_id: int | None = None) -> dict[str, Any]:
        """Revoke the share of ``user``, of ``group`` or with id ``share_id`` (at once); the share revoked."""
        found = [s for s in self.shares(instance_id) if s["id"] == share_id
                 or (user is not None and s["user"] == user) or (group is not None and s["group"] == group)]
        if not found:
            whom = user or (f"group {group}" if group else f"share {share_id}")
            raise HubError(404, f"it is not shared with {whom}")
        _check(self.http.delete(f"/instances/{instance_id}/shares/{found[0]['id']}"))
        return found[0]

    def access(self, instance_id: str) -> dict[str, Any]:
        """Who besides its owner may use the instance: ``{"open_to": "users"|"anyone"|"", "shares": [...]}``."""
        return _check(self.http.get(f"/instances/{instance_id}/access"))

    def set_access(self, instance_id: str, open_to: str) -> dict[str, Any]:
        """Admins: open a workspace to every user (``"users"``), to anyone (``"anyone"``) or close it (``""``)."""
        return _check(self.http.put(f"/instances/{instance_id}/access", json={"open_to": open_to}))

    # -- quotas and group policy --------------------------------------------------------------
    def quota(self, user: str) -> dict[str, Any]:
        """``user``'s quota report (yours, or admins: anyone's): ``quota`` (their own limits, as set),
        ``limits`` in force (None: no limit), ``source`` of each (``user``, ``group:NAME``, ``site``),
        ``usage``, ``period``, ``period_start``, ``period_end``."""
        return _check(self.http.get(f"/users/{user}/quota"))

    def set_quota(self, user: str, quota: dict[str, Any]) -> dict[str, Any]:
        """Admins: replace ``user``'s own limits (absent keys inherit); ``{"quota", "over"}``, ``over``
        saying what running instances are now over the limits (they keep running)."""
        return _check(self.http.put(f"/users/{user}/quota", json=quota))

    def group_quota(self, group: str) -> dict[str, Any]:
        """``group``'s limits and launch policy: ``{"group", "quota", "priority", "self_service", "policy"}``."""
        return _check(self.http.get(f"/groups/{group}/quota"))

    def set_group_quota(self, group: str, quota: dict[str, Any]) -> dict[str, Any]:
        """Admins: replace ``group``'s limits for its members; ``{"quota", "over"}`` as :meth:`set_quota`."""
        return _check(self.http.put(f"/groups/{group}/quota", json=quota))

    def set_group_policy(self, group: str, *, priority: int | None = None, self_service: bool | None = None,
                         **policy: Any) -> dict[str, Any]:
        """Admins: set ``group``'s launch policy, replacing ``policy`` (``max_hours``, ``default_hours``,
        ``single_instance``, ``custom_size``: absent ones unset) and setting ``priority`` and
        ``self_service`` where given; the group as :meth:`group_quota` shows it."""
        body = {k: v for k, v in policy.items() if v is not None}
        if priority is not None:
            body["priority"] = priority
        if self_service is not None:
            body["self_service"] = self_service
        return _check(self.http.put(f"/groups/{group}/policy", json=body))

    # -- output ---------------------------------------------------------------------------
    def log(self, instance_id: str, *, follow: bool = True, start: int = -64 * 1024) -> Iterator[str]:
        """The instance's output as text chunks; while following, until the instance has ended."""
        with self.http.stream("GET", f"/instances/{instance_id}/log", params={"follow": follow, "start": start},
                              timeout=httpx.Timeout(30, read=None)) as resp:
            _ok(resp)
            yield from resp.iter_text()

    def metrics(self, instance_id: str) -> list[dict[str, Any]]:
        return _check(self.http.get(f"/instances/{instance_id}/metrics"))

    def artifacts(self, instance_id: str) -> dict[str, Any]:
        return _check(self.http.get(f"/instances/{instance_id}/artifacts"))

    def download(self, instance_id: str, dest: str | Path, *, path: str | None = None,
                 progress: Progress | None = None) -> Path:
        """One artifact (``path``) into the file or directory ``dest``; without ``path``, every artifact
        (the tar.gz the hub streams) extracted into the directory ``dest`` (artifact ``a/b`` as
        ``dest/a/b``)."""
        dest = Path(dest)
        if path is not None:
            target = dest / Path(path).name if dest.is_dir() else dest
            with self.http.stream("GET", f"/instances/{instance_id}/artifacts/{path}") as resp:
                _ok(resp)
                total = int(resp.headers["content-length"]) if "content-length" in resp.headers else None
                _save(resp.iter_bytes(CHUNK), target, total, progress)
            return target
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "artifacts.tar.gz"
            self.download_bundle(instance_id, archive, progress=progress)
            from labhub.files import archive as safe

            # the hub's own safe extraction: no link, absolute name or `..` from the bundle lands
            unpacked = Path(tmp) / "unpacked"
            unpacked.mkdir()
            safe.extract(archive, unpacked, safe.Limits(max_file_bytes=1 << 50, max_total_bytes=1 << 50,
                                                        max_files=10**7, max_ratio=1e9), strip_top=True)
            for item in unpacked.iterdir():  # the bundle's top directory (the job's name) is dest
                _merge_into(item, dest)
        return dest

    def download_bundle(self, instance_id: str, target: str | Path, *, progress: Progress | None = None) -> Path:
        with self.http.stream("GET", f"/instances/{instance_id}/artifacts.tar.gz",
                              timeout=httpx.Timeout(30, read=None)) as resp:
            _ok(resp)
            _save(resp.iter_bytes(CHUNK), Path(target), None, progress)
        return Path(target)

    # -- folders --------------------------------------------------------------------------
    def folders(self) -> list[dict[str, Any]]:
        return _check(self.http.get("/folders"))

    def folder(self, name: str) -> dict[str, Any]:
        return _check(self.http.get(f"/folders/{name}"))

    def upload(self, source: str | Path, *, folder: str, progress: Progress | None = None,
               strip_top: bool = False, filename: str | None = None) -> dict[str, Any]:
        """Upload a directory (its contents, sent as one tar.gz made while it is sent), an archive
        (extracted by the hub) or a single file (as ``filename``, default its own name) into ``folder``."""
        source = Path(source)
        if source.is_dir():
            return self._upload_dir(source, folder, progress)
        size = source.stat().st_size
        with open(source, "rb") as fh:
            resp = self.http.post(f"/folders/{folder}/upload", params={"filename": filename or source.name,
                                                                         "strip_top": strip_top},
                                  content=iter(_Reader(fh, size, progress)),
                                  headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                                  timeout=httpx.Timeout(30, read=None, write=None))
        return _check(resp)

    def _upload_dir(self, source: Path, folder: str, progress: Progress | None) -> dict[str, Any]:
        total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file() and not p.is_symlink())
        read_fd, write_fd = os.pipe()
        failure: list[BaseException] = []

        def pack() -> None:
            try:
                with os.fdopen(write_fd, "wb") as out, tarfile.open(fileobj=out, mode="w|gz") as tar:
                    for path in sorted(source.rglob("*")):
                        if path.is_file() and not path.is_symlink():
                            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                failure.append(exc)

        packer = threading.Thread(target=pack, daemon=True)
        packer.start()
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            with os.fdopen(read_fd, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    sent += len(chunk)
                    if progress is not None:
                        progress(min(sent, total), total)  # compressed bytes against raw: an estimate
                    yield chunk

        try:
            resp = self.http.post(f"/folders/{folder}/upload", params={"extract": "yes"}, content=body(),
                                  headers={"Content-Type": "application/gzip"},
                                  timeout=httpx.Timeout(30, read=None, write=None))
        finally:
            packer.join()
        if failure:
            raise failure[0]
        return _check(resp)

    def delete_folder(self, name: str, path: str | None = None) -> None:
        _check(self.http.delete(f"/folders/{name}" + (f"/files/{path}" if path else "")))


def _model_file_name(name: str) -> str:
    """``name`` as a model's path allows it: letters, digits, ``._-``, not starting with ``.`` or ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return "_" + cleaned if cleaned[:1] in (".", "-", "") else cleaned


def call_examples(url: str, model: str, *, public: bool = False,
                  keys: list[str] | None = None) -> dict[str, str]:
    """``curl`` commands calling the service at ``url`` (ending in ``/``) three ways: ``v2`` (KServe's
    Open Inference Protocol), ``v1`` (TensorFlow Serving's :predict) and ``tfaas`` (TFaaS's /json),
    with ``$TOKEN`` unless it is public.  ``keys``: the input names /json takes, when known.

    The hub's service page builds the same text in its script (static/service.js)."""
    names = keys or ["x1", "x2"]
    zeros = [0.0] * len(names)
    auth = "" if public else '-H "Authorization: Bearer $TOKEN" '
    head = f"curl {auth}-H 'Content-Type: application/json' \\\n  -d "
    v2 = {"inputs": [{"name": "INPUT", "shape": [1, len(names)], "datatype": "FP32", "data": zeros}]}
    return {
        "v2": f"# its inputs (names, datatypes, shapes): curl {auth}{url}v2/models/{model}\n"
              f"{head}{_quote(json.dumps(v2))} \\\n  {url}v2/models/{model}/infer",
        "v1": f"{head}{_quote(json.dumps({'instances': [zeros]}))} \\\n  {url}v1/models/{model}:predict",
        "tfaas": f"{head}{_quote(json.dumps({'keys': names, 'values': zeros, 'model': model}))} \\\n  {url}json",
    }


def _quote(text: str) -> str:
    """``text`` in single quotes for a POSIX shell."""
    return "'" + text.replace("'", "'\\''") + "'"


def _merge_into(source: Path, dest: Path) -> None:
    """Move ``source`` (a file or directory) into ``dest``, replacing files of the same path."""
    target = dest / source.name
    if source.is_dir() and target.is_dir():
        for item in source.iterdir():
            _merge_into(item, target)
    else:
        os.replace(source, target)


def _save(chunks: Iterator[bytes], target: Path, total: int | None, progress: Progress | None) -> None:
    """Write the chunks to ``target`` through a temporary file renamed at the end (no half file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    done = 0
    with open(partial, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    os.replace(partial, target)
