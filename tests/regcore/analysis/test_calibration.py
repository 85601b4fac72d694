from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from regcore.analysis.base import AnalysisContext
from regcore.analysis.calibration import (
    CalibrationAnalysis,
    CalibrationParams,
    reliability_bins,
)
from regcore.data.base import DataInfo, DataSplits, Split


def test_perfectly_calibrated_predictor_has_near_zero_ece() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, 200_000)
    correct = rng.uniform(size=confidence.size) < confidence  # right with probability c
    assert reliability_bins(confidence, correct, 15).ece < 0.01
    overconfident = rng.uniform(size=confidence.size) < confidence - 0.1
    assert reliability_bins(confidence, overconfident, 15).ece == pytest.approx(0.1, abs=0.01)


def test_bins_by_hand() -> None:
    confidence = np.array([0.05, 0.3, 0.45, 0.5, 0.9, 1.0])
    correct = np.array([0, 1, 0, 1, 1, 0])
    bins = reliability_bins(confidence, correct, 2)  # (0, 0.5], (0.5, 1]
    assert bins.counts.tolist() == [4, 2]
    assert bins.accuracy.tolist() == pytest.approx([0.5, 0.5])
    assert bins.confidence.tolist() == pytest.approx([(0.05 + 0.3 + 0.45 + 0.5) / 4, 0.95])
    ece = 4 / 6 * abs(0.5 - 0.325) + 2 / 6 * abs(0.5 - 0.95)
    assert bins.ece == pytest.approx(ece)
    assert bins.mce == pytest.approx(0.45)


def test_analysis_metrics_and_plots(tmp_path: Path) -> None:
    torch.manual_seed(0)
    info = DataInfo((4,), 3, (0.5,) * 4, (0.25,) * 4, ("a", "b", "c"))
    split = Split(torch.rand(200, 4), torch.randint(0, 3, (200,)))
    data = DataSplits(split, None, split, info)
    model = nn.Linear(4, 3).eval()
    ctx = AnalysisContext(model, data, torch.device("cpu"), tmp_path)
    result = CalibrationAnalysis(CalibrationParams(bins=10)).run(ctx)
    probabilities = torch.softmax(model(split.x), dim=1).detach()
    nll = torch.nn.functional.cross_entropy(model(split.x), split.y).item()
    assert result.metrics["calibration/nll"] == pytest.approx(nll, rel=1e-5)
    accuracy = (probabilities.argmax(1) == split.y).double().mean().item()
    assert result.metrics["calibration/accuracy"] == pytest.approx(accuracy)
    assert 0 <= result.metrics["calibration/ece"] <= 1
    for path in result.artifacts:
        assert path.exists() and path.stat().st_size > 0
    assert {p.name for p in result.artifacts} == {
        "reliability.csv", "reliability.png", "confidence_histogram.png",
    }  # fmt: skip


def test_nll_is_finite_and_exact_for_a_logit_gap_of_120(tmp_path: Path) -> None:
    # logits (120, 0, 0) - the first class wins by 120; softmax of the true class underflows
    # to 0 in float32 (exp(-120) < 1e-45), so log of the probability would be inf.
    info = DataInfo((3,), 3, (0.5,) * 3, (0.25,) * 3, ("a", "b", "c"))
    x = torch.tensor([[120.0, 0.0, 0.0], [0.0, 0.0, 120.0]])  # (2, 3), logits = x
    y = torch.tensor([1, 2])  # the first sample's true class loses by 120
    split = Split(x, y)
    model = nn.Identity()
    ctx = AnalysisContext(
        model, DataSplits(split, None, split, info), torch.device("cpu"), tmp_path
    )
    assert torch.softmax(x, dim=1)[0, 1].item() == 0.0  # the underflow the fix is for
    result = CalibrationAnalysis(CalibrationParams(bins=5)).run(ctx)
    direct = (torch.logsumexp(x.double(), dim=1) - x.double()[torch.arange(2), y]).mean()
    assert np.isfinite(result.metrics["calibration/nll"])
    assert result.metrics["calibration/nll"] == pytest.approx(direct.item(), rel=1e-6)
    assert result.metrics["calibration/nll"] == pytest.approx((120 + 0) / 2, rel=1e-6)
    assert result.metrics["calibration/accuracy"] == 0.5
