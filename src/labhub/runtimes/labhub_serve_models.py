"""labhub_serve's models: each file loaded by its format (Keras, ONNX, scikit-learn via skops or,
when asked for, pickles; TorchScript where torch is installed) behind one predictor interface, and
labhub_train's preprocessing for the models it trained.  Runs inside the serve runtime: imports
nothing from LabHub."""

from __future__ import annotations

import json
import re
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
