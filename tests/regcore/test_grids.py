"""The ready-made grid files in grids/: each expands, validates and has the intended shape.

Every grids/*.yaml is a grid ({base, grid}), expands as a cartesian product, and every
point validates as an ExperimentSpec (which checks every component name and param
against its registry). Runs that differ only by seed form one configuration; those
configurations are distinct and each holds exactly the grid's seeds. The laptop grid,
grids/digits.yaml, runs in full in an end-to-end test, so it is held small here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from regcore.grid import SEED_PATH, GridPoint, expand, is_grid
from regcore.spec import ExperimentSpec

GRIDS = Path(__file__).resolve().parents[2] / "grids"

# file -> (configurations, seeds); a new grid file must be added here.
EXPECTED: dict[str, tuple[int, list[int]]] = {
    "part3-mnist-lenet.yaml": (4 * 2, [0, 1, 2, 3, 4]),  # 4 regularizers x dropout on/off
    "part3-cifar10-ddnet.yaml": (4 * 2, [0, 1, 2, 3, 4]),
    "part3-cifar100-resnet18.yaml": (4 * 2, [0, 1, 2, 3, 4]),
    "low-curvature.yaml": (6, [0, 1, 2]),  # the table's six rows
    "digits.yaml": (3, [0, 1]),  # none, l2, jacobian
    "toy-blobs.yaml": (5, [0, 1]),  # none, l1, l2, svb_hard, jacobian
    # {none, l2, jacobian, l2 + jacobian} x dropout {0, 0.5}: the paper's five rows + 3 more
    "reproduce-hoffman2019.yaml": (4 * 2, [0, 1, 2]),
    "reproduce-study-mnist.yaml": (3, [0, 1, 2, 3, 4]),  # none, l2, svb_hard
}
PART3 = {
    "part3-mnist-lenet.yaml": ("mnist", "lenet"),
    "part3-cifar10-ddnet.yaml": ("cifar10", "ddnet"),
    "part3-cifar100-resnet18.yaml": ("cifar100", "resnet18"),
}
LINF_BUDGET = {"mnist": 0.3, "cifar10": 8 / 255, "cifar100": 8 / 255}  # docs/science.md, Attacks

# The end-to-end test runs digits.yaml in full on 2 CPU cores: keep every job seconds long.
DIGITS_MAX_EXPERIMENTS = 6
DIGITS_MAX_EPOCHS = 10


def grid_files() -> list[str]:
    return sorted(path.name for path in GRIDS.glob("*.yaml"))


@cache
def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((GRIDS / name).read_text())
    assert isinstance(document, dict), f"{name}: not a mapping"
    return document


@cache
def points(name: str) -> list[GridPoint]:
    document = load(name)
    return expand(document["base"], document["grid"])


@cache
def specs(name: str) -> list[ExperimentSpec]:
    return [ExperimentSpec.model_validate(point.spec) for point in points(name)]


def analyses(spec: ExperimentSpec, kind: str) -> list[Any]:
    return [analysis.params for analysis in spec.analyses if analysis.name == kind]


def regularizer_names(spec: ExperimentSpec) -> tuple[str, ...]:
    return tuple(regularizer.name for regularizer in spec.regularizers)


def without_seed(spec: ExperimentSpec) -> dict[str, Any]:
    identity = spec.identity()
    identity["training"] = {k: v for k, v in identity["training"].items() if k != "seed"}
    return identity


def test_every_grid_file_is_listed() -> None:
    assert grid_files() == sorted(EXPECTED)


# --------------------------------------------------------------------------- every grid


@pytest.mark.parametrize("name", grid_files())
def test_is_a_grid_with_only_base_and_grid(name: str) -> None:
    document = load(name)
    assert is_grid(document)
    assert set(document) == {"base", "grid"}  # what POST /api/v1/sweeps takes
    assert isinstance(document["base"], Mapping)
    assert document["grid"][SEED_PATH] == EXPECTED[name][1]


@pytest.mark.parametrize("name", grid_files())
def test_expands_to_the_expected_size_and_every_point_validates(name: str) -> None:
    configurations, seeds = EXPECTED[name]
    assert len(points(name)) == configurations * len(seeds)
    assert len(specs(name)) == len(points(name))  # model_validate raised on any bad point
    assert len({spec.spec_hash() for spec in specs(name)}) == len(points(name))


@pytest.mark.parametrize("name", grid_files())
def test_configurations_are_distinct_and_each_has_every_seed(name: str) -> None:
    configurations, seeds = EXPECTED[name]
    by_configuration: dict[str, list[ExperimentSpec]] = defaultdict(list)
    for point, spec in zip(points(name), specs(name), strict=True):
        assert spec.training.seed == point.values[SEED_PATH]
        by_configuration[point.configuration].append(spec)
    assert len(by_configuration) == configurations
    identities = []
    for label, members in by_configuration.items():
        assert sorted(spec.training.seed for spec in members) == seeds, label
        # the runs of one configuration differ by their seed and nothing else
        assert all(without_seed(spec) == without_seed(members[0]) for spec in members), label
        identities.append(without_seed(members[0]))
    assert all(a != b for i, a in enumerate(identities) for b in identities[i + 1 :])


@pytest.mark.parametrize("name", grid_files())
def test_every_point_is_attacked_on_fixed_examples(name: str) -> None:
    for spec in specs(name):
        attacks = analyses(spec, "attack")
        assert any(attack.method == "pgd" for attack in attacks), spec.name
        for attack in attacks:
            assert attack.eps[0] == 0.0  # the clean accuracy, for reference
            assert all(0 <= eps <= 1 for eps in attack.eps)  # pixel units on [0, 1]
            assert attack.seed == 0  # the same examples for every model of a comparison


@pytest.mark.parametrize("name", grid_files())
def test_every_point_measures_geometry(name: str) -> None:
    for spec in specs(name):
        assert len(analyses(spec, "geometry")) == 1, spec.name


# --------------------------------------------------------------------------- part three


@pytest.mark.parametrize("name", sorted(PART3))
def test_part3_grid_is_the_study_design(name: str) -> None:
    dataset, model = PART3[name]
    rows = {(regularizer_names(s), s.model.params.dropout) for s in specs(name)}
    settings = [(), ("l2",), ("jacobian",), ("svb_hard",)]
    assert rows == {(names, dropout) for names in settings for dropout in (0.0, 0.5)}
    for spec in specs(name):
        assert spec.dataset.name == dataset and spec.model.name == model
        assert spec.dataset.params.download is False  # real files under the data root
        assert spec.training.device == "auto" and spec.resources.queue == "gpu"
        assert spec.training.batch_size == 100 and spec.training.optimizer == "sgd"
        assert spec.training.schedule.kind == "step"
        assert spec.training.schedule.milestones == pytest.approx([1 / 3, 2 / 3])
        methods = {attack.method for attack in analyses(spec, "attack")}
        assert methods == {"fgsm", "pgd"}
        for attack in analyses(spec, "attack"):
            assert attack.norm == "linf"
            assert max(attack.eps) >= LINF_BUDGET[dataset] - 1e-9
        assert len(analyses(spec, "boundary")) == 1


def test_part3_weights_follow_the_study() -> None:
    for name in PART3:
        for spec in specs(name):
            for regularizer in spec.regularizers:
                params = regularizer.params
                if regularizer.name == "l2":  # SGD weight_decay 5e-4 = 2 * weight
                    assert 2 * params.weight == pytest.approx(5e-4)
                    assert params.mode == "penalty"
                elif regularizer.name == "jacobian":  # Hoffman et al.'s lambda_JR
                    assert params.weight == 0.01 and params.n_proj == 1
                elif regularizer.name == "svb_hard":  # the study's eps, once per epoch
                    assert params.eps == 0.05 and params.every_steps is None


def test_part3_training_recipes() -> None:
    recipes = {name: {(s.training.lr, s.training.epochs) for s in specs(name)} for name in PART3}
    assert recipes == {
        "part3-mnist-lenet.yaml": {(0.1, 250)},
        "part3-cifar10-ddnet.yaml": {(0.01, 300)},
        "part3-cifar100-resnet18.yaml": {(0.1, 300)},
    }


# --------------------------------------------------------------------------- low curvature


def test_low_curvature_rows() -> None:
    shared = ("augment", "l2")
    rows = {regularizer_names(spec)[2:] for spec in specs("low-curvature.yaml")}
    assert rows == {
        (),
        ("lcnn",),
        ("grad_reg",),
        ("lcnn", "grad_reg"),
        ("cure",),
        ("adversarial_training",),
    }
    for spec in specs("low-curvature.yaml"):
        assert regularizer_names(spec)[:2] == shared
        assert spec.dataset.name == "cifar100" and spec.model.name == "resnet18"
        assert spec.training.device == "auto" and spec.resources.queue == "gpu"
        assert {attack.norm for attack in analyses(spec, "attack")} == {"l2", "linf"}
        (geometry,) = analyses(spec, "geometry")
        assert geometry.samples >= 1000


# --------------------------------------------------------------------------- digits


def test_digits_grid_stays_small_enough_for_the_end_to_end_test() -> None:
    assert len(points("digits.yaml")) <= DIGITS_MAX_EXPERIMENTS
    assert {regularizer_names(spec) for spec in specs("digits.yaml")} == {
        (),
        ("l2",),
        ("jacobian",),
    }
    for spec in specs("digits.yaml"):
        assert spec.dataset.name == "digits" and spec.model.name == "lenet"
        assert spec.training.device == "cpu"
        assert spec.training.epochs <= DIGITS_MAX_EPOCHS
        assert spec.training.early_stopping is None
        (attack,) = analyses(spec, "attack")
        assert attack.method == "pgd" and attack.norm == "linf"
        assert len(attack.eps) >= 3 and attack.samples <= 200
        attacked = sum(1 for eps in attack.eps if eps > 0)
        assert attack.steps is not None
        assert attack.steps * attacked + sum(attack.steps_curve) <= 100  # gradient steps
        (boundary,) = analyses(spec, "boundary")
        grid_points = boundary.planes * boundary.resolution**2 * len(boundary.half_width)
        assert grid_points <= 20_000
        (geometry,) = analyses(spec, "geometry")
        assert geometry.samples <= 200 and geometry.iterations <= 10


# --------------------------------------------------------------------------- toy blobs


def test_toy_blobs_grid_is_the_2d_toy_problem_and_animates_it() -> None:
    assert {regularizer_names(spec) for spec in specs("toy-blobs.yaml")} == {
        (),
        ("l1",),
        ("l2",),
        ("svb_hard",),
        ("jacobian",),
    }
    for spec in specs("toy-blobs.yaml"):
        assert spec.dataset.name == "blobs" and spec.model.name == "mlp"
        assert spec.training.device == "cpu" and spec.resources.queue == "cpu"
        assert spec.training.epochs <= 30  # a CPU grid of minutes (grids/README.md)
        (animation,) = analyses(spec, "training_animation")
        assert animation.max_frames >= 2 and animation.every >= 1
        assert analyses(spec, "noise") and analyses(spec, "boundary")


# --------------------------------------------------------------------------- reproductions


def test_hoffman_reproduction_grid_follows_the_paper_and_its_code() -> None:
    jacobian = ("jacobian",)
    rows = {
        (regularizer_names(s), s.model.params.dropout) for s in specs("reproduce-hoffman2019.yaml")
    }
    # none, L2, dropout, Jacobian, all combined (L2 + Jacobian + dropout) are among them
    assert {
        ((), 0.0),
        (("l2",), 0.0),
        ((), 0.5),
        (jacobian, 0.0),
        (("l2", "jacobian"), 0.5),
    } <= rows
    for spec in specs("reproduce-hoffman2019.yaml"):
        assert spec.dataset.name == "mnist" and spec.model.name == "lenet"
        assert spec.dataset.params.download is False and spec.dataset.params.val_fraction == 0
        assert spec.model.params.normalize  # the normalized input exists
        training = spec.training
        assert (training.optimizer, training.lr, training.momentum) == ("sgd", 0.01, 0.9)
        assert training.weight_decay == 0  # lambda_WD is the l2 row's
        for regularizer in spec.regularizers:
            params = regularizer.params
            if regularizer.name == "l2":  # lambda_WD 5e-4 = 2 * weight
                assert 2 * params.weight == pytest.approx(5e-4)
            else:  # lambda_JR 0.01 in the paper's units, one projection
                assert (params.weight, params.n_proj, params.input_space) == (
                    0.01,
                    1,
                    "normalized",
                )
        (geometry,) = analyses(spec, "geometry")
        assert geometry.input_space == "normalized" and geometry.samples >= 1000


def test_study_reproduction_grid_is_the_part3_recipe_with_dropout() -> None:
    part3 = {
        json.dumps(without_seed(s)["training"], sort_keys=True)
        for s in specs("part3-mnist-lenet.yaml")
    }
    rows = {regularizer_names(s) for s in specs("reproduce-study-mnist.yaml")}
    assert rows == {(), ("l2",), ("svb_hard",)}
    for spec in specs("reproduce-study-mnist.yaml"):
        recipe = json.dumps(without_seed(spec)["training"], sort_keys=True)
        assert recipe in part3  # the study's recipe
        assert spec.model.params.dropout == 0.5 and spec.model.params.activation == "tanh"
        assert spec.dataset.params.val_fraction == 0 and spec.dataset.params.download is False
        (geometry,) = analyses(spec, "geometry")
        assert geometry.input_space == "pixel"  # the study published no ||J||_F
