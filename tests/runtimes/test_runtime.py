"""The runtime definition: digests, locations and the pinned requirement lists (pure, no builds)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labhub.runtimes import BUILTIN, Runtime, is_built, location, read_requirements
from labhub.runtimes.runtime import PACKAGE_DIR


def test_digest_is_stable_and_short() -> None:
    first = Runtime("tiny", ("six==1.17.0",))
    second = Runtime("tiny", ("six==1.17.0",))
    assert first.digest() == second.digest()
    assert re.fullmatch(r"[0-9a-f]{12}", first.digest())


def test_digest_changes_with_a_pin_but_not_with_order() -> None:
    base = Runtime("tiny", ("six==1.17.0", "idna==3.20"))
    assert Runtime("tiny", ("idna==3.20", "six==1.17.0")).digest() == base.digest()
    assert Runtime("tiny", ("six==1.16.0", "idna==3.20")).digest() != base.digest()
    assert Runtime("tiny", ("six==1.17.0",)).digest() != base.digest()


def test_digest_changes_with_a_program_byte(tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text("print('one')\n")
    runtime = Runtime("tiny", (), modules=(str(program),))
    before = runtime.digest()
    assert runtime.digest() == before
    program.write_text("print('two')\n")
    assert runtime.digest() != before


def test_location_is_name_and_digest_and_unbuilt_until_marked(tmp_path: Path) -> None:
    runtime = Runtime("tiny", ("six==1.17.0",))
    assert location(tmp_path, runtime) == tmp_path / f"tiny-{runtime.digest()}"
    location(tmp_path, runtime).mkdir()  # a directory alone is not a built runtime
    assert not is_built(tmp_path, runtime)


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "-flag", "spa ce"])
def test_hostile_runtime_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="runtime name"):
        Runtime(name, ())


def test_requirements_must_be_pinned(tmp_path: Path) -> None:
    listing = tmp_path / "r.txt"
    listing.write_text("# comment\n\nsix==1.17.0  # inline\n")
    assert read_requirements(listing) == ("six==1.17.0",)
    listing.write_text("six>=1\n")
    with pytest.raises(ValueError, match=r"r.txt:1: 'six>=1' is not a pinned requirement"):
        read_requirements(listing)
    listing.write_text("--index-url https://example.invalid/simple\n")
    with pytest.raises(ValueError, match="not a pinned requirement"):
        read_requirements(listing)


def test_train_runtime_pins_keras_on_jax_and_ships_the_program() -> None:
    train = BUILTIN["train"]
    pinned = dict(line.split("==") for line in train.requirements)
    assert {"keras", "jax", "jaxlib", "uproot", "awkward", "numpy", "fsspec", "fsspec-xrootd", "xrootd"} <= set(pinned)
    assert not {"tensorflow", "torch"} & set(pinned)  # the serve runtime has torch (TorchScript); training, Keras
    assert train.module_paths() == (PACKAGE_DIR / "labhub_train.py",)


def test_train_program_imports_nothing_of_the_hub() -> None:
    source = (PACKAGE_DIR / "labhub_train.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+labhub\b", source, re.MULTILINE)
