"""Spec hashes and stack keys of many specs at once (``SpecHasher``, ``StackKeys``) equal
the whole-spec definitions they speed up, bit for bit: every spec of the shipped grids
and examples, a grid's points that share their parts, and the edge cases."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from regcore import grid as grids
from regcore.spec import ExperimentSpec, SpecHasher, SweepSpec
from regcore.stacked import MEMBER_MODEL_PARAMS, StackKeys, stack_key, stacking_obstacle
from service import sweeps

ROOT = Path(__file__).resolve().parents[2]


def reference_hash(spec: ExperimentSpec) -> str:
    """The spec hash as it was defined before ``SpecHasher``: hashes already stored."""
    canonical = json.dumps(spec.identity(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def reference_stack_key(spec: ExperimentSpec) -> str | None:
    """The stack key as it was defined before ``StackKeys``: keys already stored."""
    if stacking_obstacle(spec) is not None:
        return None
    data = spec.model_dump(mode="json")
    for key in ("name", "description", "analyses"):
        data.pop(key, None)
    data["training"].pop("seed", None)
    for name in MEMBER_MODEL_PARAMS:
        data["model"].pop(name, None)
    data["regularizers"] = [
        {k: v for k, v in entry.items() if isinstance(v, bool) or not isinstance(v, int | float)}
        for entry in data["regularizers"]
    ]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def shipped_specs() -> list[ExperimentSpec]:
    specs = []
    for path in sorted([*ROOT.glob("grids/*.yaml"), *ROOT.glob("examples/*.yaml")]):
        document = yaml.safe_load(path.read_text())
        if grids.is_grid(document):
            points = grids.expand(document["base"], document["grid"])
            specs += [ExperimentSpec.model_validate(point.spec) for point in points]
        else:
            specs.append(ExperimentSpec.model_validate(document))
    return specs


def digits(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "dropout": 0.1},
        "regularizers": [{"name": "l2", "weight": 0.001}],
        "training": {"epochs": 1, "seed": 3},
        "analyses": [{"kind": "geometry", "samples": 10}],
    }
    return spec | changes


def test_the_shipped_specs_hash_and_key_as_they_always_did() -> None:
    specs = shipped_specs()
    assert len(specs) > 100
    hasher, keys = SpecHasher(), StackKeys()  # shared by all: parts of one spec never leak
    for spec in specs:
        assert spec.spec_hash() == hasher(spec) == reference_hash(spec)
        assert stack_key(spec) == keys(spec) == reference_stack_key(spec)


def test_a_planned_grid_shares_parts_and_keeps_every_hash_and_key() -> None:
    document = SweepSpec.model_validate(
        {
            "base": digits(),
            "grid": {
                "regularizers": [[], [{"name": "l2", "weight": 0.01}], [{"name": "jacobian"}]],
                "training.seed": [0, 1, 2, 3],
                "model.dropout": [0.0, 0.5],
            },
        }
    )
    planned = sweeps.plan(document, 100)
    first, other = planned.points[0].spec, planned.points[1].spec
    assert first.dataset is other.dataset  # what makes it fast: each part written once
    keys = StackKeys()
    for point in planned.points:
        assert point.spec_hash == reference_hash(point.spec)
        assert keys(point.spec) == reference_stack_key(point.spec)
    assert len({point.spec_hash for point in planned.points}) == 24
    assert len({keys(point.spec) for point in planned.points}) == 3  # one per regularizer list


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"training": {"epochs": 1, "seed": 3, "precision": "bf16"}},  # counts unless default
        {"training": {"epochs": 1, "seed": 3, "precision": "fp32"}},  # ... written out
        {"name": "renamed", "description": "not part of either"},
        {"regularizers": []},
        {"analyses": []},
        {"training": {"epochs": 2, "betas": [0.8, 0.99], "optimizer": "adam"}},
        {"resources": {"queue": "gpu", "gpu_fraction": 0.5}},
        {"regularizers": [{"name": "l2", "weight": 0.001}, {"name": "jacobian", "n_proj": 2}]},
    ],
)
def test_edge_cases_hash_and_key_as_defined(changes: dict[str, Any]) -> None:
    spec = ExperimentSpec.model_validate(digits(**changes))
    assert SpecHasher()(spec) == spec.spec_hash() == reference_hash(spec)
    assert StackKeys()(spec) == stack_key(spec) == reference_stack_key(spec)


def test_the_same_part_objects_in_different_specs_give_each_its_own_hash() -> None:
    hasher, keys = SpecHasher(), StackKeys()
    one = ExperimentSpec.model_validate(digits())
    other = one.model_copy(update={"regularizers": [], "name": "other"})
    assert other.training is one.training
    assert hasher(one) == reference_hash(one) and hasher(other) == reference_hash(other)
    assert keys(one) == reference_stack_key(one) and keys(other) == reference_stack_key(other)
    assert hasher(one) != hasher(other) and keys(one) != keys(other)
