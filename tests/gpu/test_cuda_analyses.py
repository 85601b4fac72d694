"""Attacks and analyses on CUDA: adversarial examples stay in the eps-ball and in [0, 1] and
stay on the GPU; the whole pipeline (training, final metrics, every analysis, checkpoints)
runs on the GPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from regcore.attacks.base import distances
from regcore.data import DataSplits, load_dataset
from regcore.pipeline import run
from regcore.registries import ATTACKS
from regcore.spec import ExperimentSpec
from regcore.tracking import MemoryTracker
from regcore.train import load_checkpoint, train

pytestmark = pytest.mark.gpu

SPEC = ExperimentSpec.model_validate(
    {
        "dataset": {"name": "digits", "size": 8, "train_size": 1000, "test_size": 300},
        "model": {"name": "mlp", "hidden": [64]},
        "training": {"epochs": 5, "batch_size": 50, "lr": 0.1, "seed": 0, "device": "cuda"},
    }
)

# Every registered attack (checked without a GPU in tests/regcore/test_gpu_options.py).
ATTACK_PARAMS: dict[str, list[dict[str, object]]] = {
    "fgsm": [{}],
    "pgd": [{"norm": "linf", "steps": 10}, {"norm": "l2", "steps": 10, "restarts": 2}],
    "autoattack": [
        {"norm": "linf", "version": "custom", "attacks": ["apgd-ce", "apgd-t"]},
        {"norm": "l2", "version": "custom", "attacks": ["apgd-ce"]},
    ],
}
EPS = {"linf": 0.1, "l2": 1.0}


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    data: DataSplits = load_dataset(SPEC.dataset, SPEC.training.seed)
    result = train(SPEC, data)
    test = data.test.to(result.device)
    return result.model.eval(), test.x[:200], test.y[:200]


@pytest.mark.parametrize(
    ("method", "params"),
    [(method, params) for method, variants in ATTACK_PARAMS.items() for params in variants],
)
def test_attacks_on_cuda_stay_in_the_ball_and_in_range(
    method: str,
    params: dict[str, object],
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = trained
    attack = ATTACKS.build(method, params)
    eps = EPS[attack.norm]
    generator = torch.Generator(device=x.device).manual_seed(0)
    x_adv = attack(model, x, y, eps, generator=generator)
    assert x_adv.is_cuda and x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(distances(x_adv, x, attack.norm).max()) <= eps * (1 + 1e-5) + 1e-6
    with torch.no_grad():
        clean = (model(x).argmax(dim=1) == y).float().mean().item()
        robust = (model(x_adv).argmax(dim=1) == y).float().mean().item()
    assert robust < clean  # it attacks


def test_per_sample_budgets_on_cuda(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    eps = torch.tensor([0.0, 0.05, 0.1, 0.2], device=x.device).repeat_interleave(len(x))
    x4, y4 = x.repeat(4, 1, 1, 1), y.repeat(4)
    x_adv = ATTACKS.build("pgd", {"steps": 5})(model, x4, y4, eps)
    assert torch.all(distances(x_adv, x4, "linf") <= eps + 1e-6)
    assert torch.equal(x_adv[: len(x)], x)  # eps = 0 rows are x itself


def test_the_pipeline_runs_every_analysis_on_cuda(tmp_path: Path, cuda: torch.device) -> None:
    analyses = [
        {"kind": "attack", "samples": 100, "eps": [0.0, 0.1], "steps": 5, "steps_curve": [1, 5]},
        {"kind": "attack", "method": "fgsm", "samples": 100, "eps": [0.1], "steps_curve": []},
        {"kind": "boundary", "planes": 4, "resolution": 21, "half_width": [10.0]},
        {"kind": "geometry", "samples": 50, "iterations": 3, "batch_size": 25},
        {"kind": "calibration"},
        {"kind": "plots", "samples": 4, "embedding_samples": 50, "tsne": False},
    ]
    spec = ExperimentSpec.model_validate({**SPEC.model_dump(mode="json"), "analyses": analyses})
    tracker = MemoryTracker()
    result = run(spec, tracker, workdir=tmp_path)
    metrics = result.metrics
    assert metrics["test_accuracy"] > 0.8
    for key in (
        "attack/pgd_linf/acc_eps0.1",
        "attack/fgsm_linf/acc_eps0.1",
        "boundary/w10/tv_iso_mean",
        "geometry/curvature_mean",
        "calibration/ece",
    ):
        assert math.isfinite(metrics[key]), key
    assert any(path.suffix == ".png" for path, _ in tracker.artifacts)
    saved = load_checkpoint(result.model_path)  # written from the GPU, read on the CPU
    assert all(not t.is_cuda for t in saved["model"].values())


def test_noise_on_cuda_sees_the_cpu_noise(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path, cuda: torch.device
) -> None:
    """The noise is drawn on the CPU whatever the device: the same points and draws on
    CUDA as on the CPU, and (up to last-bit differences of the forward pass) the same
    accuracies; zero noise is the clean accuracy."""
    from regcore.analysis.base import AnalysisContext
    from regcore.registries import ANALYSES

    model, _, _ = trained
    data = load_dataset(SPEC.dataset, SPEC.training.seed)
    params = {"samples": 300, "draws": 2}
    on_gpu = ANALYSES.build("noise", params).run(
        AnalysisContext(model, data.to(cuda), cuda, tmp_path / "cuda")
    )
    cpu_model = model.to("cpu")
    try:
        on_cpu = ANALYSES.build("noise", params).run(
            AnalysisContext(cpu_model, data, torch.device("cpu"), tmp_path / "cpu")
        )
    finally:
        model.to(cuda)
    assert (tmp_path / "cuda/noise/draws.json").read_text() == (
        tmp_path / "cpu/noise/draws.json"
    ).read_text()
    assert on_gpu.metrics.keys() == on_cpu.metrics.keys()
    for key, value in on_gpu.metrics.items():
        assert value == pytest.approx(on_cpu.metrics[key], abs=2 / 300), key
    with torch.no_grad():
        clean = (model(data.test.x.to(cuda)).argmax(dim=1).cpu() == data.test.y).double().mean()
    assert on_gpu.metrics["noise/gaussian_l2/acc_eps0"] == pytest.approx(clean.item())


def test_training_animation_on_cuda(tmp_path: Path, cuda: torch.device) -> None:
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "blobs", "n_train": 200, "n_test": 100},
            "model": {"name": "mlp", "hidden": [16]},
            "training": {"epochs": 2, "batch_size": 30, "seed": 0, "device": "cuda"},
            "analyses": [{"kind": "training_animation", "every": 3, "resolution": 30}],
        }
    )
    result = run(spec, MemoryTracker(), workdir=tmp_path)
    steps = 2 * math.ceil(180 / 30)  # 12: frames at 0, 3, 6, 9, 12
    assert result.metrics["training_animation/frames"] == steps // 3 + 1
    assert (tmp_path / "analyses/training_animation/decision_regions.gif").stat().st_size > 0
