"""The attack analysis on a trained digits MLP: a metric per eps, non-increasing, the
clean accuracy at eps = 0, its files, identical numbers on a rerun whatever torch's
global seed, the same examples for every model, one batched pass equal to per-eps runs,
and params checked against the method's own."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from regcore.analysis.attack import AttackAnalysis, AttackAnalysisParams, draw_examples
from regcore.analysis.base import AnalysisContext, AnalysisResult
from regcore.data.base import DataSplits
from regcore.registries import ANALYSES
from regcore.spec import AnalysisSpec
from tests.regcore.test_pgd import train_digits_mlp

FAST = {"samples": 200, "steps": 5, "steps_curve": [1, 3, 5]}  # steps: PGD only


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, DataSplits]:
    return train_digits_mlp()


def run(model: nn.Module, data: DataSplits, outdir: Path, **params: object) -> AnalysisResult:
    fast = FAST if params.get("method", "pgd") == "pgd" else {"samples": FAST["samples"]}
    analysis = ANALYSES.build("attack", {**fast, **params})
    return analysis.run(AnalysisContext(model, data, torch.device("cpu"), outdir))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    ("params", "tag"),
    [
        ({}, "pgd_linf"),
        ({"norm": "l2", "restarts": 2}, "pgd_l2"),
        ({"method": "fgsm"}, "fgsm_linf"),
    ],
)
def test_metrics_curves_and_files(
    trained: tuple[nn.Module, DataSplits], tmp_path: Path, params: dict, tag: str
) -> None:
    model, data = trained
    result = run(model, data, tmp_path, **params)
    eps = AttackAnalysisParams.model_validate(params).eps
    assert eps[0] == 0 and len(eps) == 5  # the norm's default budgets
    accuracies = [result.metrics[f"attack/{tag}/acc_eps{value:g}"] for value in eps]
    assert accuracies == sorted(accuracies, reverse=True), accuracies
    assert accuracies[0] == result.metrics[f"attack/{tag}/clean_acc"] > 0.95
    assert accuracies[-1] < 0.2

    names = {path.name for path in result.artifacts}
    expected = {"curve.csv", "accuracy_vs_eps.png", "per_class.csv", "examples.csv"}
    if params.get("method", "pgd") == "pgd":
        expected |= {"steps.csv", "accuracy_vs_steps.png"}
        median = eps[2]  # the lower median of the four positive budgets
        steps = [result.metrics[f"attack/{tag}/acc_eps{median:g}_steps{n}"] for n in (1, 3, 5)]
        assert [float(row["accuracy"]) for row in read_csv(tmp_path / "attack/steps.csv")] == steps
        assert steps[-1] <= accuracies[0]
    assert names == expected
    for path in result.artifacts:
        assert path.parent == tmp_path / "attack" and path.stat().st_size > 0

    curve = read_csv(tmp_path / "attack/curve.csv")
    assert [float(row["eps"]) for row in curve] == eps
    assert [float(row["accuracy"]) for row in curve] == accuracies
    per_class = read_csv(tmp_path / "attack/per_class.csv")
    assert {int(row["class"]) for row in per_class} == set(range(10))
    for value, accuracy in zip(eps, accuracies, strict=True):
        rows = [row for row in per_class if float(row["eps"]) == value]
        weighted = sum(float(r["accuracy"]) * int(r["count"]) for r in rows) / 200
        assert weighted == pytest.approx(accuracy)


def test_eps_zero_is_the_clean_accuracy_on_the_drawn_examples(
    trained: tuple[nn.Module, DataSplits], tmp_path: Path
) -> None:
    model, data = trained
    result = run(model, data, tmp_path, eps=[0.0], random_start=False)
    indices = draw_examples(len(data.test), 200, 0)
    with torch.no_grad():
        predicted = model(data.test.x[indices]).argmax(dim=1)
    clean = (predicted == data.test.y[indices]).double().mean().item()
    assert result.metrics["attack/pgd_linf/acc_eps0"] == clean
    assert result.metrics["attack/pgd_linf/clean_acc"] == clean
    assert "steps.csv" not in {path.name for path in result.artifacts}  # no positive eps


def test_reruns_are_identical_and_leave_torchs_generator_alone(
    trained: tuple[nn.Module, DataSplits], tmp_path: Path
) -> None:
    model, data = trained
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = run(model, data, tmp_path / "a", restarts=2).metrics
    assert torch.equal(torch.get_rng_state(), state)  # the training RNG is not disturbed
    torch.manual_seed(999)
    torch.rand(17)
    second = run(model, data, tmp_path / "b", restarts=2).metrics
    assert first == second
    assert (tmp_path / "a/attack/examples.csv").read_text() == (
        tmp_path / "b/attack/examples.csv"
    ).read_text()
    other_seed = run(model, data, tmp_path / "c", restarts=2, seed=1).metrics
    assert other_seed != first  # the seed draws the examples and the random starts


def test_every_model_of_a_comparison_is_attacked_on_the_same_examples(
    trained: tuple[nn.Module, DataSplits], tmp_path: Path
) -> None:
    model, data = trained
    torch.manual_seed(3)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()  # another, untrained model
    run(model, data, tmp_path / "a", eps=[0.0, 0.1])
    run(other, data, tmp_path / "b", eps=[0.0, 0.1])
    first = read_csv(tmp_path / "a/attack/examples.csv")
    second = read_csv(tmp_path / "b/attack/examples.csv")
    assert [row["index"] for row in first] == [row["index"] for row in second]
    assert [row["label"] for row in first] == [row["label"] for row in second]
    assert len(first) == 200 and len({row["index"] for row in first}) == 200
    assert [row["clean"] for row in first] != [row["clean"] for row in second]  # other models
    assert torch.equal(draw_examples(359, 200, 0), draw_examples(359, 200, 0))
    assert len(draw_examples(50, 200, 0)) == 50  # all of a small split


@pytest.mark.parametrize("method", ["pgd", "fgsm"])
def test_one_batched_pass_equals_one_run_per_eps(
    trained: tuple[nn.Module, DataSplits], tmp_path: Path, method: str
) -> None:
    model, data = trained
    extra = {"random_start": False} if method == "pgd" else {}
    eps = [0.0, 0.05, 0.1, 0.2]
    together = run(model, data, tmp_path, method=method, eps=eps, batch_size=300, **extra)
    for value in eps:
        alone = run(model, data, tmp_path, method=method, eps=[value], batch_size=75, **extra)
        key = f"attack/{method}_linf/acc_eps{value:g}"
        assert alone.metrics[key] == together.metrics[key]


def test_autoattack_through_the_analysis(
    trained: tuple[nn.Module, DataSplits], tmp_path: Path
) -> None:
    model, data = trained
    params = {"method": "autoattack", "version": "custom", "attacks": ["apgd-ce"]}
    result = run(model, data, tmp_path, samples=20, eps=[0.0, 0.1], steps_curve=[], **params)
    robust = result.metrics["attack/autoattack_linf/acc_eps0.1"]
    assert robust < result.metrics["attack/autoattack_linf/acc_eps0"]
    pgd = run(model, data, tmp_path, samples=20, eps=[0.0, 0.1], steps_curve=[], steps=20)
    assert robust <= pgd.metrics["attack/pgd_linf/acc_eps0.1"] + 0.05 + 1e-9


def test_params_are_checked_against_the_method() -> None:
    with pytest.raises(ValidationError, match="unknown attack 'cw'; valid choices: autoattack"):
        AttackAnalysisParams(method="cw")
    with pytest.raises(ValidationError, match="'fgsm' does not take restarts, steps; it takes"):
        AttackAnalysisParams(method="fgsm", steps=10, restarts=2)
    with pytest.raises(ValidationError, match="'fgsm': norm"):
        AttackAnalysisParams(method="fgsm", norm="l2")
    with pytest.raises(ValidationError, match="'pgd' does not take version"):
        AttackAnalysisParams(version="standard")
    with pytest.raises(ValidationError, match="needs an `attacks` list"):
        AttackAnalysisParams(method="autoattack", version="custom")
    with pytest.raises(ValidationError):
        AttackAnalysisParams(eps=[-0.1])
    params = AttackAnalysisParams(eps=[0.3, 0.0, 0.1, 0.1], steps=40, alpha=0.01)
    assert params.eps == [0.0, 0.1, 0.3]
    assert params.attack_params().model_dump() == {
        "norm": "linf", "steps": 40, "alpha": 0.01, "random_start": True, "restarts": 1,
    }  # fmt: skip
    assert AttackAnalysisParams(method="autoattack").attack_params().seed == 0
    assert AttackAnalysisParams(method="autoattack", seed=4).attack_params().seed == 4
    assert AttackAnalysisParams(norm="l2").eps == [0.0, 0.25, 0.5, 1.0, 2.0]


def test_a_spec_lists_the_analysis_by_kind() -> None:
    spec = AnalysisSpec.model_validate({"kind": "attack", "norm": "l2", "steps": 40})
    assert spec.name == "attack" and isinstance(spec.params, AttackAnalysisParams)
    assert ANALYSES.get("attack").target is AttackAnalysis
    written_out = AnalysisSpec.model_validate({"kind": "attack", "norm": "l2", "steps": 40,
                                               "eps": [0, 0.25, 0.5, 1, 2]})  # fmt: skip
    assert written_out.model_dump() == spec.model_dump()  # the default eps, written or not
    with pytest.raises(ValidationError, match="does not take steps"):
        AnalysisSpec.model_validate({"kind": "attack", "method": "fgsm", "steps": 40})
