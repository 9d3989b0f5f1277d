"""labhub_serve's models: each file loaded by its format (Keras, ONNX, scikit-learn via skops or,
when asked for, pickles; TorchScript where torch is installed) behind one predictor interface, the
served version that holds it (:class:`Entry`), and labhub_train's preprocessing for the models it
trained.  Runs inside the serve runtime: imports nothing from LabHub."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_FORMAT = "labhub-train/1"
SUFFIXES = {".keras": "keras", ".onnx": "onnx", ".skops": "sklearn", ".joblib": "pickle", ".pkl": "pickle",
            ".pickle": "pickle", ".pt": "torchscript", ".pth": "torchscript", ".torchscript": "torchscript"}
_ONNX_NUMPY = {"float": "float32", "double": "float64", "string": "object"}  # the rest share numpy's names


# ---------------------------------------------------------------- loading models


@dataclass(frozen=True)
class Tensor:
    """An input or output as the model file declares it; ``None`` where it does not say."""

    name: str
    datatype: str | None = None  # an OIP datatype: FP32, INT64, BYTES, ...
    shape: tuple[int, ...] | None = None  # -1 for a dimension of any size
    exact: bool = True  # v2 requests must give this datatype (False: any that casts to it within its kind)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape or (-1,))}


@dataclass
class Predictor:
    """One loaded model file: its signature and a function from input arrays to output arrays."""

    format: str
    run: Callable[[list[Any]], list[Any]]  # ValueError for input the model rejects
    inputs: list[Tensor] = field(default_factory=list)  # empty: unknown, taken as the request gives them
    outputs: list[Tensor] = field(default_factory=list)
    keys: list[str] | None = None  # the feature names /json takes, where the model knows them


def load_predictor(path: Path, allow_pickle: bool) -> Predictor:
    """Load ``path`` by its suffix; a ValueError naming the file for anything that fails."""
    kind = SUFFIXES.get(path.suffix.lower())
    try:
        if kind is None:
            raise ValueError(f"unknown model format {path.suffix!r} (known: {', '.join(sorted(SUFFIXES))})")
        if kind == "pickle" and not allow_pickle:
            raise ValueError("pickled models run code when loaded; serve .skops instead, or pass --allow-pickle "
                             "for a file this account's user wrote")
        if not path.is_file():
            raise FileNotFoundError("no such file")
        loaders = {"keras": _keras, "onnx": _onnx, "sklearn": _skops, "pickle": _pickle, "torchscript": _torchscript}
        return loaders[kind](path)
    except Exception as exc:
        raise ValueError(f"{path.name}: {one_line(exc)}") from exc


def _datatype(dtype: Any) -> str | None:
    """The OIP datatype of a numpy-like dtype (name); None for one the protocol has no name for."""
    import numpy as np
    from kserve.utils.numpy_codec import from_np_dtype

    try:
        return from_np_dtype(np.dtype(dtype))
    except TypeError:
        return None


def _keras(path: Path) -> Predictor:
    import keras

    model = keras.saving.load_model(str(path), compile=False, safe_mode=True)

    def run(arrays: list[Any]) -> list[Any]:
        result = model.predict(arrays[0] if len(arrays) == 1 else arrays, verbose=0)
        return list(result) if isinstance(result, list | tuple) else [result]

    def tensor(t: Any, name: str) -> Tensor:
        return Tensor(name, _datatype(t.dtype), tuple(-1 if d is None else int(d) for d in t.shape))

    inputs = [tensor(t, t.name) for t in getattr(model, "inputs", None) or []]
    outputs = [tensor(t, f"output-{i}") for i, t in enumerate(getattr(model, "outputs", None) or [])]
    return Predictor("keras", run, inputs, outputs)


def _onnx(path: Path) -> Predictor:
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def tensor(arg: Any) -> Tensor | None:
        found = re.fullmatch(r"tensor\((\w+)\)", arg.type)
        if not found:
            return None
        shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape) if arg.shape is not None else None
        return Tensor(arg.name, _datatype(_ONNX_NUMPY.get(found[1], found[1])), shape)

    inputs = [t for t in map(tensor, session.get_inputs()) if t]
    outputs = [t for t in map(tensor, session.get_outputs()) if t]
    if len(inputs) != len(session.get_inputs()):
        raise ValueError("takes inputs that are not tensors, which this server cannot give")

    def run(arrays: list[Any]) -> list[Any]:
        try:
            return session.run([t.name for t in outputs], {t.name: a for t, a in zip(inputs, arrays, strict=True)})
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from exc

    return Predictor("onnx", run, inputs, outputs)


def _sklearn(estimator: Any, kind: str) -> Predictor:
    if not callable(getattr(estimator, "predict", None)):
        raise ValueError(f"holds a {type(estimator).__name__}, which has no predict()")
    width = getattr(estimator, "n_features_in_", None)
    names = getattr(estimator, "feature_names_in_", None)
    classes = getattr(estimator, "classes_", None)  # a classifier predicts its labels, a regressor numbers

    def run(arrays: list[Any]) -> list[Any]:
        return [estimator.predict(arrays[0])]

    inputs = [Tensor("input-0", "FP64", (-1, int(width)) if width is not None else None, exact=False)]
    outputs = [Tensor("output-0", _datatype(classes.dtype) if classes is not None else "FP64", (-1,))]
    return Predictor(kind, run, inputs, outputs, [str(n) for n in names] if names is not None else None)


def _skops(path: Path) -> Predictor:
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=path)
    if untrusted:
        raise ValueError(f"holds types skops does not trust by default, which this server refuses: {untrusted}")
    return _sklearn(skops.io.load(path), "sklearn")


def _pickle(path: Path) -> Predictor:
    import joblib

    return _sklearn(joblib.load(path), "pickle")


def _torchscript(path: Path) -> Predictor:
    try:
        import torch
    except ImportError as exc:
        raise ValueError("TorchScript needs torch, which this runtime does not include") from exc
    module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    def run(arrays: list[Any]) -> list[Any]:
        try:
            with torch.no_grad():
                result = module(*[torch.from_numpy(a.copy()) for a in arrays])
        except RuntimeError as exc:  # the interpreter's errors are the input's: dtypes, shapes
            raise ValueError(str(exc).strip().splitlines()[-1]) from exc
        results = result if isinstance(result, list | tuple) else [result]
        return [r.numpy() if isinstance(r, torch.Tensor) else r for r in results]

    return Predictor("torchscript", run)


# ---------------------------------------------------------------- one served version


@dataclass
class Entry:
    """One version of one model: its file (given by ``--model``, or uploaded: ``stored``) and what was loaded."""

    name: str
    version: str
    path: Path
    stored: bool = False
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


# ---------------------------------------------------------------- labhub_train's preprocessing


@dataclass(frozen=True)
class TrainSpec:
    """``NAME.json`` from labhub_train: how one event's branch values become the model's features."""

    columns: list[dict[str, Any]]
    features: int

    @classmethod
    def read(cls, path: Path) -> TrainSpec | None:
        """The spec in ``path``; None when the file is not one (other JSON beside a model is not ours)."""
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
            return None
        for column in spec["columns"]:
            if not len(column["min"]) == len(column["max"]) == column["width"]:
                raise ValueError(f"column {column['name']!r} has min/max lists unlike its width")
        if sum(column["width"] for column in spec["columns"]) != spec["features"]:
            raise ValueError(f"the columns' widths do not add up to its {spec['features']} features")
        return cls(spec["columns"], int(spec["features"]))

    def row(self, given: dict[str, Any]) -> Any:
        """As in training: (x - min) / (max - min), or x - min where max == min; jagged values padded or
        clipped to the width; missing (null, padding) and non-finite values 0."""
        import numpy as np

        unknown = sorted(set(given) - {column["name"] for column in self.columns})
        missing = [column["name"] for column in self.columns if column["name"] not in given]
        if unknown or missing:
            raise ValueError(f"keys must be the model's columns; unknown: {unknown}, missing: {missing}")
        row, offset = np.full(self.features, np.nan), 0
        for column in self.columns:
            value, width = given[column["name"]], column["width"]
            if column["kind"] == "scalar" and isinstance(value, list):
                raise ValueError(f"{column['name']!r} is one number per event, not a list")
            values = value if isinstance(value, list) else [value]
            if any(v is not None and (isinstance(v, bool) or not isinstance(v, int | float)) for v in values):
                raise ValueError(f"{column['name']!r} must be numbers (or null for missing)")
            kept = [np.nan if v is None else float(v) for v in values[:width]]
            row[offset:offset + len(kept)] = kept
            low = np.array([0.0 if v is None else v for v in column["min"]])  # None: never seen, as training
            high = np.array([0.0 if v is None else v for v in column["max"]])
            row[offset:offset + width] = (row[offset:offset + width] - low) / np.where(high > low, high - low, 1.0)
            offset += width
        row[~np.isfinite(row)] = 0.0
        return row.astype(np.float32)[None, :]


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
