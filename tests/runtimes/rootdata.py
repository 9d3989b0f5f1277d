"""Small ROOT files for training tests, written with uproot from the hub's test environment.

Two classes that a tiny network separates in a few epochs: signal has a higher ``pt`` and harder
jets. Each tree has float branches, a jagged branch (``jet_pt``, with uproot's counter ``njet_pt``)
and an id branch (``event_id``) that params.json drops.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot

BRANCHES = ("pt", "eta", "mass", "njet_pt", "jet_pt")  # what a model sees, in the tree's order
IDENTIFIER = "event_id"
MAX_JETS = 5


def write_events(path: Path, *, events: int, signal: bool, seed: int, first_id: int = 0) -> Path:
    """Write a TTree ``events`` of ``events`` entries to ``path`` (a TTree, not uproot's default RNTuple)."""
    rng = np.random.default_rng(seed)
    shift = 1.0 if signal else 0.0
    counts = rng.integers(0, MAX_JETS + 1, events)
    jets = ak.unflatten(rng.exponential(30 + 20 * shift, int(counts.sum())).astype(np.float32), counts)
    data = {
        "pt": rng.normal(50 + 30 * shift, 10, events).astype(np.float32),
        "eta": rng.normal(0, 1 + shift, events),
        "mass": rng.normal(91, 5, events).astype(np.float32),
        "jet_pt": jets,
        IDENTIFIER: np.arange(first_id, first_id + events, dtype=np.int64),
    }
    with uproot.recreate(path) as file:
        file.mktree("events", {name: value.type if isinstance(value, ak.Array) else value.dtype
                               for name, value in data.items()})
        file["events"].extend(data)
    return path
