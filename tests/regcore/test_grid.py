from __future__ import annotations

import pytest

from regcore.grid import GridError, describe, expand, set_path

BASE = {"dataset": {"name": "digits"}, "training": {"lr": 0.1}, "regularizers": [{"name": "l2"}]}


def test_cartesian_product_by_dotted_path() -> None:
    points = expand(BASE, {"regularizers": [[], [{"name": "l1"}]], "training.seed": [0, 1, 2]})
    assert len(points) == 6
    assert points[0].spec["regularizers"] == [] and points[0].spec["training"]["seed"] == 0
    assert points[-1].spec["regularizers"] == [{"name": "l1"}]
    assert points[-1].spec["training"] == {"lr": 0.1, "seed": 2}
    assert BASE["training"] == {"lr": 0.1}  # the base is never modified
    # runs that differ only by seed share a configuration label
    assert {p.configuration for p in points} == {"regularizers=none", "regularizers=l1"}


def test_list_index_paths_and_new_keys() -> None:
    (point,) = expand(BASE, {"regularizers.0.weight": [0.5]})
    assert point.spec["regularizers"] == [{"name": "l2", "weight": 0.5}]
    document: dict = {}
    set_path(document, "training.schedule.kind", "step")
    assert document == {"training": {"schedule": {"kind": "step"}}}


def test_bad_grids() -> None:
    with pytest.raises(GridError, match="non-empty list"):
        expand(BASE, {"training.lr": []})
    with pytest.raises(GridError, match="not an index"):
        expand(BASE, {"regularizers.3.weight": [1]})
    with pytest.raises(GridError, match="inside a float"):
        expand(BASE, {"training.lr.x": [1]})


def test_an_index_into_a_list_the_base_lacks_says_so() -> None:
    """Not a mapping ``{"0": ...}`` made where a list was meant (it failed later as "Input
    should be a valid list", naming nothing)."""
    base = {"dataset": {"name": "digits"}, "model": {"name": "lenet"}}
    with pytest.raises(GridError, match="no list at 'regularizers' to index with 0"):
        expand(base, {"regularizers.0.weight": [0.1]})
    with pytest.raises(GridError, match="no list at 'analyses' to index with 1"):
        expand(base, {"analyses.1": [{"kind": "calibration"}]})


def test_describe() -> None:
    label = describe({"regularizers": [{"name": "l2", "weight": 0.5}], "training.lr": 0.1})
    assert label == "regularizers=l2(weight=0.5), lr=0.1"
