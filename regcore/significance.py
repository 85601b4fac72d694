"""Is a difference between two rows real? Each configuration against a baseline row.

Per metric: the difference of means (row minus baseline), its 95% confidence interval and
a two-sided p-value from Welch's t-test, or from a paired t-test when the two rows were
trained on the same seeds (each seed once in each: the runs are paired by seed, which
removes the seed's share of the variance). The p-values of one metric are then corrected
by Holm's step-down method over the rows compared (every row but the baseline), and a
difference is called significant when the corrected p-value is below ``ALPHA``.

A row or baseline with one run has no spread: no test is possible, and the result says
so (``note``) instead of a p-value. With 2 or 3 seeds the intervals are wide; they are
reported as they are. Formulas: SCIENCE.md, "Comparing rows".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

from regcore.compare import ComparisonRow

ALPHA = 0.05
CONFIDENCE = 0.95

SeededValue = tuple[int | None, float]  # (training seed, the run's value)


@dataclass(frozen=True)
class Difference:
    """One row's metric against the baseline's. Without a test (``test`` None) only
    ``diff`` may be known and ``note`` says why."""

    diff: float  # mean(row) - mean(baseline); NaN when either side has no value
    ci_low: float | None
    ci_high: float | None
    p: float | None  # two-sided, uncorrected
    p_holm: float | None  # Holm-corrected over the rows compared on this metric
    test: str | None  # "welch" | "paired" | None (no test possible)
    n: int  # runs of the row
    n_baseline: int
    note: str | None = None

    @property
    def significant(self) -> bool | None:
        """True/False once corrected; None when no test was possible."""
        return None if self.p_holm is None else self.p_holm < ALPHA


def welch(row: Sequence[float], baseline: Sequence[float]) -> Difference:
    """Welch's unequal-variance t-test of mean(row) - mean(baseline) (scipy's ttest_ind,
    equal_var=False) and its confidence interval; both sides need two runs or more."""
    if _constant(row) and _constant(baseline):
        return _no_variance(_mean(row) - _mean(baseline), len(row), len(baseline))
    result = stats.ttest_ind(row, baseline, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    return _difference(
        _mean(row) - _mean(baseline), result, interval, "welch", len(row), len(baseline)
    )


def paired(row: Sequence[float], baseline: Sequence[float]) -> Difference:
    """Paired t-test (scipy's ttest_rel) of row[i] - baseline[i], the pairs in order."""
    if len(row) != len(baseline):
        raise ValueError(f"a paired test needs pairs: {len(row)} values against {len(baseline)}")
    if _constant([a - b for a, b in zip(row, baseline, strict=True)]):
        return _no_variance(_mean(row) - _mean(baseline), len(row), len(baseline))
    result = stats.ttest_rel(row, baseline)
    interval = result.confidence_interval(CONFIDENCE)
    return _difference(
        _mean(row) - _mean(baseline), result, interval, "paired", len(row), len(baseline)
    )


def _difference(
    diff: float, result: object, interval: object, test: str, n: int, n_baseline: int
) -> Difference:
    p = float(result.pvalue)  # type: ignore[attr-defined]
    low, high = float(interval.low), float(interval.high)  # type: ignore[attr-defined]
    if not math.isfinite(p):
        return _no_variance(diff, n, n_baseline)
    return Difference(diff, low, high, p, None, test, n, n_baseline)


def _constant(values: Sequence[float]) -> bool:
    """No spread to test against (scipy would warn and answer NaN or a meaningless p)."""
    return max(values) - min(values) <= 1e-12 * max(1.0, abs(max(values)))


def _no_variance(diff: float, n: int, n_baseline: int) -> Difference:
    """Both sides constant, or every pair differs alike: no t-test is defined."""
    return Difference(diff, None, None, None, None, None, n, n_baseline, "no variance")


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def versus(row: Sequence[SeededValue], baseline: Sequence[SeededValue]) -> Difference:
    """A row's runs against the baseline's, each a (seed, value): paired by seed when
    both hold the same seeds once each (two or more), else Welch; no test with one run."""
    values, base = [v for _, v in row], [v for _, v in baseline]
    diff = _mean(values) - _mean(base)
    if not values or not base:
        return Difference(diff, None, None, None, None, None, len(values), len(base), "no runs")
    if len(values) < 2 or len(base) < 2:
        note = "n=1: no test possible"
        return Difference(diff, None, None, None, None, None, len(values), len(base), note)
    seeds, base_seeds = [s for s, _ in row], [s for s, _ in baseline]
    if _pairable(seeds, base_seeds):
        by_seed = dict(baseline)
        return paired(values, [by_seed[seed] for seed in seeds])
    return welch(values, base)


def _pairable(seeds: Sequence[int | None], base_seeds: Sequence[int | None]) -> bool:
    return (
        None not in seeds
        and len(set(seeds)) == len(seeds)
        and len(set(base_seeds)) == len(base_seeds)
        and set(seeds) == set(base_seeds)
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the given order; None stays None (no test)
    and is not counted among the hypotheses."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))  # monotone in the sorted order
        adjusted[index] = running
    return adjusted


def against_baseline(
    rows: Sequence[Sequence[SeededValue]], baseline: int
) -> list[Difference | None]:
    """Every row's values of one metric against row ``baseline``'s, Holm-corrected over the
    rows compared; None in the baseline's place."""
    compared = [
        versus(values, rows[baseline]) if index != baseline else None
        for index, values in enumerate(rows)
    ]
    corrected = holm([d.p if d is not None else None for d in compared])
    return [
        _with_holm(d, p_holm) if d is not None else None
        for d, p_holm in zip(compared, corrected, strict=True)
    ]


def _with_holm(difference: Difference, p_holm: float | None) -> Difference:
    return Difference(
        difference.diff,
        difference.ci_low,
        difference.ci_high,
        difference.p,
        p_holm,
        difference.test,
        difference.n,
        difference.n_baseline,
        difference.note,
    )


def resolve_baseline(configurations: Sequence[str], baseline: str | int | None) -> int:
    """The baseline row's index: the first row by default, else a configuration's name,
    or its index (0-based) when no configuration has that name. ValueError otherwise."""
    if baseline is None or baseline == "" or not configurations:
        return 0  # no rows yet: nothing is compared, whatever was asked
    if isinstance(baseline, str) and baseline in configurations:
        return list(configurations).index(baseline)
    try:
        index = int(baseline)
    except (TypeError, ValueError):
        raise UnknownBaselineError(baseline, configurations) from None
    if 0 <= index < len(configurations):
        return index
    raise UnknownBaselineError(baseline, configurations)


class UnknownBaselineError(ValueError):
    def __init__(self, baseline: str | int | None, configurations: Sequence[str]) -> None:
        self.baseline, self.choices = baseline, list(configurations)
        listed = ", ".join(repr(c) for c in configurations)
        super().__init__(
            f"no configuration {baseline!r}: choose one of {listed}, "
            f"or an index from 0 to {len(configurations) - 1}"
        )


def versus_baseline(
    rows: Sequence[ComparisonRow], metrics: Sequence[str], baseline: str | int | None = None
) -> tuple[int, dict[str, dict[str, Difference]]]:
    """Every row against the baseline row (``resolve_baseline``) on each metric whose runs
    have values (``ComparisonRow.values``; a per-configuration number such as instability
    has none): the baseline's index and configuration -> metric -> Difference."""
    index = resolve_baseline([row.configuration for row in rows], baseline)
    compared: dict[str, dict[str, Difference]] = {row.configuration: {} for row in rows}
    if len(rows) < 2:
        return index, compared
    for name in metrics:
        if not any(name in row.values for row in rows):
            continue
        differences = against_baseline([row.values.get(name, []) for row in rows], index)
        for row, difference in zip(rows, differences, strict=True):
            if difference is not None:
                compared[row.configuration][name] = difference
    return index, compared
