"""Serve model files with KServe's model server: Open Inference Protocol v2, TF-Serving-style v1, TFaaS.

Runs inside the ``serve`` runtime (copied into its site-packages), never in the hub, so it imports
nothing from ``labhub``::

    python -m labhub_serve --model [NAME[@VERSION]=]PATH [--model ...] [--default NAME@VERSION ...]
        (--port N [--host ADDR] | --socket PATH | --fd N) [--allow-pickle]

Every model is loaded before anything listens: once the socket exists (or the port listens), all
models are ready. A file that does not load ends the program with status 1, the traceback on
stderr and, as its last line, one sentence naming the file: ``ValueError: higgs.keras: ...``.

Models. ``NAME`` defaults to the file's stem, ``VERSION`` (a positive integer) to 1. A name may
have several versions; a request that names none gets the default, the highest unless
``--default NAME@VERSION`` says otherwise. The format comes from the suffix:

* ``.keras``: Keras 3 native files on JAX's CPU backend, loaded in Keras' safe mode (no lambdas);
* ``.onnx``: ONNX Runtime on CPU (tensor outputs only: sequence and map outputs are left out);
* ``.skops``: scikit-learn estimators through skops, refusing every type skops does not trust by default;
* ``.joblib``, ``.pkl``, ``.pickle``: scikit-learn estimators through joblib, only with ``--allow-pickle``.
  Security: unpickling runs whatever code the file names, as this service's account. Pass the flag
  only for files that account's own user wrote, never for a file someone else can have written;
  ``.skops`` is the safe format;
* ``.pt``, ``.pth``, ``.torchscript``: TorchScript through ``torch.jit.load``, where torch is installed.
  The ``serve`` runtime leaves torch out (its CPU wheel is ~850 MB installed), so there they fail to load.

A ``.keras`` file written by ``labhub_train`` has ``NAME.json`` beside it (format ``labhub-train/1``:
columns, widths, mins, maxs). TFaaS ``/json`` requests then name those columns and get the training's
preprocessing; the protocols' own routes take the model's input tensors as they are.

Routes: KServe's, plus the version paths and TFaaS's two.

* v2: ``GET /v2/health/live|ready``, ``GET /v2/models/NAME[/versions/V][/ready]``, ``POST
  /v2/models/NAME[/versions/V]/infer``. A request must give each input's datatype exactly (scikit-learn
  takes any numbers) and a shape the model takes; otherwise 400 and the protocol's ``{"error": "..."}``;
  an unknown model or version is a 404;
* v1: ``GET /v1/models/NAME[/versions/V]`` (``{"name", "ready"}``), ``POST
  /v1/models/NAME[/versions/V]:predict`` with ``{"instances": [...]}`` (answered ``{"predictions":
  [...]}``) or ``{"inputs": ...}`` (answered ``{"outputs": ...}``); a model of several inputs takes
  objects keyed by input name. JSON numbers are cast to the model's datatype within their kind;
* ``GET /models``: each model's versions, default version, format and the keys ``/json`` takes;
* ``POST /json``: ``{"keys": [...], "values": [...], "model": NAME}`` (``NAME@V``, or a ``"version"``
  key, for another version; ``model`` may be left out when one name is served): one event, answered
  with the first output's row as a JSON list.

In KServe's registry each version is ``NAME@VERSION`` (the default one is ``NAME`` too), and
``/versions/V`` paths are rewritten to it. ``/v2/repository/...`` (loading and unloading models at
run time) answers 403: what a service serves is fixed when it starts.

Where to listen: ``--port`` on ``--host`` (default 127.0.0.1; 0 takes a free port, printed), a Unix
``--socket`` this program makes with mode 0600 (a stale socket file there is replaced), or ``--fd``,
a listening socket the parent bound and passed down. The instance's secret in the environment is
not used: the hub's proxy authenticates requests before they reach this server.
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
import threading
import traceback
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labhub_serve_models import Predictor, Tensor, TrainSpec, load_predictor, one_line

ENV_DEFAULTS = {"JAX_PLATFORMS": "cpu"}  # no probing for accelerators this runtime has no plugin for
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_MODEL_ARG = re.compile(rf"(?:(?P<name>{NAME})(?:@(?P<version>[0-9]{{1,9}}))?=)?(?P<path>.+)", re.S)
_VERSION_PATH = re.compile(rf"/(?P<api>v1|v2)/models/(?P<name>{NAME})/versions/(?P<version>[0-9]{{1,9}})(?P<rest>.*)")
_NOT_JSON = (b"", b"application/x-www-form-urlencoded", b"text/plain", b"application/octet-stream")


# ---------------------------------------------------------------- what is served


@dataclass
class Entry:
    """One version of one model: what ``--model`` named and what was loaded for it."""

    name: str
    version: str
    path: Path
    predictor: Predictor = field(init=False)
    spec: TrainSpec | None = None

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def keys(self) -> list[str] | None:
        return [column["name"] for column in self.spec.columns] if self.spec else self.predictor.keys

    def load(self, allow_pickle: bool) -> None:
        self.predictor = load_predictor(self.path, allow_pickle)
        sidecar = self.path.with_suffix(".json")
        if self.predictor.format != "keras" or not sidecar.is_file():
            return
        try:
            self.spec = TrainSpec.read(sidecar)
            shapes = [t.shape for t in self.predictor.inputs]
            if self.spec and not (len(shapes) == 1 and shapes[0] and shapes[0][-1] in (-1, self.spec.features)):
                raise ValueError(f"it describes {self.spec.features} features; {self.path.name} takes {shapes}")
        except Exception as exc:
            raise ValueError(f"{sidecar.name}: {one_line(exc)}") from exc

    def json_row(self, keys: Any, values: Any) -> Any:
        """The input of a TFaaS ``/json`` request: one event, its values named by keys."""
        import numpy as np

        if not isinstance(keys, list) or not isinstance(values, list) or len(keys) != len(values):
            raise ValueError('"keys" and "values" must be lists of the same length')
        given = dict(zip(map(str, keys), values, strict=True))
        if len(given) != len(keys):
            raise ValueError('"keys" names a key twice')
        if self.spec is not None:
            return self.spec.row(given)
        wanted = self.keys()
        if wanted is not None:  # a model that knows its features' names takes them in its own order
            if sorted(given) != sorted(wanted):
                raise ValueError(f"keys must be the model's features: {wanted}")
            values = [given[key] for key in wanted]
        try:
            return np.asarray([values], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'"values" must be numbers: {exc}') from exc


def parse_models(args: argparse.Namespace) -> tuple[dict[str, dict[str, Entry]], dict[str, str]]:
    """``--model`` and ``--default``: the entries by name and version, and each name's default version."""
    models: dict[str, dict[str, Entry]] = {}
    for text in args.model:
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
        if version in models.setdefault(name, {}):
            raise ValueError(f"--model {text!r}: {name}@{version} is given twice")
        models[name][version] = Entry(name, version, path)
    defaults = {name: max(versions, key=int) for name, versions in models.items()}
    for text in args.default:
        name, _, version = text.partition("@")
        if version not in models.get(name, {}):
            raise ValueError(f"--default {text!r}: no --model gives {name}@{version or '?'}")
        defaults[name] = version
    return models, defaults


def served_model_class() -> type:
    """The kserve.Model subclass; made when called, because this module imports kserve only then."""
    import numpy as np
    from kserve import InferOutput, InferRequest, InferResponse, Model
    from kserve.errors import InvalidInput
    from kserve.utils.numpy_codec import from_np_dtype, to_np_dtype

    def array(value: Any, what: str) -> Any:
        try:
            return np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{what}: not a tensor (rows of unequal length?): {exc}") from exc

    class Served(Model):
        """One version of one model in kserve's registry; v1, v2 and /json requests all end in :meth:`infer`."""

        def __init__(self, entry: Entry) -> None:
            super().__init__(entry.key)
            self.entry = entry
            self.predictor = entry.predictor
            self.lock = threading.Lock()  # one inference at a time per model: not every library is thread-safe
            self.ready = True

        def load(self) -> bool:
            self.ready = True
            return True

        def get_input_types(self) -> list[dict[str, Any]]:
            return [t.metadata() for t in self.predictor.inputs if t.datatype]

        def get_output_types(self) -> list[dict[str, Any]]:
            return [t.metadata() for t in self.predictor.outputs if t.datatype]

        async def infer(self, arrays: list[Any], typed: bool = False) -> list[Any]:
            """Check ``arrays`` against the declared inputs, then run the model off the event loop.

            ``typed``: the request declared datatypes (v2), which must be the model's; arrays from JSON
            without them (v1, /json) are cast to the model's datatype where numpy casts within a kind.
            """
            declared = self.predictor.inputs
            if declared:
                if len(arrays) != len(declared):
                    raise InvalidInput(f"{self.entry.key} takes {len(declared)} inputs; the request gives "
                                       f"{len(arrays)}")
                arrays = [self._conform(t, a, typed) for t, a in zip(declared, arrays, strict=True)]
            elif not typed:  # an unknown signature (TorchScript): JSON's floats as FP32, ML's usual
                arrays = [a.astype(np.float32) if a.dtype == np.float64 else a for a in arrays]

            def run() -> list[Any]:
                with self.lock:
                    return self.predictor.run(arrays)

            try:
                outputs = [np.asarray(o) for o in await asyncio.to_thread(run)]
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"{self.entry.key}: {one_line(exc)}") from exc
            return [o.astype(object) if o.dtype.kind in "US" else o for o in outputs]  # strings travel as BYTES

        def _conform(self, tensor: Tensor, data: Any, typed: bool) -> Any:
            where = f"input {tensor.name!r} of {self.entry.key}"
            target = np.dtype(to_np_dtype(tensor.datatype)) if tensor.datatype else data.dtype
            if target != data.dtype:
                if (typed and tensor.exact) or data.dtype.kind in "OUSV" or not np.can_cast(
                        data.dtype, target, "same_kind"):
                    raise InvalidInput(f"{where} is {tensor.datatype}; the request gives "
                                       f"{from_np_dtype(data.dtype) or data.dtype.name}")
                data = data.astype(target)
            if tensor.shape is not None and (len(tensor.shape) != data.ndim or any(
                    want not in (-1, got) for want, got in zip(tensor.shape, data.shape, strict=True))):
                raise InvalidInput(f"{where} has shape {list(tensor.shape)}; the request gives {list(data.shape)}")
            return data

        async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            if isinstance(payload, InferRequest):
                return await self._v2(payload)
            if isinstance(payload, dict):
                return await self._v1(payload)
            raise InvalidInput(f"cannot read a request of type {type(payload).__name__}")

        async def _v2(self, request: Any) -> Any:
            names = [t.name for t in self.predictor.inputs]
            order = list(request.inputs)  # one input (its name is the model's business) or an unknown signature
            if len(names) > 1:
                given = {i.name: i for i in request.inputs}
                unknown, missing = sorted(set(given) - set(names)), [n for n in names if n not in given]
                if unknown or missing:
                    raise InvalidInput(f"{self.entry.key} takes inputs {names}; unknown: {unknown}, missing: {missing}")
                order = [given[n] for n in names]
            arrays = []
            for infer_input in order:
                try:
                    arrays.append(infer_input.as_numpy())
                except (ValueError, TypeError) as exc:
                    raise InvalidInput(f"input {infer_input.name!r}: its data does not fill its shape "
                                       f"{infer_input.shape} as {infer_input.datatype}: {exc}") from exc
            outputs = await self.infer(arrays, typed=True)
            binary, infer_outputs = request.use_binary_outputs, []
            for name, data in zip(self._output_names(len(outputs)), outputs, strict=True):
                infer_outputs.append(InferOutput(name=name, shape=list(data.shape), datatype=from_np_dtype(data.dtype)))
                infer_outputs[-1].set_data_from_numpy(data, binary_data=binary)
            return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=self.entry.name,
                                 model_version=self.entry.version, infer_outputs=infer_outputs,
                                 use_binary_outputs=binary, requested_outputs=request.request_outputs)

        async def _v1(self, body: dict[str, Any]) -> dict[str, Any]:
            names = [t.name for t in self.predictor.inputs]
            if "instances" in body:  # rows
                value, answer = body["instances"], "predictions"
                if not isinstance(value, list):
                    raise InvalidInput('"instances" must be a list')
            elif "inputs" in body:  # columns
                value, answer = body["inputs"], "outputs"
            else:
                raise InvalidInput('a predict request gives "instances" or "inputs"')
            if answer == "predictions" and value and all(isinstance(row, dict) for row in value):
                if any(set(row) != set(names) for row in value):
                    raise InvalidInput(f"each instance must give exactly the inputs {names}")
                arrays = [array([row[n] for row in value], n) for n in names]
            elif isinstance(value, dict):
                if sorted(value) != sorted(names):
                    raise InvalidInput(f'"inputs" must give exactly the inputs {names}')
                arrays = [array(value[n], n) for n in names]
            elif len(names) > 1:
                raise InvalidInput(f"{self.entry.key} takes inputs {names}: give each by name")
            else:
                arrays = [array(value, answer)]
            outputs = await self.infer(arrays)
            labels = self._output_names(len(outputs))
            if len(outputs) == 1:
                return {answer: outputs[0].tolist()}
            if answer == "outputs":
                return {answer: {label: o.tolist() for label, o in zip(labels, outputs, strict=True)}}
            return {answer: [{label: o[i].tolist() for label, o in zip(labels, outputs, strict=True)}
                             for i in range(len(outputs[0]))]}

        def _output_names(self, count: int) -> list[str]:
            declared = [t.name for t in self.predictor.outputs]
            return declared if len(declared) == count else [f"output-{i}" for i in range(count)]

    return Served


def add_routes(app: Any, models: dict[str, dict[str, Entry]], defaults: dict[str, str], served: dict[str, Any]) -> None:
    """What LabHub adds to kserve's FastAPI app: TFaaS's routes, the version paths, no repository changes."""
    import numpy as np
    import orjson
    from kserve.errors import InvalidInput, ModelNotFound
    from starlette.responses import Response

    def answer(data: Any) -> Response:
        return Response(orjson.dumps(data), media_type="application/json")

    # Plain Starlette routes: FastAPI would take their (postponed) annotations for query parameters.
    async def tfaas_models(request: Any) -> Response:
        return answer([
            {"name": name, "versions": sorted(versions, key=int), "default_version": defaults[name],
             "format": versions[defaults[name]].predictor.format, "keys": versions[defaults[name]].keys()}
            for name, versions in sorted(models.items())])

    async def tfaas_json(request: Any) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise InvalidInput('the body must be an object: {"keys": [...], "values": [...], "model": NAME}')
        name = body.get("model", next(iter(models)) if len(models) == 1 else None)
        if not isinstance(name, str):
            raise InvalidInput(f'"model" must name one of the models: {sorted(models)}')
        name, _, version = name.partition("@")
        version = str(body.get("version") or version or defaults.get(name, ""))
        model = served.get(f"{name}@{version}")
        if model is None:
            raise ModelNotFound(f"{name}@{version}" if name in models else name)
        try:
            row = model.entry.json_row(body.get("keys"), body.get("values"))
        except ValueError as exc:
            raise InvalidInput(f"{model.entry.key}: {exc}") from exc
        outputs = await model.infer([row])
        return answer(np.asarray(outputs[0][0]).reshape(-1).tolist())

    app.add_route("/models", tfaas_models, methods=["GET"])
    app.add_route("/json", tfaas_json, methods=["POST"])
    app.add_middleware(_Paths)


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
                body = b'{"error":"this server\'s models are fixed when it starts: no loading or unloading"}'
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
    sock.listen(128)
    sock.setblocking(False)
    return sock


def serve(args: argparse.Namespace) -> None:
    import kserve
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    models, defaults = parse_models(args)
    for versions in models.values():
        for entry in versions.values():
            entry.load(args.allow_pickle)
    sock = listener(args)  # only now: a socket that exists (a port that listens) has every model ready
    server = kserve.ModelServer(enable_grpc=False, workers=1, enable_docs_url=False, enable_latency_logging=False)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # else two timing lines per request (and uvicorn's)
    # kserve 0.21 makes ORJSONResponse its app's default response class, which FastAPI now deprecates.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    served_class, served = served_model_class(), {}
    for name, versions in models.items():
        for version, entry in versions.items():
            model = served[entry.key] = served_class(entry)
            server.register_model(model, name=entry.key)
            if version == defaults[name]:
                server.register_model(model, name=name)
    add_routes(app, models, defaults, served)
    where = (f"socket {args.socket}" if args.socket else f"fd {args.fd}" if args.fd is not None
             else f"{args.host}:{sock.getsockname()[1]}")
    print(f"labhub_serve: serving {', '.join(sorted(served))} on {where}", flush=True)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension,
                      http_port=0, workers=1, grace_period=10)
    rest.run(sockets=[sock])  # uvicorn: SIGTERM or SIGINT -> graceful shutdown, then exit by that signal


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"labhub_serve arguments: {message}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m labhub_serve", description="Serve model files (KServe v2 and v1, TFaaS).")
    parser.add_argument("--model", action="append", required=True, metavar="[NAME[@VERSION]=]PATH",
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["KERAS_BACKEND"] = "jax"  # this runtime has no other backend
    try:
        args = parse(argv)
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
