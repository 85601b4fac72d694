"""The random-noise analysis: zero noise is the clean accuracy, accuracy falls with the
noise's size, every model sees the same points and noise, inputs stay in [0, 1], the
Gaussian noise's L2 size is calibrated; and its columns in results, report and tables."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from client.tables import column_titles, short_metric
from regcore.analysis.attack import draw_examples
from regcore.analysis.base import AnalysisContext, AnalysisResult
from regcore.analysis.noise import (
    NoiseAnalysis,
    NoiseParams,
    base_noise,
    noise_generator,
)
from regcore.compare import ComparisonRow, Summary, noise_curves, result_metrics
from regcore.data.base import DataInfo, DataSplits, Split
from regcore.registries import ANALYSES
from regcore.report import build_report
from regcore.spec import AnalysisSpec
from regcore.train import evaluate
from tests.regcore.test_pgd import train_digits_mlp

KINDS = ("gaussian_l2", "uniform_linf")


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, DataSplits]:
    return train_digits_mlp()


def run(model: nn.Module, data: DataSplits, outdir: Path, **params: object) -> AnalysisResult:
    analysis = ANALYSES.build("noise", params)
    return analysis.run(AnalysisContext(model, data, torch.device("cpu"), outdir))


def curve(result: AnalysisResult, kind: str) -> list[float]:
    eps = sorted(
        float(key.rsplit("acc_eps", 1)[1])
        for key in result.metrics
        if key.startswith(f"noise/{kind}/")
    )
    return [result.metrics[f"noise/{kind}/acc_eps{value:g}"] for value in eps]


class Recorder(nn.Module):
    """A model that keeps every batch it is shown (detached copies)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.inner(x)


def box_data(n: int = 300, dim: int = 16, seed: int = 0) -> tuple[nn.Module, DataSplits]:
    """A fixed random linear model whose classes meet at the centre of the box, on points
    in [0.4, 0.6]^dim labelled by its own clean predictions (clean accuracy 1)."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(dim, 3)).eval()
    with torch.no_grad():
        linear = model[1]
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator))
        linear.bias.copy_(-linear.weight.sum(dim=1) / 2)  # the classes meet at the box's centre
        x = 0.4 + 0.2 * torch.rand(n, dim, generator=generator)  # (n, dim)
        y = model(x).argmax(dim=1)  # (n,)
    info = DataInfo((dim,), 3, (0.5,) * dim, (0.25,) * dim, ("a", "b", "c"))
    return model, DataSplits(train=Split(x, y), val=None, test=Split(x, y), info=info)


# --------------------------------------------------------------------------- the accuracies


def test_metrics_files_and_a_falling_curve_on_a_trained_model(
    trained: tuple[nn.Module, DataSplits], tmp_path: Path
) -> None:
    model, data = trained
    result = run(model, data, tmp_path, samples=10_000, draws=3)
    clean = evaluate(model, data.test)[1]  # every test point is drawn (359 < samples)
    for kind, eps in (("gaussian_l2", [0, 1, 2, 4, 8]), ("uniform_linf", [0, 0.1, 0.2, 0.3, 0.5])):
        keys = [f"noise/{kind}/acc_eps{value:g}" for value in eps]
        assert [key for key in result.metrics if key.startswith(f"noise/{kind}/")] == keys
        accuracies = [result.metrics[key] for key in keys]
        assert accuracies[0] == pytest.approx(clean, abs=1e-12)  # zero noise: clean accuracy
        assert accuracies == sorted(accuracies, reverse=True), accuracies
        assert accuracies[-1] < accuracies[0] - 0.05  # the largest noise costs accuracy
    assert result.metrics["noise/gaussian_l2/acc_eps8"] < 0.6  # per-pixel std 1 on 8x8 digits

    assert {path.name for path in result.artifacts} == {
        "curve.csv",
        "draws.json",
        "accuracy_vs_size.png",
    }
    assert all(path.parent == tmp_path / "noise" and path.stat().st_size > 0
               for path in result.artifacts)  # fmt: skip
    with (tmp_path / "noise/curve.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10
    for row in rows:
        key = f"noise/{row['kind']}/acc_eps{float(row['eps']):g}"
        assert float(row["accuracy"]) == result.metrics[key]
        assert (int(row["draws"]), int(row["samples"])) == (3, len(data.test))
    assert float(rows[0]["std_over_draws"]) == 0.0  # eps 0: the same input every draw


def test_zero_noise_equals_the_clean_accuracy_on_the_drawn_points(
    trained: tuple[nn.Module, DataSplits], tmp_path: Path
) -> None:
    model, data = trained
    result = run(model, data, tmp_path, samples=100, gaussian_l2_eps=[0], uniform_linf_eps=[0])
    indices = draw_examples(len(data.test), 100, 0)
    assert indices.tolist() == draw_examples(len(data.test), 100, 0).tolist()  # the attack's
    with torch.no_grad():
        clean = (model(data.test.x[indices]).argmax(dim=1) == data.test.y[indices]).double()
    for kind in KINDS:
        assert result.metrics[f"noise/{kind}/acc_eps0"] == clean.mean().item()


@pytest.mark.parametrize("kind", KINDS)
def test_each_draw_is_non_increasing_for_a_linear_model(tmp_path: Path, kind: str) -> None:
    """A linear model's classes are convex: along one noise ray (no clamping: points in
    [0.4, 0.6], noise below 0.4 per coordinate) a correct point stays correct up to some
    size, then wrong. So every single draw's accuracy is non-increasing, not just on average."""
    model, data = box_data()
    eps = {
        "gaussian_l2": [0, 0.05, 0.1, 0.15, 0.2, 0.3],
        "uniform_linf": [0, 0.05, 0.1, 0.2, 0.3, 0.39],
    }
    recorder = Recorder(model)
    params = {"kinds": [kind], f"{kind}_eps": eps[kind], "batch_size": 10_000}
    for seed in range(4):  # four independent draws, each checked on its own
        recorder.seen.clear()
        result = run(recorder, data, tmp_path, seed=seed, **params)
        accuracies = curve(result, kind)
        assert accuracies[0] == 1.0  # labels are the clean predictions
        assert accuracies == sorted(accuracies, reverse=True), accuracies
        assert accuracies[-1] < 1.0
        noisy = torch.cat(recorder.seen[1:])  # after the clean pass
        assert bool((noisy > 0).all() and (noisy < 1).all())  # the clamp never acted


# --------------------------------------------------------------------------- the same noise


def test_every_model_sees_the_same_points_and_noise(tmp_path: Path) -> None:
    model, data = box_data()
    other, _ = box_data(seed=1)
    first, second = Recorder(model), Recorder(other)
    a = run(first, data, tmp_path / "a", samples=120, draws=2, batch_size=10_000)
    b = run(second, data, tmp_path / "b", samples=120, draws=2, batch_size=10_000)
    assert len(first.seen) == len(second.seen) == 1 + 2 * 2  # clean, then 2 kinds x 2 draws
    assert all(torch.equal(p, q) for p, q in zip(first.seen, second.seen, strict=True))
    assert (tmp_path / "a/noise/draws.json").read_text() == (
        tmp_path / "b/noise/draws.json"
    ).read_text()
    assert a.metrics != b.metrics  # different models, different accuracies
    record = json.loads((tmp_path / "a/noise/draws.json").read_text())
    assert len(set(record["noise"]["gaussian_l2"])) == 2  # two different draws

    # Batch size and global RNG state change nothing; another seed changes the noise.
    torch.manual_seed(123)
    small = run(model, data, tmp_path / "c", samples=120, draws=2, batch_size=7)
    assert small.metrics == run(model, data, tmp_path / "d", samples=120, draws=2).metrics
    assert small.metrics == a.metrics
    reseeded = run(model, data, tmp_path / "e", samples=120, draws=2, seed=5)
    assert reseeded.metrics != a.metrics


def test_noisy_inputs_are_the_clamped_scaled_base_noise_and_stay_in_the_box(
    tmp_path: Path,
) -> None:
    model, data = box_data(n=50)
    recorder = Recorder(model)
    params = {"gaussian_l2_eps": [0, 20.0], "uniform_linf_eps": [0, 0.9], "batch_size": 10_000}
    run(recorder, data, tmp_path, **params)
    x = data.test.x[draw_examples(50, 1000, 0)]
    clean, noisy_g, noisy_u = recorder.seen
    assert torch.equal(clean, x)
    for kind, noisy, eps in (("gaussian_l2", noisy_g, 20.0), ("uniform_linf", noisy_u, 0.9)):
        direction = base_noise(kind, tuple(x.shape), noise_generator(kind, 0))
        assert torch.equal(noisy, (x + eps * direction).clamp(0, 1))
        assert float(noisy.min()) == 0.0 and float(noisy.max()) == 1.0  # clamped, in the box
    assert not torch.equal(noisy_g, noisy_u)


def test_gaussian_noise_is_sized_by_its_rms_l2_norm() -> None:
    """eps = s sqrt(D): E||n||^2 = eps^2 exactly, and for large D the mean norm is eps
    to 1/(4D); in 2-D the mean norm is eps sqrt(pi/4)."""
    for dim, points in ((2, 200_000), (64, 20_000), (784, 4_000)):
        direction = base_noise("gaussian_l2", (points, dim), noise_generator("gaussian_l2", 0))
        squared = direction.double().pow(2).sum(dim=1)  # (points,) ||n||^2 at eps = 1
        assert squared.mean().item() == pytest.approx(
            1.0, abs=4 * squared.std().item() / points**0.5
        )
        assert direction.std().item() == pytest.approx(1 / math.sqrt(dim), rel=0.01)
        norms = squared.sqrt()
        expected = math.sqrt(math.pi / 4) if dim == 2 else math.sqrt(1 - 1 / (2 * dim))
        assert norms.mean().item() == pytest.approx(
            expected, abs=4 * norms.std().item() / points**0.5
        )
    large = base_noise("gaussian_l2", (4_000, 784), noise_generator("gaussian_l2", 1))
    assert large.double().norm(dim=1).mean().item() == pytest.approx(1.0, rel=0.005)  # MNIST
    uniform = base_noise("uniform_linf", (10_000, 16), noise_generator("uniform_linf", 0))
    assert float(uniform.abs().max()) <= 1.0 and float(uniform.abs().max()) > 0.999
    assert uniform.mean().item() == pytest.approx(0.0, abs=0.01)


# --------------------------------------------------------------------------- the params


def test_params_are_bounded_sorted_and_named() -> None:
    params = NoiseParams(kinds=["uniform_linf", "gaussian_l2", "uniform_linf"],
                         uniform_linf_eps=[0.3, 0, 0.1, 0.1])  # fmt: skip
    assert params.kinds == ["gaussian_l2", "uniform_linf"]
    assert params.uniform_linf_eps == [0.0, 0.1, 0.3]
    assert params.eps("gaussian_l2") == [0.0, 1.0, 2.0, 4.0, 8.0]
    for bad in ({"kinds": ["salt"]}, {"kinds": []}, {"gaussian_l2_eps": [-1.0]},
                {"draws": 0}, {"samples": 0}, {"split": "train"}, {"seed": -1}):  # fmt: skip
        with pytest.raises(ValidationError):
            NoiseParams.model_validate(bad)
    spec = AnalysisSpec.model_validate({"kind": "noise", "draws": 2})
    assert spec.name == "noise" and isinstance(spec.params, NoiseParams)
    assert ANALYSES.get("noise").target is NoiseAnalysis


def test_a_missing_validation_split_is_a_clear_error(tmp_path: Path) -> None:
    model, data = box_data(n=20)
    with pytest.raises(ValueError, match="no val split"):
        run(model, data, tmp_path, split="val")


# --------------------------------------------------------------------------- in the results


NOISE_KEYS = [
    "noise/uniform_linf/acc_eps0.3",
    "noise/gaussian_l2/acc_eps8",
    "noise/gaussian_l2/acc_eps0",
    "noise/uniform_linf/acc_eps0",
    "noise/gaussian_l2/acc_eps2",
]


def test_result_metrics_put_noise_after_the_attacks_by_kind_and_size() -> None:
    others = ["train_seconds", "attack/pgd_linf/acc_eps0.1", "test_accuracy",
              "boundary/w20/tv_iso_mean", "attack/pgd_linf/acc_eps0"]  # fmt: skip
    keys = [*NOISE_KEYS, *others, "noise/gaussian_l2/other"]
    assert result_metrics(keys) == [
        "test_accuracy",
        "attack/pgd_linf/acc_eps0",
        "attack/pgd_linf/acc_eps0.1",
        "noise/gaussian_l2/acc_eps0",
        "noise/gaussian_l2/acc_eps2",
        "noise/gaussian_l2/acc_eps8",
        "noise/uniform_linf/acc_eps0",
        "noise/uniform_linf/acc_eps0.3",
        "boundary/w20/tv_iso_mean",
        "train_seconds",
    ]


def rows() -> list[ComparisonRow]:
    def metrics(shift: float) -> dict[str, Summary]:
        return {
            "test_accuracy": Summary(0.9 - shift, 0.01, 2),
            "attack/pgd_linf/acc_eps0.1": Summary(0.5 - shift, 0.05, 2),
            "noise/gaussian_l2/acc_eps0": Summary(0.9 - shift, 0.01, 2),
            "noise/gaussian_l2/acc_eps8": Summary(0.6 - shift, 0.02, 2),
            "noise/gaussian_l2/acc_eps2": Summary(0.8 - shift, 0.02, 2),
            "noise/uniform_linf/acc_eps0.3": Summary(0.7 - shift, 0.03, 2),
        }

    return [ComparisonRow("none", 2, metrics(0.0)), ComparisonRow("jacobian", 2, metrics(0.1))]


def test_noise_curves_and_the_report_panels() -> None:
    curves = noise_curves(rows())
    assert [(c.configuration, c.attack) for c in curves] == [
        ("none", "gaussian_l2"),
        ("none", "uniform_linf"),
        ("jacobian", "gaussian_l2"),
        ("jacobian", "uniform_linf"),
    ]
    assert curves[0].eps == [0.0, 2.0, 8.0] and curves[0].mean == [0.9, 0.8, 0.6]
    assert curves[2].std == [0.01, 0.02, 0.02] and curves[2].n == [2, 2, 2]
    metrics = result_metrics(rows()[0].metrics)
    report = build_report("noise", rows(), metrics)
    assert report.panels == [
        "robust accuracy vs eps: pgd_linf",
        "accuracy under random noise vs size: gaussian_l2",
        "accuracy under random noise vs size: uniform_linf",
        "test accuracy",
    ]
    assert "noise/gaussian_l2/acc_eps8" in report.html


def test_table_titles_are_readable() -> None:
    assert short_metric("noise/gaussian_l2/acc_eps8") == "gauss L2 noise ε=8"
    assert short_metric("noise/uniform_linf/acc_eps0.3") == "unif Linf noise ε=0.3"
    titles = column_titles(result_metrics(rows()[0].metrics))
    assert len(set(titles)) == len(titles)
    assert "gauss L2 noise ε=2" in titles
