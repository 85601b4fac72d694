"""Comparison tables: runs grouped by configuration, mean ± std (and n) over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation; 0 for a single run
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f}" if self.n > 1 else f"{self.mean:.4f}"


@dataclass
class ComparisonRow:
    configuration: str
    n: int
    metrics: dict[str, Summary] = field(default_factory=dict)


def summarize(values: Sequence[float]) -> Summary:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return Summary(math.nan, math.nan, 0)
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return Summary(statistics.fmean(finite), std, len(finite))


def compare(
    runs: Iterable[tuple[str, Mapping[str, Any]]], metrics: Sequence[str]
) -> list[ComparisonRow]:
    """(configuration, final metrics) pairs -> one row per configuration, in first-seen order."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for configuration, run_metrics in runs:
        grouped.setdefault(configuration, []).append(run_metrics)
    rows = []
    for configuration, group in grouped.items():
        row = ComparisonRow(configuration, len(group))
        for name in metrics:
            values = [m[name] for m in group if isinstance(m.get(name), int | float)]
            if values:
                row.metrics[name] = summarize(values)
        rows.append(row)
    return rows
