"""Serve model files with KServe's model server: Open Inference Protocol v2, TF-Serving-style v1, TFaaS.

Runs inside the ``serve`` runtime (copied into its site-packages), never in the hub, so it imports
nothing from ``labhub``::

    python -m labhub_serve [--model [NAME[@VERSION]=]PATH ...] [--store DIR [--max-upload-bytes N]]
        [--default NAME@VERSION ...] (--port N [--host ADDR] | --socket PATH | --fd N) [--allow-pickle]

At least one ``--model`` or a ``--store`` is given. Every model is loaded before anything listens:
once the socket exists (or the port listens), all models are ready. A file that does not load ends
the program with status 1, the traceback on stderr and, as its last line, one sentence naming the
file: ``ValueError: higgs.keras: ...``.

Models. ``NAME`` defaults to the file's stem, ``VERSION`` (a positive integer) to 1. A name may
have several versions; a request that names none gets the default: the highest, unless one was
chosen (``--default NAME@VERSION``, or ``PUT /models/NAME/default`` while serving), which stays the
default until it is deleted. The format comes from the suffix:

* ``.keras``: Keras 3 native files on JAX's CPU backend, loaded in Keras' safe mode (no lambdas);
* ``.onnx``: ONNX Runtime on CPU (tensor outputs only: sequence and map outputs are left out);
* ``.skops``: scikit-learn estimators through skops, refusing every type skops does not trust by default;
* ``.joblib``, ``.pkl``, ``.pickle``: scikit-learn estimators through joblib, only with ``--allow-pickle``.
  Security: unpickling runs whatever code the file names, as this service's account. Pass the flag
  only for files that account's own user wrote, never for a file someone else can have written
  (nor with a ``--store`` others may upload to); ``.skops`` is the safe format;
* ``.pt``, ``.pth``, ``.torchscript``: TorchScript through ``torch.jit.load`` on the CPU. Such a file declares
  no signature: v2 requests are taken with the datatypes they give, v1's JSON numbers as FP32.

A ``.keras`` file written by ``labhub_train`` has ``NAME.json`` beside it (format ``labhub-train/1``:
columns, widths, mins, maxs). TFaaS ``/json`` requests then name those columns and get the training's
preprocessing; the protocols' own routes take the model's input tensors as they are.

The store. With ``--store DIR`` (made, mode 0700, where missing) versions can be uploaded and deleted
while serving. Each is kept as ``DIR/NAME/VERSION/model.SUFFIX`` (``model.json`` beside it for a
spec), and every version found there is loaded at start like a ``--model`` (``--default`` may name
it), so a restart serves what was uploaded; a chosen default is not kept across restarts. An upload
is written to disk as it arrives (``DIR/.incoming``, cleared at start), at most
``--max-upload-bytes`` (default 1 GiB) of body; nothing is served or kept until its model loaded.

Routes: KServe's, plus the version paths, TFaaS's, the store's and the metrics.

* v2: ``GET /v2/health/live|ready``, ``GET /v2/models/NAME[/versions/V][/ready]``, ``POST
  /v2/models/NAME[/versions/V]/infer``. A request must give each input's datatype exactly (scikit-learn
  takes any numbers) and a shape the model takes; otherwise 400 and the protocol's ``{"error": "..."}``;
  an unknown model or version is a 404;
* v1: ``GET /v1/models/NAME[/versions/V]``, TF-Serving's model status: ``{"model_version_status":
  [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}, ...]}``,
  one entry per version (the one asked for with ``/versions/V``); 404 for what is not served. ``POST
  /v1/models/NAME[/versions/V]:predict`` with ``{"instances": [...]}`` (answered ``{"predictions":
  [...]}``) or ``{"inputs": ...}`` (answered ``{"outputs": ...}``); a model of several inputs takes
  objects keyed by input name. JSON numbers are cast to the model's datatype within their kind;
* ``GET /models``: each model's ``name``, ``versions``, ``default_version``, ``uploaded_versions`` (those
  in the store), ``format`` and the ``keys`` ``/json`` takes;
* ``PUT /models/NAME/default`` with ``{"version": V}`` (a string or an integer): V becomes NAME's
  default for v1, v2 and ``/json`` at once; answered 200 with NAME as ``GET /models`` lists it; 404 for an
  unknown model or version, 400 for another body;
* ``POST /json``: ``{"keys": [...], "values": [...], "model": NAME}`` (``NAME@V``, or a ``"version"``
  key, for another version; ``model`` may be left out when one name is served): one event, answered
  with the first output's row as a JSON list;
* ``POST /upload[?name=NAME&version=V]``: multipart/form-data with the fields ``name``, ``version`` (text;
  the query's where the form has none), ``file`` (or TFaaS's ``model``: the model file, its suffix the
  format) and optionally ``spec`` (or ``params``: labhub_train's ``.json``); or TFaaS's raw form, a
  ``.tar.gz`` body (``Content-Type: application/octet-stream`` or ``application/gzip``) of one model file
  and at most one ``.json``, regular files at its top level (links, folders and other paths are
  refused, and more than ``--max-upload-bytes`` unpacked). NAME defaults to the model file's stem,
  V to the name's highest version + 1. Answered 201 with NAME as ``GET /models`` lists it and the
  ``version`` made; 400 for a body that is not such an upload or a model that does not load (the
  loader's one line), 409 for a version served already, 413 past ``--max-upload-bytes``, 415 for
  another content type;
* ``DELETE /delete`` with ``{"model": NAME}`` (every uploaded version of NAME) or ``{"model": NAME,
  "version": V}`` (or ``"NAME@V"``): no longer served, and removed from the store; answered 200 with
  ``{"name", "deleted": [...], "versions": [...left], "default_version"}`` (the highest left when the
  default went; null when none is left); 404 for what is not served, 403 for a version ``--model``
  gave (those cannot be deleted), 400 for another body. Without ``--store``, ``/upload`` and
  ``/delete`` answer 403;
* ``GET /metrics``: Prometheus' text format 0.0.4, kserve's metrics (process, ``request_*_seconds``)
  then this program's, kept in a registry of their own: ``labhub_serve_requests_total{model, version,
  protocol, code}`` and the histogram ``labhub_serve_request_seconds{model, version, protocol}`` (buckets
  0.5 ms to 10 s) of every v2 infer, v1 predict and ``/json`` request (``protocol`` v2, v1, tfaas;
  ``code`` its HTTP status), timed from arrival to the answer's last byte. ``model`` and ``version`` are
  what the request resolved to (the default version where it named none); blank where it names no
  served model or version.

Errors are the protocols' ``{"error": "..."}`` throughout. In KServe's registry each version is
``NAME@VERSION`` (the default one is ``NAME`` too), and ``/versions/V`` paths are rewritten to it.
KServe's own ``/v2/repository/...`` (loading and unloading by name from its model directory) answers
403: this server changes what it serves only through ``/upload`` and ``/delete``.

Where to listen: ``--port`` on ``--host`` (default 127.0.0.1; 0 takes a free port, printed), a Unix
``--socket`` this program makes with mode 0600 (a stale socket file there is replaced), or ``--fd``,
a socket the parent bound and passed down (listened on here, once every model is loaded). The
instance's secret in the environment is not used: the hub's proxy authenticates requests before they
reach this server.

``--replicas N`` (default 1): N serving processes on the one socket, each with every model, the kernel
spreading connections over them; ``/metrics`` sums all of them; uploads, deletes and default changes
answer 409 (each replica serves what it started with). See labhub_serve_replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import socket
import stat
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from labhub_serve_metrics import LABELS, Metrics, MetricsMiddleware
from labhub_serve_models import Entry, one_line, served_model_class
from labhub_serve_replicas import REPLICA_ENV, supervise
from labhub_serve_store import NAME, VERSION, Refused, Store, Upload

ENV_DEFAULTS = {"JAX_PLATFORMS": "cpu"}  # no probing for accelerators this runtime has no plugin for
_MODEL_ARG = re.compile(rf"(?:(?P<name>{NAME})(?:@(?P<version>[0-9]{{1,9}}))?=)?(?P<path>.+)", re.S)
_VERSION_PATH = re.compile(rf"/(?P<api>v1|v2)/models/(?P<name>{NAME})/versions/(?P<version>[0-9]{{1,9}})(?P<rest>.*)")
_NOT_JSON = (b"", b"application/x-www-form-urlencoded", b"text/plain", b"application/octet-stream")


# ---------------------------------------------------------------- what is served


def parse_models(texts: list[str]) -> list[Entry]:
    """``--model`` arguments: one entry (not loaded yet) each."""
    entries: dict[str, Entry] = {}
    for text in texts:
        found = _MODEL_ARG.fullmatch(text)
        if not found:
            raise ValueError(f"--model {text!r}: give [NAME[@VERSION]=]PATH")
        path = Path(found["path"])
        name = found["name"] or path.stem
        if not re.fullmatch(NAME, name):
            raise ValueError(f"--model {text!r}: {name!r} is not a model name; name it (NAME=PATH)")
        version = str(int(found["version"] or 1))
        if version == "0":
            raise ValueError(f"--model {text!r}: versions are positive integers")
        entry = Entry(name, version, path)
        if entry.key in entries:
            raise ValueError(f"--model {text!r}: {entry.key} is given twice")
        entries[entry.key] = entry
    return list(entries.values())


def stored_entries(store: Store, given: list[Entry]) -> list[Entry]:
    """The versions uploaded to ``store`` by earlier runs (not loaded yet); none may be one ``--model`` gives."""
    keys = {entry.key for entry in given}
    entries = [Entry(name, version, path, stored=True) for name, version, path in store.scan()]
    for entry in entries:
        if entry.key in keys:
            raise ValueError(f"--store {store.root} holds {entry.key}, which a --model gives too")
    return entries


def parse_defaults(texts: list[str], entries: list[Entry]) -> dict[str, str]:
    """``--default NAME@VERSION`` arguments: the version each chooses, by name."""
    keys, defaults = {entry.key for entry in entries}, {}
    for text in texts:
        name, _, version = text.partition("@")
        if text not in keys:
            raise ValueError(f"--default {text!r}: neither a --model nor the --store gives {name}@{version or '?'}")
        defaults[name] = version
    return defaults


def parse_version(value: Any) -> str:
    """A version as a request gives it (``"2"`` or ``2``), as this server writes it; InvalidInput otherwise."""
    from kserve.errors import InvalidInput

    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) == 0:
        raise InvalidInput(f"a version is a positive integer, not {value!r}")
    return str(int(text))


def not_found(name: str) -> Exception:
    from kserve.errors import ModelNotFound

    return ModelNotFound(name)


class Catalog:
    """What is served: each name's versions and default version, kept in step with kserve's registry,
    where each version is ``NAME@VERSION`` and the default one is ``NAME`` too.

    A name's default is its highest version unless one was chosen (``--default``, ``PUT
    /models/NAME/default``); a chosen one stays until it is deleted. Every change is made on the event
    loop with no await inside it, so a request finds the registry as before a change or after it, never
    halfway; ``pending`` holds the versions an upload or a delete is still busy with.
    """

    def __init__(self, registry: Any, served_class: type, store: Store | None, allow_pickle: bool) -> None:
        self.registry = registry  # kserve's ModelRepository
        self.served_class = served_class
        self.store = store
        self.allow_pickle = allow_pickle
        self.models: dict[str, dict[str, Entry]] = {}
        self.defaults: dict[str, str] = {}
        self.chosen: set[str] = set()  # names whose default was chosen rather than the highest
        self.served: dict[str, Any] = {}  # NAME@VERSION -> its kserve model
        self.pending: set[str] = set()

    def add(self, entry: Entry) -> None:
        """Serve the loaded ``entry`` as ``NAME@VERSION`` (and as ``NAME`` when it becomes the default)."""
        model = self.served[entry.key] = self.served_class(entry)
        self.models.setdefault(entry.name, {})[entry.version] = entry
        self.registry.update(model, entry.key)
        self._repoint(entry.name)

    def choose_default(self, name: str, version: str) -> None:
        """Make ``version`` ``name``'s default; ModelNotFound (404) where either is not served."""
        self.find(name, version)
        self.defaults[name] = version
        self.chosen.add(name)
        self._repoint(name)

    def find(self, name: str, version: str = "") -> Entry:
        """``name``'s ``version``, or its default; ModelNotFound (404) where it is not served."""
        versions = self.models.get(name)
        if versions is None:
            raise not_found(name)
        entry = versions.get(version or self.defaults[name])
        if entry is None:
            raise not_found(f"{name}@{version}")
        return entry

    def labels(self, target: str) -> tuple[str, str]:
        """The metrics' (model, version) for a path's ``NAME`` or ``NAME@V``: blank for what is not served."""
        name, _, version = target.partition("@")
        versions = self.models.get(name)
        if versions is None:
            return "", ""
        version = version or self.defaults[name]
        return (name, version) if version in versions else (name, "")

    def describe(self, name: str) -> dict[str, Any]:
        """``name`` as ``GET /models`` lists it."""
        versions, default = self.models[name], self.defaults[name]
        return {"name": name, "versions": sorted(versions, key=int), "default_version": default,
                "uploaded_versions": sorted((v for v, e in versions.items() if e.stored), key=int),
                "format": versions[default].predictor.format, "keys": versions[default].keys()}

    async def upload(self, upload: Upload) -> Entry:
        """Load ``upload`` off the event loop, store it and serve it; the store keeps nothing of one refused:
        400 for a bad name or version or a file that does not load (the loader's one line), 409 for a
        version served already."""
        assert self.store is not None
        try:
            entry = self._reserve(upload)
            try:
                await self._load(entry)
                entry.path = self.store.commit(upload, entry.name, entry.version)
            finally:
                self.pending.discard(entry.key)
        except BaseException:
            self.store.discard(upload)
            raise
        self.add(entry)
        return entry

    def _reserve(self, upload: Upload) -> Entry:
        """The entry ``upload`` is to become, its version held in ``pending``."""
        name = upload.fields.get("name") or upload.stem
        if not re.fullmatch(NAME, name):
            raise Refused(400, f"{name!r} is not a model name: give name= (letters, digits, '_.-')")
        version = upload.fields.get("version") or self._next_version(name)
        if not re.fullmatch(VERSION, version):
            raise Refused(400, f"version {version!r}: a version is a positive integer")
        entry = Entry(name, version, upload.model, stored=True)
        if entry.key in self.pending or version in self.models.get(name, {}):
            raise Refused(409, f"{entry.key} is served already: delete it first, or upload another version")
        self.pending.add(entry.key)
        return entry

    async def delete(self, name: str, version: str | None) -> list[str]:
        """Stop serving ``name``'s uploaded ``version`` (all of them: None), then remove them from the store;
        the versions deleted. 404 for what is not served, 403 for a version ``--model`` gave."""
        versions = self.models.get(name)
        if versions is None or (version is not None and version not in versions):
            raise not_found(name if versions is None else f"{name}@{version}")
        doomed = [version] if version is not None else sorted((v for v, e in versions.items() if e.stored), key=int)
        if version is not None and not versions[version].stored:
            raise Refused(403, f"{name}@{version} was given on the command line (--model): only uploaded "
                               "versions can be deleted")
        if not doomed:
            raise Refused(403, f"{name}'s versions were all given on the command line (--model): only uploaded "
                               "versions can be deleted")
        keys = [f"{name}@{v}" for v in doomed]
        if self.pending.intersection(keys):
            raise Refused(409, f"{name}@{doomed[0]} is being uploaded or deleted: try again")
        for v in doomed:
            del versions[v]
            self.registry.unload(f"{name}@{v}")
            del self.served[f"{name}@{v}"]
        self._repoint(name)
        self.pending.update(keys)
        try:
            assert self.store is not None
            for v in doomed:
                await asyncio.to_thread(self.store.remove, name, v)
        finally:
            self.pending.difference_update(keys)
            self.store.prune(name)
        return doomed

    async def _load(self, entry: Entry) -> None:
        try:
            await asyncio.to_thread(entry.load, self.allow_pickle)
        except Exception as exc:
            raise Refused(400, f"cannot load {entry.key}: {' '.join(str(exc).split())}") from exc

    def _next_version(self, name: str) -> str:
        taken = [int(v) for v in self.models.get(name, {})]
        taken += [int(key.partition("@")[2]) for key in self.pending if key.partition("@")[0] == name]
        return str(max(taken, default=0) + 1)

    def _repoint(self, name: str) -> None:
        """Point kserve's ``NAME`` at ``name``'s default version, choosing the highest where none is
        chosen or the chosen one is gone; drop ``NAME`` when it has no versions left."""
        versions = self.models.get(name)
        if not versions:
            self.models.pop(name, None)
            self.defaults.pop(name, None)
            self.chosen.discard(name)
            if self.registry.get_model(name) is not None:
                self.registry.unload(name)
            return
        if name not in self.chosen or self.defaults.get(name) not in versions:
            self.chosen.discard(name)
            self.defaults[name] = max(versions, key=int)
        self.registry.update(self.served[f"{name}@{self.defaults[name]}"], name)


def add_routes(app: Any, catalog: Catalog, metrics: Metrics) -> None:
    """What LabHub adds to kserve's FastAPI app: TFaaS's routes, TF-Serving's model status, uploads and
    deletes, default switching, metrics, the version paths; no repository changes."""
    import numpy as np
    import orjson
    from kserve.errors import InvalidInput
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.responses import Response

    def answer(data: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(data), status, media_type="application/json")

    async def json_body(request: Any) -> Any:
        try:
            return orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the body is not JSON: {exc}") from exc

    def store() -> Store:
        if catalog.store is None:
            raise Refused(403, "this server has no --store: its models are fixed when it starts")
        if os.environ.get(REPLICA_ENV):
            raise Refused(409, "this service runs several replicas, each with what it started with: upload, delete "
                               "and choose defaults with one replica")
        return catalog.store

    # Plain Starlette routes: FastAPI would take their (postponed) annotations for query parameters.
    async def tfaas_models(request: Any) -> Response:
        return answer([catalog.describe(name) for name in sorted(catalog.models)])

    async def choose_default(request: Any) -> Response:
        if os.environ.get(REPLICA_ENV):
            store()  # 409: one replica's choice would not be the others'
        body = await json_body(request)
        if not isinstance(body, dict) or "version" not in body:
            raise InvalidInput('the body must be {"version": V}')
        name = request.path_params["name"]
        catalog.choose_default(name, parse_version(body["version"]))
        return answer(catalog.describe(name))

    async def tfaas_json(request: Any) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput('the body must be an object: {"keys": [...], "values": [...], "model": NAME}')
        name = body.get("model", next(iter(catalog.models)) if len(catalog.models) == 1 else None)
        if not isinstance(name, str):
            raise InvalidInput(f'"model" must name one of the models: {sorted(catalog.models)}')
        name, _, version = name.partition("@")
        version = str(body.get("version") or version)
        labels = request.scope.get(LABELS)  # the metrics middleware's, to learn which model this is
        if labels is not None:
            labels[:] = catalog.labels(f"{name}@{version}" if version else name)
        model = catalog.served[catalog.find(name, version).key]
        try:
            row = model.entry.json_row(body.get("keys"), body.get("values"))
        except ValueError as exc:
            raise InvalidInput(f"{model.entry.key}: {exc}") from exc
        outputs = await model.infer([row])
        return answer(np.asarray(outputs[0][0]).reshape(-1).tolist())

    async def upload(request: Any) -> Response:
        received = await store().receive(request.headers, request.query_params, request.stream())
        entry = await catalog.upload(received)
        return answer({**catalog.describe(entry.name), "version": entry.version}, 201)

    async def delete(request: Any) -> Response:
        store()
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise InvalidInput('the body must be {"model": NAME} or {"model": NAME, "version": V}')
        name, _, version = body["model"].partition("@")
        given = [parse_version(v) for v in (version or None, body.get("version")) if v is not None]
        if len(set(given)) > 1:
            raise InvalidInput(f"{body['model']!r} and \"version\" name different versions")
        deleted = await catalog.delete(name, given[0] if given else None)
        left = catalog.describe(name) if name in catalog.models else {"versions": [], "default_version": None}
        return answer({"name": name, "deleted": deleted, "versions": left["versions"],
                       "default_version": left["default_version"]})

    async def tf_serving_status(request: Any) -> Response:
        name, _, version = request.path_params["name"].partition("@")
        entry = catalog.find(name, version)  # 404 for what is not served
        listed = [entry.version] if version else sorted(catalog.models[name], key=int)
        return answer({"model_version_status": [
            {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in listed]})

    async def exposition(request: Any) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def refused(request: Any, exc: Refused) -> Response:
        return answer({"error": str(exc)}, exc.status)

    # Added before kserve adds its own (RESTServer.create_application): these paths are answered here.
    app.add_route("/models", tfaas_models, methods=["GET"])
    app.add_route("/models/{name}/default", choose_default, methods=["PUT"])
    app.add_route("/json", tfaas_json, methods=["POST"])
    app.add_route("/upload", upload, methods=["POST"])
    app.add_route("/delete", delete, methods=["DELETE"])
    app.add_route("/v1/models/{name}", tf_serving_status, methods=["GET"])
    app.add_route("/metrics", exposition, methods=["GET"])
    app.add_exception_handler(Refused, refused)
    app.add_middleware(MetricsMiddleware, metrics=metrics, resolve=catalog.labels)
    app.add_middleware(_Paths)  # outside the metrics: they see NAME@V for a /versions/V path


class _Paths:
    """ASGI middleware: ``/v1|v2/models/NAME/versions/V...`` -> ``NAME@V``; ``/v2/repository`` refused.

    And a v1 or v2 request body without a JSON content type (tritonclient's JSON requests, ``curl -d``)
    is read as JSON, as both protocols have it, unless it has the v2 binary extension's header:
    kserve would take it for bytes.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith("/v2/repository/"):
                body = (b'{"error":"no loading or unloading by name: models are added by POST /upload and removed '
                        b'by DELETE /delete (with --store)"}')
                await send({"type": "http.response.start", "status": 403, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            found = _VERSION_PATH.fullmatch(path)
            if found:
                path = f"/{found['api']}/models/{found['name']}@{int(found['version'])}{found['rest']}"
                scope = dict(scope, path=path, raw_path=path.encode())
            headers = dict(scope["headers"])
            if (scope["method"] == "POST" and path.endswith(("/infer", ":predict"))
                    and b"inference-header-content-length" not in headers
                    and headers.get(b"content-type", b"").split(b";")[0].strip().lower() in _NOT_JSON):
                scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k != b"content-type"]
                             + [(b"content-type", b"application/json")])
        await self.app(scope, receive, send)


# ---------------------------------------------------------------- listening and the program


def listener(args: argparse.Namespace) -> socket.socket:
    """The listening socket: bound here (TCP, or a Unix socket only this account can use) or inherited."""
    sock = bound(args)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def bound(args: argparse.Namespace) -> socket.socket:
    """The socket to listen on, bound but not listening yet (connections are refused until it listens)."""
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"--fd {args.fd} is not a stream socket")
    elif args.socket is not None:
        path = Path(args.socket)
        if path.is_symlink() or (path.exists() and not stat.S_ISSOCK(path.lstat().st_mode)):
            raise ValueError(f"--socket {path} exists and is not a socket; refusing to replace it")
        path.unlink(missing_ok=True)  # a socket left by an earlier run of this instance
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # mode 0600 from the start: no moment at which another account may connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
    return sock


def serve(args: argparse.Namespace) -> None:
    import kserve
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    entries = parse_models(args.model)
    store = Store.open(Path(args.store), args.max_upload_bytes) if args.store else None
    entries += stored_entries(store, entries) if store else []
    defaults = parse_defaults(args.default, entries)
    for entry in entries:
        entry.load(args.allow_pickle)
    sock = listener(args)  # only now: a socket that listens has every model ready
    server = kserve.ModelServer(enable_grpc=False, workers=1, enable_docs_url=False, enable_latency_logging=False)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # else two timing lines per request (and uvicorn's)
    # kserve 0.21 makes ORJSONResponse its app's default response class, which FastAPI now deprecates.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    catalog = Catalog(server.registered_models, served_model_class(), store, args.allow_pickle)
    for entry in entries:
        catalog.add(entry)
    for name, version in defaults.items():
        catalog.choose_default(name, version)
    add_routes(app, catalog, Metrics())
    where = (f"socket {args.socket}" if args.socket else f"fd {args.fd}" if args.fd is not None
             else f"{args.host}:{sock.getsockname()[1]}")
    print(f"labhub_serve: serving {', '.join(sorted(catalog.served)) or 'no models yet'} on {where}", flush=True)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension,
                      http_port=0, workers=1, grace_period=10)
    rest.run(sockets=[sock])  # uvicorn: SIGTERM or SIGINT -> graceful shutdown, then exit by that signal


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"labhub_serve arguments: {message}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m labhub_serve", description="Serve model files (KServe v2 and v1, TFaaS).")
    parser.add_argument("--model", action="append", default=[], metavar="[NAME[@VERSION]=]PATH",
                        help="a model file to serve; repeat for more models and versions")
    parser.add_argument("--default", action="append", default=[], metavar="NAME@VERSION",
                        help="the version a request that names none gets (default: the highest)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="listen on this TCP port (0: a free one)")
    where.add_argument("--socket", help="listen on a Unix socket made at this path, mode 0600")
    where.add_argument("--fd", type=int, help="listen on this inherited, bound socket")
    parser.add_argument("--host", default="127.0.0.1", help="the address --port binds (default 127.0.0.1)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load .joblib/.pkl/.pickle files (unpickling runs code: only this user's own files)")
    parser.add_argument("--store", metavar="DIR",
                        help="keep uploaded model versions here, and serve those an earlier run kept")
    parser.add_argument("--max-upload-bytes", type=int, default=1 << 30, metavar="N",
                        help="the largest upload body taken (default 1 GiB)")
    parser.add_argument("--replicas", type=int, default=1, metavar="N",
                        help="serving processes sharing the listening socket, each with every model (default 1)")
    args = parser.parse_args(argv)
    if not 1 <= args.replicas <= 64:
        parser.error("--replicas must be 1 to 64")
    if not args.model and not args.store:
        parser.error("give a --model, a --store, or both")
    if args.max_upload_bytes < 1:
        parser.error("--max-upload-bytes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["KERAS_BACKEND"] = "jax"  # this runtime has no other backend
    try:
        args = parse(argv)
        if args.replicas > 1:
            return supervise(args, bound(args))
        sys.argv[1:] = []  # kserve parses sys.argv when first imported: it must see none of ours
        serve(args)
    except (Exception, KeyboardInterrupt) as exc:
        sys.stdout.flush()
        traceback.print_exc()
        print(one_line(exc), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
