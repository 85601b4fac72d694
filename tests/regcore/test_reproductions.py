"""The reproductions registry (regcore/reproductions.py) and ``regbench reproduce``.

Every reproduction's published rows name configurations of its grid; the grid validates
at both budgets; the reduced budget is smaller in every dimension it claims and runs the
published rows only; ||J||_F is measured in the units it was published in. A slow test
trains the reduced budget's unregularized and Jacobian rows on real MNIST (shortened
further) and checks the published direction: a far smaller ||J||_F at comparable accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from client.cli import main
from regcore import reproductions
from regcore.grid import SEED_PATH, expand, set_path
from regcore.pipeline import run
from regcore.reproductions import REPRODUCTIONS, Reproduction
from regcore.spec import ExperimentSpec

NAMES = sorted(REPRODUCTIONS)


def specs(reproduction: Reproduction, budget: reproductions.BudgetName) -> list[ExperimentSpec]:
    return [ExperimentSpec.model_validate(p.spec) for p in reproductions.plan(reproduction, budget)]


@pytest.mark.parametrize("name", NAMES)
def test_every_published_row_names_a_configuration_of_the_grid(name: str) -> None:
    reproduction = REPRODUCTIONS[name]
    document = reproductions.grid_document(reproduction, "full")
    configurations = {p.configuration for p in expand(document["base"], document["grid"])}
    rows = [row.configuration for row in reproduction.rows]
    assert len(set(rows)) == len(rows)  # one configuration per published row
    assert set(rows) <= configurations
    for row in reproduction.rows:
        assert 0 < row.accuracy <= 100  # a percentage, as published
        assert row.jacobian_frobenius is None or row.jacobian_frobenius > 0


@pytest.mark.parametrize("budget", reproductions.BUDGETS)
@pytest.mark.parametrize("name", NAMES)
def test_every_grid_validates_at_both_budgets(name: str, budget: str) -> None:
    planned = specs(REPRODUCTIONS[name], budget)  # type: ignore[arg-type]
    assert planned  # model_validate raised on any bad point
    assert len({spec.spec_hash() for spec in planned}) == len(planned)


MNIST_TRAIN = 60_000


@pytest.mark.parametrize("name", NAMES)
def test_the_reduced_budget_is_smaller_and_runs_the_published_rows(name: str) -> None:
    reproduction = REPRODUCTIONS[name]
    full, reduced = specs(reproduction, "full"), specs(reproduction, "reduced")
    assert len(reduced) < len(full)
    points = reproductions.plan(reproduction, "reduced")
    assert {p.configuration for p in points} == {row.configuration for row in reproduction.rows}
    assert {p.values[SEED_PATH] for p in points} == set(reproduction.reduced.seeds)
    # fewer training samples seen (images x epochs; both grids are MNIST's 60,000 in full)
    seen = [(s.dataset.params.train_size or MNIST_TRAIN) * s.training.epochs for s in reduced]
    assert max(seen) < min(MNIST_TRAIN * s.training.epochs for s in full) / 10
    for spec in reduced:
        assert spec.dataset.params.train_size is not None
        for analysis in spec.analyses:
            if analysis.name in ("attack", "geometry", "noise"):
                assert analysis.params.samples <= 200
    # what the budget leaves alone stays as published: the recipe and the regularizers
    published = {(s.training.lr, s.training.batch_size, s.training.optimizer) for s in full}
    assert {(s.training.lr, s.training.batch_size, s.training.optimizer) for s in reduced} <= (
        published
    )
    full_regularizers = {tuple(r.model_dump_json() for r in s.regularizers) for s in full}
    for spec in reduced:
        assert tuple(r.model_dump_json() for r in spec.regularizers) in full_regularizers


@pytest.mark.parametrize("name", NAMES)
def test_jacobian_norms_are_measured_in_the_published_units(name: str) -> None:
    reproduction = REPRODUCTIONS[name]
    for budget in reproductions.BUDGETS:
        for spec in specs(reproduction, budget):
            (geometry,) = [a.params for a in spec.analyses if a.name == "geometry"]
            assert geometry.input_space == reproduction.jacobian_units
            for regularizer in spec.regularizers:
                if regularizer.name == "jacobian":  # the paper's lambda, in its units
                    assert regularizer.params.input_space == reproduction.jacobian_units


def test_hoffman_measures_in_normalized_units_as_the_authors_code() -> None:
    assert REPRODUCTIONS["hoffman2019"].jacobian_units == "normalized"
    assert [row.name for row in REPRODUCTIONS["hoffman2019"].rows] == [
        "none",
        "L2",
        "dropout",
        "Jacobian",
        "all combined",
    ]


def test_summary_and_report_on_hand_made_results() -> None:
    reproduction = REPRODUCTIONS["hoffman2019"]
    none, jacobian = reproduction.rows[0], reproduction.rows[3]
    key = reproduction.metrics["jacobian_frobenius"]
    results: list[tuple[str, dict[str, Any]]] = [
        (none.configuration, {"test_accuracy": 0.90, key: 4.0}),
        (none.configuration, {"test_accuracy": 0.92, key: 6.0}),
        (jacobian.configuration, {"test_accuracy": 0.91, key: 2.0}),
        ("regularizers=other", {"test_accuracy": 0.5, key: math.nan}),
    ]
    rows = reproductions.summarize(reproduction, results)
    assert [row.name for row in rows][:5] == [row.name for row in reproduction.rows]
    assert rows[0].accuracy.mean == pytest.approx(91.0)
    assert rows[0].accuracy.std == pytest.approx(math.sqrt(2))  # sample std of 90, 92
    assert rows[0].jacobian_frobenius.mean == pytest.approx(5.0) and rows[0].accuracy.n == 2
    assert rows[3].accuracy.n == 1 and rows[3].accuracy.std == 0
    assert rows[1].accuracy.n == 0  # not run: shown as "-"
    assert rows[-1].name == "regularizers=other" and rows[-1].published is None
    text = reproductions.format_report(reproduction, rows, ["budget: test"])
    lines = text.splitlines()
    assert "- budget: test" in lines
    assert "| none | 98.9 | 91.00 ± 1.41 (n=2) | 32.9 | 5.00 ± 1.41 (n=2) |" in lines
    assert "| L2 | 99.2 | - | 4.6 | - |" in lines
    assert "| regularizers=other | - | 50.00 ± 0.00 (n=1) | - | - |" in lines
    assert "normalized units" in text


def test_robustness_beside_the_table_attacks_at_their_smallest_eps_noise_at_its_largest() -> None:
    reproduction = REPRODUCTIONS["hoffman2019"]
    none, jacobian = reproduction.rows[0], reproduction.rows[3]
    keys = {
        "attack/pgd_linf/acc_eps0": 0.95, "attack/pgd_linf/acc_eps0.1": 0.40,
        "attack/pgd_linf/acc_eps0.3": 0.0, "noise/gaussian_l2/acc_eps0": 0.95,
        "noise/gaussian_l2/acc_eps4": 0.90, "noise/gaussian_l2/acc_eps8": 0.60,
    }  # fmt: skip
    assert reproductions.robustness_columns(keys) == [
        "attack/pgd_linf/acc_eps0.1",
        "noise/gaussian_l2/acc_eps8",
    ]
    results: list[tuple[str, dict[str, Any]]] = [
        (none.configuration, {"test_accuracy": 0.95, **keys}),
        (
            jacobian.configuration,
            {"test_accuracy": 0.95, **keys, "noise/gaussian_l2/acc_eps8": 0.9},
        ),
    ]
    rows = reproductions.summarize(reproduction, results)
    assert rows[3].robustness["noise/gaussian_l2/acc_eps8"].mean == pytest.approx(90.0)
    text = reproductions.format_report(reproduction, rows, ["budget: test"])
    robustness = text.split("Robustness (ours", 1)[1].splitlines()
    header = next(line for line in robustness if line.startswith("| configuration"))
    assert "ε=0.1" in header and "ε=8" in header
    assert "| none | 40.0 ± 0.0 (n=1) | 60.0 ± 0.0 (n=1) |" in robustness
    assert "| Jacobian | 40.0 ± 0.0 (n=1) | 90.0 ± 0.0 (n=1) |" in robustness
    assert "| L2 | - | - |" in robustness  # not run


def test_grid_document_writes_the_reduced_budget_into_a_copy() -> None:
    reproduction = REPRODUCTIONS["hoffman2019"]
    full = reproductions.grid_document(reproduction, "full")
    reduced = reproductions.grid_document(reproduction, "reduced")
    assert full["grid"][SEED_PATH] != reduced["grid"][SEED_PATH]
    assert reproductions.grid_document(reproduction, "full") == full  # the file is unchanged
    with pytest.raises(ValueError, match="budget"):
        reproductions.grid_document(reproduction, "tiny")  # type: ignore[arg-type]


def test_reproduce_command_rejects_an_unknown_name() -> None:
    result = CliRunner().invoke(main, ["reproduce", "nope"])  # the regbench group's routing
    assert result.exit_code == 2
    assert "no reproduction 'nope'" in result.output and "hoffman2019" in result.output
    assert "reproduce" in CliRunner().invoke(main, ["--help"]).output


# --------------------------------------------------------------------------- real MNIST

# The reduced budget itself (1,000 training images, 60 epochs, LeNet ReLU, SGD lr 0.01 as
# published), one seed, the unregularized and Jacobian rows. Measured (2026-11-30, CPU):
# seed 0 ||J||_F 6.64 vs 2.12 (3.1x) at 93.9% vs 95.2%; seed 1 7.21 vs 2.18 (3.3x) at
# 94.2% vs 95.7%. The paper's 30x needs its full budget: the unregularized model's
# ||J||_F keeps growing with training.
MIN_RATIO = 2.5
MAX_ACCURACY_GAP = 3.0  # points


@pytest.mark.slow
def test_jacobian_row_has_a_far_smaller_jacobian_at_comparable_accuracy_on_mnist(
    mnist_root: Path, tmp_path: Path
) -> None:
    reproduction = REPRODUCTIONS["hoffman2019"]
    wanted = {reproduction.rows[0].configuration, reproduction.rows[3].configuration}
    metrics: dict[str, dict[str, float]] = {}
    for point in reproductions.plan(reproduction, "reduced"):
        if point.configuration not in wanted or point.values[SEED_PATH] != 0:
            continue
        spec: dict[str, Any] = point.spec
        set_path(spec, "dataset.root", str(mnist_root))
        set_path(spec, "training.device", "cpu")
        spec["analyses"] = [a for a in spec["analyses"] if a["kind"] == "geometry"]
        workdir = tmp_path / str(len(metrics))
        result = run(ExperimentSpec.model_validate(spec), workdir=workdir)
        metrics[point.configuration] = result.metrics
    none, jacobian = (metrics[reproduction.rows[i].configuration] for i in (0, 3))
    key = reproduction.metrics["jacobian_frobenius"]
    measured = (
        f"none {none['test_accuracy']:.4f} ||J||_F {none[key]:.2f}, "
        f"jacobian {jacobian['test_accuracy']:.4f} ||J||_F {jacobian[key]:.2f}"
    )
    assert none["test_accuracy"] > 0.85 and jacobian["test_accuracy"] > 0.85, measured
    gap = 100 * abs(none["test_accuracy"] - jacobian["test_accuracy"])
    assert gap <= MAX_ACCURACY_GAP, measured  # comparable accuracy
    assert none[key] >= MIN_RATIO * jacobian[key], measured  # the published direction
