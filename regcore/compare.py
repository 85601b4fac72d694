"""Comparison tables: runs grouped by configuration, mean ± std (and n) over seeds."""

from __future__ import annotations

import math
import re
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
    # per metric, each run's (training seed, value): what significance tests pair and compare
    values: dict[str, list[tuple[int | None, float]]] = field(default_factory=dict)


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
                row.values[name] = _seeded(group, name)
        rows.append(row)
    return rows


def _seeded(group: Sequence[Mapping[str, Any]], name: str) -> list[tuple[int | None, float]]:
    """The finite values of ``name`` with the seed of the run that measured each."""
    return [
        (seed if isinstance(seed := m.get("seed"), int) else None, float(m[name]))
        for m in group
        if isinstance(m.get(name), int | float) and math.isfinite(m[name])
    ]


# --------------------------------------------------------------------------- sweep results

TEST_ACCURACY = "test_accuracy"
TRAIN_SECONDS = "train_seconds"
ROBUST_ACCURACY = re.compile(r"^attack/(?P<attack>[^/]+)/acc_eps(?P<eps>[0-9.e+-]+)$")
NOISE_ACCURACY = re.compile(r"^noise/(?P<kind>[^/]+)/acc_eps(?P<eps>[0-9.e+-]+)$")
# boundary_found (the fraction of planes that showed a boundary) follows each distance column:
# planes without one are left out of distance_mean, so the mean alone can mislead
BOUNDARY = re.compile(
    r"^boundary/w(?P<width>[0-9.e+-]+)/"
    r"(?:(?P<metric>tv_iso|distance)_mean|(?P<found>boundary_found))$"
)
GEOMETRY = ("geometry/curvature_mean", "geometry/grad_norm_mean", "geometry/hessian_norm_mean")


def result_metrics(keys: Iterable[str]) -> list[str]:
    """The comparison's columns among a sweep's metric names, in reading order: test
    accuracy; robust accuracy per attack at every eps (ascending); accuracy under random
    noise per kind at every size (ascending); boundary total variation per plane width,
    then per width the distance and the fraction of planes where a boundary was found;
    curvature; training time."""
    keys = set(keys)
    robust = sorted(
        (m["attack"], float(m["eps"]), key) for key in keys if (m := ROBUST_ACCURACY.match(key))
    )
    noise = sorted(
        (m["kind"], float(m["eps"]), key) for key in keys if (m := NOISE_ACCURACY.match(key))
    )
    boundary = sorted(
        (m["metric"] != "tv_iso", float(m["width"]), m["found"] is not None, key)
        for key in keys
        if (m := BOUNDARY.match(key))
    )
    ordered = [TEST_ACCURACY] if TEST_ACCURACY in keys else []
    ordered += [key for *_, key in robust] + [key for *_, key in noise]
    ordered += [key for *_, key in boundary]
    ordered += [key for key in GEOMETRY if key in keys]
    ordered += [TRAIN_SECONDS] if TRAIN_SECONDS in keys else []
    return ordered


@dataclass(frozen=True)
class RobustCurve:
    """Robust accuracy against eps for one configuration and attack: mean and std over seeds."""

    configuration: str
    attack: str
    eps: list[float]
    mean: list[float]
    std: list[float]
    n: list[int]


def robust_curves(rows: Sequence[ComparisonRow]) -> list[RobustCurve]:
    """Per (configuration, attack), the robust-accuracy columns as a curve over eps."""
    return _curves(rows, ROBUST_ACCURACY, "attack")


def noise_curves(rows: Sequence[ComparisonRow]) -> list[RobustCurve]:
    """Per (configuration, noise kind), accuracy under random noise as a curve over its
    size (``regcore.analysis.noise``); the curve's ``attack`` is the noise kind."""
    return _curves(rows, NOISE_ACCURACY, "kind")


def _curves(
    rows: Sequence[ComparisonRow], pattern: re.Pattern[str], group: str
) -> list[RobustCurve]:
    """Per (configuration, the ``group`` part of the key), the columns ``pattern`` matches
    as a curve over their ``eps`` part, ascending."""
    curves = []
    for row in rows:
        points: dict[str, list[tuple[float, Summary]]] = {}
        for key, summary in row.metrics.items():
            if (match := pattern.match(key)) and summary.n > 0:
                points.setdefault(match[group], []).append((float(match["eps"]), summary))
        for name, values in sorted(points.items()):
            values.sort(key=lambda item: item[0])
            curves.append(
                RobustCurve(
                    row.configuration,
                    name,
                    eps=[eps for eps, _ in values],
                    mean=[s.mean for _, s in values],
                    std=[s.std for _, s in values],
                    n=[s.n for _, s in values],
                )
            )
    return curves
