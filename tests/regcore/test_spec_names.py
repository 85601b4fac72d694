"""Names of experiments and sweeps: a documented safe set and length, refused by the spec
models themselves (so no caller can build a spec with a name the API refuses), while
specs recorded by earlier versions still read (``ExperimentSpec.from_stored``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from regcore.spec import NAME_MAX_LENGTH, NAME_PATTERN, STORED, ExperimentSpec, SweepSpec

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {"dataset": {"name": "digits"}, "model": {"name": "mlp"}}

UNSAFE_NAMES = [
    "x/../../../../tmp/somewhere",  # the reported sweep
    "../outside",
    "..",
    ".",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "C:\\temp",
    "nul\x00byte",
    "new\nline",
    "trailing newline\n",
    "tab\tname",
    "lone \ud800 surrogate",
    "café",
    "$(rm -rf ~)",
    "-starts-with-a-dash",
    " leading space",
    "",
    "a" * (NAME_MAX_LENGTH + 1),
]
SAFE_NAMES = [
    "mnist-lenet-jacobian",
    "tiny again",
    "run_3.v2",
    "a+b=c, (d)@node1",
    "0",
    "a" * NAME_MAX_LENGTH,
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_a_spec_with_an_unsafe_name_cannot_be_built(name: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ExperimentSpec.model_validate({**BASE, "name": name})
    assert [error["loc"] for error in raised.value.errors()] == [("name",)]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_a_sweep_with_an_unsafe_name_cannot_be_built(name: str) -> None:
    with pytest.raises(ValidationError) as raised:
        SweepSpec.model_validate({"name": name, "base": BASE, "grid": {"training.seed": [0]}})
    assert [error["loc"] for error in raised.value.errors()] == [("name",)]
    # The base spec's name labels a sweep without a name of its own, even when the grid
    # gives every point another name (so that no point's validation would see it).
    document = {"base": {**BASE, "name": name}, "grid": {"name": ["a", "b"]}}
    with pytest.raises(ValidationError) as raised:
        SweepSpec.model_validate(document)
    assert [error["loc"] for error in raised.value.errors()] == [("base", "name")]


@pytest.mark.parametrize("name", SAFE_NAMES)
def test_safe_names_are_kept_as_written(name: str) -> None:
    assert ExperimentSpec.model_validate({**BASE, "name": name}).name == name
    sweep = SweepSpec.model_validate({"name": name, "base": BASE, "grid": {"training.seed": [0]}})
    assert sweep.label() == name


def test_the_rule_is_in_the_json_schema() -> None:
    for model in (ExperimentSpec, SweepSpec):
        schema = model.model_json_schema()["properties"]["name"]
        schema = schema.get("anyOf", [schema])[0]
        assert schema["pattern"] == NAME_PATTERN
        assert schema["maxLength"] == NAME_MAX_LENGTH
        assert "letters" in schema["description"]


def test_a_stored_spec_with_an_old_name_still_reads_with_the_same_hash() -> None:
    """Experiments recorded before names were limited keep running (their names never
    reach a path): the worker reads stored specs with ``from_stored``."""
    stored = ExperimentSpec.from_stored({**BASE, "name": "x/../old:name é"})
    assert stored.name == "x/../old:name é"
    assert stored.spec_hash() == ExperimentSpec.model_validate(BASE).spec_hash()
    legacy = {"name": "x/../old", "base": BASE, "grid": {"training.seed": [0]}}
    assert SweepSpec.model_validate(legacy, context={STORED: True}).label() == "x/../old"
    assert STORED == "stored"  # tests/worker/test_paths.py writes it out (and ran before it)


def test_every_shipped_grid_and_example_name_is_safe() -> None:
    files = [*(ROOT / "grids").glob("*.yaml"), *(ROOT / "examples").glob("*.yaml")]
    assert files
    for path in files:
        document = yaml.safe_load(path.read_text())
        if "grid" in document:
            SweepSpec.model_validate(document)
            name = document["base"].get("name")
        else:
            name = document.get("name")
        if name is not None:
            ExperimentSpec.model_validate({**BASE, "name": name})
