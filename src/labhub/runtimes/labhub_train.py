"""Train a Keras model on ROOT trees, following MLaaS4HEP's job contract.

Runs inside the ``train`` runtime (copied into its site-packages), never in the hub, so it imports
nothing from ``labhub``::

    python -m labhub_train --files files.txt --labels labels.txt --model model.py \\
        --params params.json --fout NAME

The job contract comes from the environment:

* ``LABHUB_INPUT``: the input folder (read-only); the arguments and local ROOT files are paths in it;
* ``LABHUB_OUTPUT``: an existing directory; ``NAME.keras`` (the model) and ``NAME.json`` (what a
  server needs to reproduce the preprocessing) are written there;
* ``LABHUB_METRICS`` (optional): a file to which one JSON object per epoch is appended.

``files.txt`` names one ROOT file per line (a path in the folder, or an ``http(s)://`` or
``root://`` URL; blank lines and ``#`` comments are skipped) and ``labels.txt`` one class label per
file, in the same order (classes are numbered 0..n-1: integers in order, names in order of appearance). The model file
defines ``model(idim)`` returning a compiled Keras model. ``params.json`` keys: ``nevts`` (events
per file, -1 for all), ``chunk_size``, ``epochs``, ``batch_size``, ``branch`` (the tree),
``selected_branches`` (empty: every numeric branch), ``exclude_branches``, ``identifier`` (id
branches, dropped), and LabHub's ``shuffle``, ``seed`` and ``validation_split``; any other key is
ignored with a warning.

Preprocessing: trees are read in chunks; a jagged branch becomes a fixed number of columns (the
longest entry read), shorter entries padded; every column is scaled to [0, 1] by its min and max
over the data read, and missing or non-finite values (padding) become 0 after scaling.

Progress goes to stdout. On failure the exit status is 1, the traceback goes to stderr, and the
last line of stderr is one sentence starting with the exception's type.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import runpy
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REMOTE_SCHEMES = ("http://", "https://", "root://")
FORMAT = "labhub-train/1"
DEFAULTS: dict[str, Any] = {
    "nevts": -1,
    "chunk_size": 10000,
    "epochs": 5,
    "batch_size": 256,
    "branch": None,  # None: the file's only tree
    "selected_branches": [],
    "exclude_branches": [],
    "identifier": [],
    "shuffle": True,
    "seed": None,
    "validation_split": 0.2,
}
# Defaults that must be in place before the libraries load; the job's own environment wins for
# all but KERAS_BACKEND (this runtime has no other backend).
ENV_DEFAULTS = {
    "JAX_PLATFORMS": "cpu",  # no probing for GPUs/TPUs this runtime has no plugin for
    # XRootD's client retries an unreachable server for minutes by default (5 x 120 s).
    "XRD_CONNECTIONRETRY": "2",
    "XRD_CONNECTIONWINDOW": "10",
}


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- the job's inputs


@dataclass(frozen=True)
class Job:
    input: Path
    output: Path
    metrics: Path | None


@dataclass
class Source:
    """One line of files.txt: a path in the input folder or a URL, and the class it holds."""

    name: str  # as written in files.txt
    path: Path | None  # resolved local path; None for a URL
    label: str
    target: int = 0
    events: int = 0


@dataclass
class Column:
    """One branch as model input: ``width`` columns of the matrix, each with its min and max."""

    name: str
    kind: str  # "scalar", "array" (fixed size) or "jagged"
    width: int = 1
    mins: list[float | None] = field(default_factory=list)
    maxs: list[float | None] = field(default_factory=list)


def job_from_env(environ: dict[str, str] | os._Environ[str]) -> Job:
    def directory(key: str) -> Path:
        value = environ.get(key)
        if not value:
            raise ValueError(f"{key} is not set: the job contract names the input and output directories")
        path = Path(value)
        if not path.is_dir():
            raise NotADirectoryError(f"{key}={value} is not a directory")
        return path.resolve()

    metrics = environ.get("LABHUB_METRICS")
    return Job(directory("LABHUB_INPUT"), directory("LABHUB_OUTPUT"), Path(metrics) if metrics else None)


def in_folder(job: Job, name: str, what: str) -> Path:
    """``name`` resolved inside the input folder; FileNotFoundError/ValueError naming ``what``."""
    if Path(name).is_absolute():
        raise ValueError(f"{what} names {name}, an absolute path; name files relative to the input folder")
    path = (job.input / name).resolve()
    if not path.is_relative_to(job.input):
        raise ValueError(f"{what} names {name}, which is outside the input folder")
    if not path.is_file():
        raise FileNotFoundError(f"{what} names {name}, which is not in the input folder")
    return path


def listed(path: Path) -> list[str]:
    """The entries of a one-per-line file: stripped, without blank lines and ``#`` comments."""
    entries = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            entries.append(line)
    return entries


def read_sources(job: Job, files_arg: str, labels_arg: str) -> tuple[list[Source], list[Any]]:
    """The files and their labels; returns the sources and the class list (index = target)."""
    names = listed(in_folder(job, files_arg, "--files"))
    labels = listed(in_folder(job, labels_arg, "--labels"))
    if not names:
        raise ValueError(f"{files_arg} names no ROOT files")
    if len(labels) != len(names):
        raise ValueError(f"{labels_arg} has {len(labels)} labels for the {len(names)} files in {files_arg}; "
                         "give one label per file, in the same order")
    sources = []
    for name, label in zip(names, labels, strict=True):
        if name.startswith(REMOTE_SCHEMES):
            sources.append(Source(name, None, label))
        elif "://" in name:
            raise ValueError(f"{files_arg} names {name}: only http://, https:// and root:// URLs can be read")
        else:
            sources.append(Source(name, in_folder(job, name, files_arg), label))
    try:
        numbers = [int(label) for label in labels]
    except ValueError:
        classes: list[Any] = list(dict.fromkeys(labels))  # names, numbered in order of appearance
        for source in sources:
            source.target = classes.index(source.label)
    else:  # integers, numbered in order (MLaaS4HEP's usual 0 and 1 stay 0 and 1)
        classes = sorted(set(numbers))
        for source, number in zip(sources, numbers, strict=True):
            source.target = classes.index(number)
    if len(classes) < 2:
        log(f"warning: {labels_arg} gives every file the same class ({classes[0]})")
    return sources, classes


def _names(value: Any, key: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError(f"params.json: {key!r} must be a list of branch names, not {value!r}")


def read_params(path: Path, name: str) -> dict[str, Any]:
    """params.json merged over the defaults, validated; unknown keys are reported and ignored."""
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(given, dict):
        raise ValueError(f"{name} must hold a JSON object, not {type(given).__name__}")
    params = dict(DEFAULTS)
    for key, value in given.items():
        if key not in DEFAULTS:
            log(f"warning: {name}: ignoring unknown key {key!r}")
        else:
            params[key] = value

    def integer(key: str, minimum: int) -> None:
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}: {key!r} must be an integer of at least {minimum}, not {value!r}")

    if params["nevts"] != -1:
        integer("nevts", 1)
    integer("chunk_size", 1)
    integer("epochs", 1)
    integer("batch_size", 1)
    if params["seed"] is not None:
        integer("seed", 0)
    split = params["validation_split"]
    if isinstance(split, bool) or not isinstance(split, int | float) or not 0 <= split < 1:
        raise ValueError(f"{name}: 'validation_split' must be a number in [0, 1), not {split!r}")
    if not isinstance(params["shuffle"], bool):
        raise ValueError(f"{name}: 'shuffle' must be true or false, not {params['shuffle']!r}")
    if params["branch"] is not None and (not isinstance(params["branch"], str) or not params["branch"]):
        raise ValueError(f"{name}: 'branch' must name the tree to read, not {params['branch']!r}")
    for key in ("selected_branches", "exclude_branches", "identifier"):
        params[key] = _names(params[key], key)
    return params


# ---------------------------------------------------------------- reading ROOT files


def _open(source: Source) -> Any:
    import uproot

    # Local paths and URLs alike go through fsspec: aiohttp for http(s)://, fsspec-xrootd for root://.
    return uproot.open(source.path if source.path is not None else source.name)


def _kind(branch: Any) -> str | None:
    """How a branch becomes columns: scalar, fixed-size array, jagged; None when not numeric."""
    from uproot.interpretation.jagged import AsJagged
    from uproot.interpretation.numerical import Numerical

    try:
        interpretation = branch.interpretation
    except Exception:  # uproot raises assorted errors for branches it cannot interpret
        return None
    if isinstance(interpretation, Numerical):
        return "array" if getattr(interpretation, "inner_shape", ()) else "scalar"
    if isinstance(interpretation, AsJagged) and isinstance(interpretation.content, Numerical):
        return "jagged" if not getattr(interpretation.content, "inner_shape", ()) else None
    return None


def _pick_tree(classes: dict[str, str], source: Source, tree_name: str | None) -> str:
    """The TTree to read: the one params.json names, or the file's only one."""
    trees = sorted({key.split(";")[0] for key, cls in classes.items() if cls == "TTree"})
    held = ", ".join(f"{key.split(';')[0]} ({cls})" for key, cls in classes.items()) or "nothing"
    if tree_name is None:
        if len(trees) != 1:
            raise ValueError(f"{source.name} holds {held}; name the TTree to read with 'branch' in params.json")
        return trees[0]
    if tree_name not in trees:
        raise ValueError(f"{source.name} has no TTree {tree_name!r} (it holds {held})")
    return tree_name


def choose_columns(kinds: dict[str, str | None], source: Source, params: dict[str, Any]) -> list[Column]:
    """The columns to read, from the first file: selected (or all numeric) minus excluded and ids."""
    dropped = set(params["exclude_branches"]) | set(params["identifier"])
    if params["selected_branches"]:
        names = params["selected_branches"]
        for name in names:
            if name not in kinds:
                raise ValueError(f"params.json selects branch {name!r}, which {source.name} does not have")
            if kinds[name] is None:
                raise ValueError(f"params.json selects branch {name!r} of {source.name}, which is not numeric; "
                                 "only numbers can be model input")
    else:
        names = [name for name, kind in kinds.items() if kind is not None]
        skipped = [name for name, kind in kinds.items() if kind is None and name not in dropped]
        if skipped:
            log(f"skipping branches that are not numeric: {', '.join(skipped)}")
    for name in sorted(dropped - set(kinds)):
        log(f"warning: params.json drops branch {name!r}, which {source.name} does not have")
    columns = [Column(name, kinds[name] or "scalar") for name in names if name not in dropped]
    if not columns:
        raise ValueError(f"no branches of {source.name} are left to train on")
    return columns


def read_events(sources: list[Source], params: dict[str, Any]) -> tuple[list[Column], dict[str, list[Any]]]:
    """Read every file in chunks; returns the columns and, per column, the chunks read (awkward arrays).

    Whatever fails inside uproot (unreachable server, not a ROOT file, a broken basket) is an
    OSError naming the file; a file that lacks what params.json asks for is a ValueError.
    """
    columns: list[Column] | None = None
    chunks: dict[str, list[Any]] = {}
    stop = None if params["nevts"] == -1 else params["nevts"]
    for source in sources:
        with _reading(source):
            file = _open(source)
            classes = file.classnames()
        with file:
            tree_name = params["branch"] = _pick_tree(classes, source, params["branch"])  # later files: the same tree
            with _reading(source):
                tree = file[tree_name]
                kinds = {name: _kind(tree[name]) for name in tree.keys()}
            if columns is None:
                columns = choose_columns(kinds, source, params)
                chunks = {column.name: [] for column in columns}
            missing = [column.name for column in columns if column.name not in kinds]
            if missing:
                raise ValueError(f"{source.name} has no branch {', '.join(map(repr, missing))} "
                                 f"(tree {tree_name!r}); every file must have the branches of the first")
            with _reading(source):
                names = [column.name for column in columns]
                pieces = tree.iterate(names, step_size=params["chunk_size"], entry_stop=stop, library="ak")
                for number, chunk in enumerate(pieces, start=1):
                    for column in columns:
                        chunks[column.name].append(chunk[column.name])
                    source.events += len(chunk)
                    log(f"reading {source.name}: chunk {number}, {source.events} events so far")
        log(f"reading {source.name}: {source.events} events, class {source.target} ({source.label})")
        if source.events == 0:
            log(f"warning: {source.name} has no events")
    assert columns is not None
    return columns, chunks


@contextlib.contextmanager
def _reading(source: Source) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise OSError(f"cannot read {source.name}: {_one_line(exc)}") from exc


def to_matrix(columns: list[Column], chunks: dict[str, list[Any]]) -> Any:
    """The events as a float64 matrix, jagged branches padded (NaN) or clipped to their width."""
    import awkward as ak
    import numpy as np

    blocks = []
    for column in columns:
        array = ak.concatenate(chunks[column.name]) if len(chunks[column.name]) > 1 else chunks[column.name][0]
        if column.kind == "jagged":
            lengths = ak.num(array, axis=1)
            column.width = int(ak.max(lengths)) if len(array) else 0
            if column.width == 0:
                log(f"warning: branch {column.name!r} is empty in every event read; leaving it out")
                continue
            padded = ak.pad_none(ak.values_astype(array, np.float64), column.width, axis=1, clip=True)
            block = ak.to_numpy(ak.fill_none(padded, np.nan))
        else:
            block = np.asarray(ak.to_numpy(array), dtype=np.float64).reshape(len(array), -1)
            column.width = block.shape[1]
        blocks.append(block)
    columns[:] = [column for column in columns if column.width > 0]
    if not columns:
        raise ValueError("every branch read is empty: nothing to train on")
    return np.hstack(blocks)


def normalise(matrix: Any, columns: list[Column]) -> Any:
    """Scale each column to [0, 1] by its min and max (kept in ``columns``); missing values become 0."""
    import numpy as np

    # In place: the matrix is the largest thing this program holds.
    matrix[~np.isfinite(matrix)] = np.nan
    present = ~np.isnan(matrix).all(axis=0)
    mins = np.zeros(matrix.shape[1])
    maxs = np.zeros(matrix.shape[1])
    mins[present] = np.nanmin(matrix[:, present], axis=0)
    maxs[present] = np.nanmax(matrix[:, present], axis=0)
    matrix -= mins
    matrix /= np.where(maxs > mins, maxs - mins, 1.0)
    np.nan_to_num(matrix, copy=False, nan=0.0)
    offset = 0
    for column in columns:
        part = slice(offset, offset + column.width)
        column.mins = [float(v) if ok else None for v, ok in zip(mins[part], present[part], strict=True)]
        column.maxs = [float(v) if ok else None for v, ok in zip(maxs[part], present[part], strict=True)]
        offset += column.width
    return matrix.astype(np.float32)


# ---------------------------------------------------------------- the model


def load_model(path: Path, name: str, idim: int) -> Any:
    """Run the user's model file and call its ``model(idim)``; ValueError naming the file otherwise."""
    import keras

    try:
        namespace = runpy.run_path(str(path), run_name="labhub_model")
    except Exception as exc:
        raise ValueError(f"{name}: running the file raised {_one_line(exc)}") from exc
    build = namespace.get("model")
    if not callable(build):
        raise ValueError(f"{name} defines no function model(idim)")
    try:
        model = build(idim)
    except Exception as exc:
        raise ValueError(f"{name}: model(idim) raised: {_one_line(exc)}") from exc
    if not isinstance(model, keras.Model):
        raise ValueError(f"{name}: model(idim) returned {type(model).__name__}, not a Keras model")
    if not getattr(model, "compiled", False):
        raise ValueError(f"{name}: model(idim) returned a model that is not compiled; call model.compile(...)")
    return model


def metrics_callback(metrics: Path | None, epochs: int) -> Any:
    import keras

    class Metrics(keras.callbacks.Callback):
        """One JSON line per epoch to ``metrics`` (flushed at once) and one log line to stdout."""

        def __init__(self) -> None:
            super().__init__()
            self.out = open(metrics, "a", encoding="utf-8") if metrics else None  # closed on_train_end

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            # loss first, then the other metrics, then their validation twins
            order = sorted(logs, key=lambda key: (key.startswith("val_"), key.removeprefix("val_") != "loss", key))
            values = {key: _number(logs[key]) for key in order}
            if self.out is not None:
                self.out.write(json.dumps({"epoch": epoch + 1, **values}) + "\n")
                self.out.flush()
            shown = " ".join(f"{key}={'nan' if value is None else f'{value:.4f}'}" for key, value in values.items())
            log(f"epoch {epoch + 1}/{epochs} {shown}")

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            if self.out is not None:
                self.out.close()

    return Metrics()


def _number(value: Any) -> float | None:
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None


# ---------------------------------------------------------------- the run


def train(args: argparse.Namespace, job: Job) -> None:
    started = time.monotonic()
    if "/" in args.fout or args.fout.startswith(".") or not args.fout:
        raise ValueError(f"--fout {args.fout!r} must be a plain file name (no '/', not starting with '.')")
    params_path = in_folder(job, args.params, "--params")
    model_path = in_folder(job, args.model, "--model")
    params = read_params(params_path, args.params)
    for key, given in (("epochs", args.epochs), ("batch_size", args.batch_size)):
        if given < 0:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1 (0 keeps {args.params}'s), not {given}")
        if given:  # the job's parameter wins over the folder's file
            params[key] = given
    sources, classes = read_sources(job, args.files, args.labels)

    columns, chunks = read_events(sources, params)
    import numpy as np

    matrix = normalise(to_matrix(columns, chunks), columns)
    del chunks
    targets = np.concatenate([np.full(source.events, source.target, dtype=np.float32) for source in sources])
    total = len(targets)
    if total == 0:
        raise ValueError("no events were read: nothing to train on")
    if params["shuffle"]:
        order = np.random.default_rng(params["seed"]).permutation(total)
        matrix, targets = matrix[order], targets[order]
    held = int(round(total * params["validation_split"]))
    if params["validation_split"] > 0 and total >= 2:
        held = min(max(held, 1), total - 1)
    x_train, y_train = matrix[: total - held], targets[: total - held]
    validation = (matrix[total - held:], targets[total - held:]) if held else None
    log(f"{total} events, {len(columns)} branches, {matrix.shape[1]} features; "
        f"training on {total - held}, validating on {held}")

    import keras

    model = load_model(model_path, args.model, matrix.shape[1])
    log(f"training {model.name} for {params['epochs']} epochs, batch size {params['batch_size']}")
    model.fit(x_train, y_train, epochs=params["epochs"], batch_size=params["batch_size"],
              validation_data=validation, shuffle=params["shuffle"], verbose=0,
              callbacks=[metrics_callback(job.metrics, params["epochs"])])

    model_file = job.output / f"{args.fout}.keras"
    model.save(model_file)
    spec = {
        "format": FORMAT,
        "model": model_file.name,
        "tree": params["branch"],
        "files": [{"name": s.name, "label": s.label, "class": s.target, "events": s.events} for s in sources],
        "classes": classes,
        "columns": [{"name": c.name, "kind": c.kind, "width": c.width, "min": c.mins, "max": c.maxs}
                    for c in columns],
        "features": int(matrix.shape[1]),
        "preprocessing": {
            "scale": "min-max per feature to [0, 1]: (x - min) / (max - min), or x - min where max == min",
            "jagged": "first `width` entries, shorter entries padded",
            "missing": 0.0,
        },
        "events": {"train": int(total - held), "validation": int(held)},
        "params": params,
        "versions": _versions(keras),
        "seconds": round(time.monotonic() - started, 1),
    }
    _write_json(job.output / f"{args.fout}.json", spec)
    log(f"wrote {model_file.name} and {args.fout}.json in {spec['seconds']} s")


def _versions(keras: Any) -> dict[str, str]:
    import awkward
    import jax
    import numpy
    import uproot

    return {"python": platform.python_version(), "keras": keras.__version__, "backend": keras.config.backend(),
            "jax": jax.__version__, "numpy": numpy.__version__, "uproot": uproot.__version__,
            "awkward": awkward.__version__}


def _write_json(path: Path, data: Any) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"labhub_train arguments: {message}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m labhub_train", description="Train a Keras model on ROOT trees (MLaaS4HEP).")
    parser.add_argument("--files", required=True, help="file listing the ROOT files, one per line")
    parser.add_argument("--labels", required=True, help="file listing one class label per ROOT file")
    parser.add_argument("--model", required=True, help="Python file defining model(idim)")
    parser.add_argument("--params", required=True, help="JSON file of training parameters")
    parser.add_argument("--fout", required=True, help="name of the artifacts: NAME.keras and NAME.json")
    parser.add_argument("--epochs", type=int, default=0, help="overrides params.json's epochs (0: keep it)")
    parser.add_argument("--batch-size", type=int, default=0, help="overrides params.json's batch_size (0: keep it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["KERAS_BACKEND"] = "jax"
    try:
        train(parse(argv), job_from_env(os.environ))
    except (Exception, KeyboardInterrupt) as exc:
        sys.stdout.flush()
        traceback.print_exc()
        print(_one_line(exc), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
