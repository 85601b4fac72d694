"""What every analysis gets and returns.

An analysis is registered in ``ANALYSES`` under its ``kind`` with a params model; the
spec lists them as ``{kind: boundary, planes: 50, ...}``. It runs on a trained model
(eval mode) and returns numbers plus the files it wrote (PNG plots, JSON/CSV tables).
Randomness inside an analysis comes from its own ``seed`` param, never from the
training seed, so every model of a comparison sees the same examples and planes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from regcore.data.base import DataSplits
from regcore.registry import ComponentParams

if TYPE_CHECKING:
    from regcore.spec import ExperimentSpec

# (fraction of this analysis done in 0..1, what it does now): a plain callable, so that
# whoever runs the analysis (a worker, the command line) learns how far it is.
ProgressCallback = Callable[[float, str], None]


@dataclass
class AnalysisContext:
    model: nn.Module  # in eval mode, on ``device``
    data: DataSplits  # on ``device``
    device: torch.device
    outdir: Path  # this analysis writes its artifacts here
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch training metrics
    spec: ExperimentSpec | None = None  # the run's spec (replaying its training); None if unknown
    progress: ProgressCallback | None = None

    def report(self, fraction: float, message: str = "") -> None:
        """Tell the caller how far this analysis is (nothing happens when no one listens)."""
        if self.progress is not None:
            self.progress(min(1.0, max(0.0, fraction)), message)


@dataclass(frozen=True)
class AnalysisEvent:
    """Where ``run_analyses`` is: analysis ``index`` (from 1) of ``total``, of ``kind``;
    ``fraction`` of it done, ``message`` what it does, ``seconds`` since it started;
    ``finished`` once it returned."""

    index: int
    total: int
    kind: str
    fraction: float
    message: str
    seconds: float
    finished: bool = False


@dataclass
class AnalysisResult:
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


class Analysis:
    """Base class: a registered analysis subclasses this, sets ``Params`` and writes ``run``."""

    Params: ClassVar[type[ComponentParams]]

    def __init__(self, params: ComponentParams) -> None:
        self.params = params

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        raise NotImplementedError


@dataclass(frozen=True)
class Aggregate:
    """Mean, sample std and the 95% confidence half-width of the mean over n values."""

    mean: float
    std: float
    ci95: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float] | torch.Tensor) -> Aggregate:
        data = torch.as_tensor(values, dtype=torch.float64).flatten()
        data = data[torch.isfinite(data)]
        n = int(data.numel())
        if n == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        if n == 1:
            return cls(float(data[0]), 0.0, math.nan, 1)
        std = float(data.std(correction=1))
        return cls(float(data.mean()), std, t_quantile_975(n - 1) * std / math.sqrt(n), n)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_mean": self.mean, f"{prefix}_std": self.std, f"{prefix}_ci95": self.ci95}


def t_quantile_975(dof: int) -> float:
    """Student's t 97.5% quantile (two-sided 95% interval)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def batched(total: int, size: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering range(total) in chunks of ``size``."""
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def as_json_value(value: Any) -> Any:
    """Floats that JSON can hold (nan and inf become None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
