"""Calibration: expected calibration error, reliability diagram, confidence histogram.

With confidences c_i = max_k p_k(x_i) split into equal-width bins B_1..B_M of (0, 1],
ECE = sum_m |B_m|/N * |acc(B_m) - conf(B_m)| (Guo et al. 2017,
https://arxiv.org/abs/1706.04599); MCE is the largest bin gap. Also the NLL and the
Brier score of the full probability vector. The NLL is -log_softmax(z)_y =
logsumexp(z) - z_y from the logits z, finite for any logit gap (the log of a softmax
probability is -inf once that probability underflows, a gap above ~104 in float32).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from regcore.analysis import plots
from regcore.analysis.base import Analysis, AnalysisContext, AnalysisResult
from regcore.registries import ANALYSES
from regcore.registry import MAX_BATCH, MAX_COUNT, ComponentParams


class CalibrationParams(ComponentParams):
    bins: int = Field(15, ge=1, le=MAX_COUNT)
    split: Literal["test", "val", "train"] = "test"
    batch_size: int = Field(1000, ge=1, le=MAX_BATCH)


@dataclass(frozen=True)
class ReliabilityBins:
    edges: np.ndarray  # (M + 1,)
    counts: np.ndarray  # (M,)
    accuracy: np.ndarray  # (M,) 0 for empty bins
    confidence: np.ndarray  # (M,) 0 for empty bins

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        return float((self.counts / total * np.abs(self.accuracy - self.confidence)).sum())

    @property
    def mce(self) -> float:
        gaps = np.abs(self.accuracy - self.confidence)[self.counts > 0]
        return float(gaps.max()) if gaps.size else 0.0


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int) -> ReliabilityBins:
    """Equal-width bins over (0, 1]; a confidence on an edge goes to the bin it closes."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # (N,)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    hits = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    sums = np.bincount(which, weights=confidence.astype(np.float64), minlength=bins)
    safe = np.maximum(counts, 1)
    return ReliabilityBins(edges, counts, hits / safe, sums / safe)


@torch.no_grad()
def predict_log_probabilities(
    model: torch.nn.Module, x: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(N, C) log-softmax of the logits, in batches."""
    return torch.cat(
        [F.log_softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
    )


def negative_log_likelihood(log_probabilities: torch.Tensor, y: torch.Tensor) -> float:
    """Mean -log p_y from (N, C) log-probabilities: finite where p_y underflows to 0."""
    return float(-log_probabilities.gather(1, y[:, None]).double().mean())


@ANALYSES.register("calibration")
class CalibrationAnalysis(Analysis):
    """Expected calibration error, reliability diagram and confidence histogram."""

    Params = CalibrationParams
    params: CalibrationParams

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        split = getattr(ctx.data, self.params.split)
        if split is None:
            raise ValueError(f"calibration: the dataset has no {self.params.split} split")
        log_probabilities = predict_log_probabilities(ctx.model, split.x, self.params.batch_size)
        probabilities = log_probabilities.exp()  # (N, C)
        confidence, predicted = probabilities.max(dim=1)  # (N,), (N,)
        correct = predicted == split.y
        bins = reliability_bins(confidence.cpu().numpy(), correct.cpu().numpy(), self.params.bins)
        one_hot = F.one_hot(split.y, probabilities.shape[1]).to(probabilities.dtype)
        metrics = {
            "calibration/ece": bins.ece,
            "calibration/mce": bins.mce,
            "calibration/nll": negative_log_likelihood(log_probabilities, split.y),
            "calibration/brier": float(((probabilities - one_hot) ** 2).sum(dim=1).mean()),
            "calibration/mean_confidence": float(confidence.mean()),
            "calibration/accuracy": float(correct.double().mean()),
        }

        outdir = ctx.outdir / "calibration"
        outdir.mkdir(parents=True, exist_ok=True)
        table = outdir / "reliability.csv"
        with table.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["bin_low", "bin_high", "count", "accuracy", "confidence"])
            for m in range(len(bins.counts)):
                writer.writerow(
                    [bins.edges[m], bins.edges[m + 1], int(bins.counts[m]),
                     bins.accuracy[m], bins.confidence[m]]
                )  # fmt: skip
        diagram = plots.reliability_diagram(
            bins.edges, bins.accuracy, bins.confidence, bins.counts, bins.ece,
            outdir / "reliability.png",
        )  # fmt: skip
        confidence_plot = plots.histogram(
            confidence.cpu().numpy(), outdir / "confidence_histogram.png",
            title="confidence of the predicted class", xlabel="max softmax probability",
        )  # fmt: skip
        return AnalysisResult(metrics, [table, diagram, confidence_plot])
