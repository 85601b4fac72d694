"""Accuracy under random noise of increasing size, on the attacks' eps axis (pixel units).

The model classifies clamp01(x + n) for two kinds of noise n:

- ``gaussian_l2``: n ~ N(0, s^2 I_D) sized by eps = s sqrt(D) (SCIENCE.md), its
  root-mean-square L2 norm: E||n||_2^2 = eps^2 exactly, and the mean norm E||n||_2 is
  eps sqrt(1 - 1/(2D)) to first order (0.03% below eps on MNIST, D = 784; 11% below on
  2-D blobs, where E||n||_2 = eps sqrt(pi/4)).
- ``uniform_linf``: n uniform on [-a, a]^D with a = eps, its Linf size.

Each sample gets one fixed base direction per draw (z for Gaussian, u ~ U[-1, 1]^D for
uniform) and eps only scales it: the noise at a larger eps lies further along the same
ray. Before clamping a point's accuracy then moves along one line; for a model whose
region of each class is convex (a linear model) a correctly classified point stays
correct up to some size and wrong beyond it, so accuracy is non-increasing in eps. The
clamp to [0, 1] bends that ray at the box's faces, and a nonlinear model's regions are
not convex, so in general accuracy is non-increasing only in expectation. eps = 0 is the
clean input itself: its accuracy is the clean accuracy, exactly.

Points and noise come from the analysis' own ``seed`` (never the training seed): the
points are the ``attack`` analysis' points at the same seed (``draw_examples``), and each
kind's base noise is drawn on the CPU, for all points at once, by a generator seeded
from (kind, seed) (draw k is the k-th tensor it draws: the first draws do not change
when ``draws`` grows), so every model of a comparison, on any device and at any
``batch_size``, sees the same noisy inputs. ``draws`` > 1 averages over several noise
draws per point.

Default sizes (MNIST-sensible, in pixel units on [0, 1]): Gaussian L2 [0, 1, 2, 4, 8]
(2 is the top of the L2 attacks' default budgets; random noise needs far more norm than
an adversarial direction to flip a label, so the list runs on to 8, a per-pixel std of
0.29 on MNIST), uniform Linf [0, 0.1, 0.2, 0.3, 0.5]
(0.3 is the Linf attack budget; a = 0.5 has a per-pixel std of 0.29 too).

Metrics: ``noise/<kind>/acc_eps{eps:g}`` per kind and eps (accuracy averaged over the
draws). Artifacts under ``noise/``: curve.csv (kind, eps, accuracy, std over draws,
draws, samples), draws.json (the sha256 of the test indices and of each kind's base
noise: equal files mean equal noise) and accuracy_vs_size.png.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from regcore.analysis import plots
from regcore.analysis.attack import _write_csv, examples, predict
from regcore.analysis.base import Analysis, AnalysisContext, AnalysisResult, batched
from regcore.registries import ANALYSES
from regcore.registry import (
    MAX_BATCH,
    MAX_COUNT,
    MAX_FLOAT,
    MAX_LIST,
    MAX_SAMPLES,
    MAX_SEED,
    ComponentParams,
)

NoiseKind = Literal["gaussian_l2", "uniform_linf"]
NOISE_KINDS: tuple[NoiseKind, ...] = ("gaussian_l2", "uniform_linf")
UNITS: dict[str, str] = {"gaussian_l2": "L2, s sqrt(D)", "uniform_linf": "Linf"}
DEFAULT_EPS: dict[str, list[float]] = {
    "gaussian_l2": [0.0, 1.0, 2.0, 4.0, 8.0],
    "uniform_linf": [0.0, 0.1, 0.2, 0.3, 0.5],
}
Size = Annotated[float, Field(ge=0, le=MAX_FLOAT, allow_inf_nan=False)]


class NoiseParams(ComponentParams):
    kinds: list[NoiseKind] = Field(
        list(NOISE_KINDS), min_length=1, max_length=MAX_LIST, description="noise kinds"
    )
    gaussian_l2_eps: list[Size] = Field(
        DEFAULT_EPS["gaussian_l2"],
        min_length=1,
        max_length=MAX_LIST,
        description="sizes s sqrt(D) (RMS L2 norm) of the Gaussian noise, pixel units; sorted",
    )
    uniform_linf_eps: list[Size] = Field(
        DEFAULT_EPS["uniform_linf"],
        min_length=1,
        max_length=MAX_LIST,
        description="half-widths (Linf sizes) of the uniform noise, pixel units; sorted",
    )
    samples: int = Field(1000, ge=1, le=MAX_SAMPLES, description="points (all if fewer)")
    draws: int = Field(1, ge=1, le=MAX_COUNT, description="noise draws per point, averaged")
    batch_size: int = Field(
        1000, ge=1, le=MAX_BATCH, description="rows (points x eps values) per forward pass"
    )
    split: Literal["test", "val"] = Field("test", description="the split the points come from")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="draws the points and the noise; shared")

    @field_validator("kinds")
    @classmethod
    def _unique_kinds(cls, value: list[NoiseKind]) -> list[NoiseKind]:
        return [kind for kind in NOISE_KINDS if kind in value]

    @field_validator("gaussian_l2_eps", "uniform_linf_eps")
    @classmethod
    def _sorted(cls, value: list[float]) -> list[float]:
        return sorted(set(value))

    def eps(self, kind: str) -> list[float]:
        return self.gaussian_l2_eps if kind == "gaussian_l2" else self.uniform_linf_eps


def noise_generator(kind: str, seed: int) -> torch.Generator:
    """The CPU generator of one kind's noise: seeded from (kind, seed), so the kinds differ.

    A CPU generator keeps 32 bits of its seed; a hash spreads (kind, seed) over them."""
    digest = hashlib.sha256(f"regbench/noise/{kind}/{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:4], "little"))


def base_noise(kind: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """(N, *input) CPU float32 noise of size 1, per point: std 1/sqrt(D) per coordinate, so
    E||n_i||_2^2 = 1 (Gaussian), or ||n_i||_inf <= 1 (uniform). Successive calls on one
    generator are successive draws."""
    if kind == "gaussian_l2":
        dim = math.prod(shape[1:])
        return torch.randn(shape, generator=generator) / math.sqrt(dim)
    return torch.rand(shape, generator=generator) * 2 - 1


@torch.no_grad()
def noisy_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    direction: torch.Tensor,
    eps: list[float],
    *,
    batch_size: int,
    clean: torch.Tensor | None = None,
) -> torch.Tensor:
    """(E, N) bool on the CPU: the model classifies clamp01(x + eps * direction) as y, per
    eps (E,).

    ``direction`` (N, ...) may live on the CPU; it moves with each chunk. eps = 0 is x
    itself, unclamped (``clean`` (N,), when given, is its answer). Each chunk of points
    is repeated once per positive eps.
    """
    correct = torch.empty(len(eps), len(x), dtype=torch.bool)  # (E, N)
    positive = [i for i, value in enumerate(eps) if value > 0]
    if len(positive) < len(eps):
        if clean is None:
            clean = predict(model, x, batch_size) == y
        correct[[i for i, value in enumerate(eps) if value == 0]] = clean.cpu()
    if not positive:
        return correct
    scales = torch.tensor([eps[i] for i in positive], dtype=x.dtype, device=x.device)  # (R,)
    shape = (len(positive),) + (1,) * x.dim()  # broadcasts (R, 1, ...) over (n, ...)
    chunk = max(1, batch_size // len(positive))
    for start, stop in batched(len(x), chunk):
        xb = x[start:stop]  # (n, ...)
        nb = direction[start:stop].to(device=x.device, dtype=x.dtype)  # (n, ...)
        noisy = (xb.unsqueeze(0) + scales.view(shape) * nb.unsqueeze(0)).clamp_(0, 1)
        logits = model(noisy.flatten(0, 1))  # (R * n, C)
        predicted = logits.argmax(dim=1).view(len(positive), stop - start)  # (R, n)
        correct[positive, start:stop] = (predicted == y[start:stop]).cpu()
    return correct


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (CPU, contiguous)."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@ANALYSES.register("noise")
class NoiseAnalysis(Analysis):
    """Accuracy under Gaussian (L2-sized) and uniform (Linf-sized) random noise versus size."""

    Params = NoiseParams
    params: NoiseParams

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        p = self.params
        split = ctx.data.test if p.split == "test" else ctx.data.val
        if split is None:
            raise ValueError(f"noise: the dataset has no {p.split} split")
        # the attack analysis's points at the same seed
        indices, x, y = examples(split, p.samples, p.seed, ctx.device)  # (N,), (N, ...), (N,)

        clean = predict(ctx.model, x, p.batch_size) == y  # (N,) the eps = 0 rows, once
        metrics: dict[str, float] = {}
        rows: list[tuple[str, float, float, float, int, int]] = []
        series: dict[str, tuple[list[float], list[float]]] = {}
        digests: dict[str, list[str]] = {}
        for kind in p.kinds:
            eps = p.eps(kind)
            per_draw = []
            digests[kind] = []
            generator = noise_generator(kind, p.seed)
            for _ in range(p.draws):
                direction = base_noise(kind, tuple(x.shape), generator)  # (N, ...) on the CPU
                digests[kind].append(tensor_digest(direction))
                correct = noisy_correct(
                    ctx.model, x, y, direction, eps, batch_size=p.batch_size, clean=clean
                )  # (E, N)
                per_draw.append(correct.double().mean(dim=1))  # (E,)
            accuracy = torch.stack(per_draw)  # (draws, E)
            mean = accuracy.mean(dim=0).tolist()
            spread = accuracy.std(dim=0).tolist() if p.draws > 1 else [0.0] * len(eps)
            for value, acc, std in zip(eps, mean, spread, strict=True):
                metrics[f"noise/{kind}/acc_eps{value:g}"] = acc
                rows.append((kind, value, acc, std, p.draws, len(indices)))
            series[kind] = (eps, mean)

        outdir = ctx.outdir / "noise"
        outdir.mkdir(parents=True, exist_ok=True)
        header = ["kind", "eps", "accuracy", "std_over_draws", "draws", "samples"]
        artifacts = [_write_csv(outdir / "curve.csv", header, rows)]
        record = {"split": p.split, "indices_sha256": tensor_digest(indices), "noise": digests}
        (outdir / "draws.json").write_text(json.dumps(record, indent=1, sort_keys=True))
        artifacts.append(outdir / "draws.json")
        artifacts.append(self._plot(series, len(indices), outdir / "accuracy_vs_size.png"))
        return AnalysisResult(metrics, artifacts)

    def _plot(
        self, series: dict[str, tuple[list[float], list[float]]], count: int, path: Path
    ) -> Path:
        """One panel per kind: their sizes are in different units."""
        with plots.figure(path, size=(4.5 * len(series), 3.2)) as fig:
            axes = fig.subplots(1, len(series), squeeze=False)[0]
            for ax, (kind, (eps, accuracy)) in zip(axes, series.items(), strict=True):
                ax.plot(eps, accuracy, marker="o", markersize=3)
                ax.set(
                    title=f"{kind} noise ({count} points, {self.params.draws} draws)",
                    xlabel=f"eps ({UNITS[kind]}, pixel units)",
                    ylabel="accuracy",
                    ylim=(-0.02, 1.02),
                )
        return path
