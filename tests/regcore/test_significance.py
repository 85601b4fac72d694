"""Significance against a baseline row: scipy's tests on hand-made data, Holm by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from regcore.compare import compare
from regcore.significance import (
    UnknownBaselineError,
    against_baseline,
    holm,
    paired,
    resolve_baseline,
    versus,
    welch,
)

ROW = [0.91, 0.93, 0.92, 0.95]
BASE = [0.88, 0.90, 0.87]


def test_welch_matches_scipy() -> None:
    expected = stats.ttest_ind(ROW, BASE, equal_var=False)
    interval = expected.confidence_interval(0.95)
    got = welch(ROW, BASE)
    assert got.test == "welch"
    assert got.diff == pytest.approx(sum(ROW) / 4 - sum(BASE) / 3)
    assert got.p == pytest.approx(expected.pvalue)
    assert (got.ci_low, got.ci_high) == pytest.approx((interval.low, interval.high))
    assert got.ci_low < got.diff < got.ci_high
    assert (got.n, got.n_baseline) == (4, 3)


def test_welch_by_hand() -> None:
    """The statistic, Welch-Satterthwaite df and interval written out."""
    a, b = [1.0, 2.0, 4.0], [0.0, 0.5, 0.7, 0.1]
    ma, mb = sum(a) / 3, sum(b) / 4
    va = sum((x - ma) ** 2 for x in a) / 2
    vb = sum((x - mb) ** 2 for x in b) / 3
    se2 = va / 3 + vb / 4
    df = se2**2 / ((va / 3) ** 2 / 2 + (vb / 4) ** 2 / 3)
    t = (ma - mb) / math.sqrt(se2)
    half = stats.t.ppf(0.975, df) * math.sqrt(se2)
    got = welch(a, b)
    assert got.p == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert (got.ci_low, got.ci_high) == pytest.approx((ma - mb - half, ma - mb + half))


def test_paired_matches_scipy() -> None:
    a, b = [0.91, 0.93, 0.92], [0.89, 0.92, 0.90]
    expected = stats.ttest_rel(a, b)
    interval = expected.confidence_interval(0.95)
    got = paired(a, b)
    assert got.test == "paired"
    assert got.p == pytest.approx(expected.pvalue)
    assert (got.ci_low, got.ci_high) == pytest.approx((interval.low, interval.high))


def test_versus_pairs_by_seed_when_the_seeds_match() -> None:
    """Same seeds, listed in another order: paired on the seed, not on the position."""
    row = [(2, 0.93), (1, 0.91), (3, 0.92)]
    base = [(1, 0.89), (2, 0.92), (3, 0.90)]
    got = versus(row, base)
    expected = stats.ttest_rel([0.93, 0.91, 0.92], [0.92, 0.89, 0.90])
    assert got.test == "paired"
    assert got.p == pytest.approx(expected.pvalue)


def test_versus_uses_welch_when_the_seeds_differ() -> None:
    row = [(1, 0.91), (2, 0.93), (4, 0.92)]
    base = [(1, 0.89), (2, 0.92), (3, 0.90)]
    got = versus(row, base)
    expected = stats.ttest_ind([0.91, 0.93, 0.92], [0.89, 0.92, 0.90], equal_var=False)
    assert got.test == "welch"
    assert got.p == pytest.approx(expected.pvalue)


def test_one_run_says_no_test_is_possible() -> None:
    got = versus([(1, 0.95)], [(1, 0.90), (2, 0.91)])
    assert got.test is None and got.p is None and got.p_holm is None
    assert got.significant is None
    assert got.note == "n=1: no test possible"
    assert got.diff == pytest.approx(0.95 - 0.905)


def test_constant_rows_have_no_variance_not_a_crash() -> None:
    got = versus([(1, 1.0), (2, 1.0)], [(3, 1.0), (4, 1.0)])
    assert got.p is None and got.note == "no variance"
    shifted = versus([(1, 0.5), (2, 0.7)], [(1, 0.4), (2, 0.6)])  # pairs differ alike
    assert shifted.p is None and shifted.diff == pytest.approx(0.1)


def test_holm_by_hand() -> None:
    # sorted: 0.01 (x3 -> 0.03), 0.02 (x2 -> 0.04), 0.04 (x1 -> 0.04); None is not counted
    assert holm([0.04, None, 0.01, 0.02]) == pytest.approx([0.04, None, 0.03, 0.04])
    # monotone: a later smaller product takes the running maximum
    assert holm([0.03, 0.031, 0.5]) == pytest.approx([0.09, 0.09, 0.5])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_against_baseline_corrects_over_the_rows_compared() -> None:
    base = [(1, 0.90), (2, 0.91), (3, 0.89)]
    better = [(1, 0.95), (2, 0.97), (3, 0.93)]
    same = [(1, 0.905), (2, 0.90), (3, 0.895)]
    single = [(1, 0.99)]
    got = against_baseline([base, better, same, single], baseline=0)
    assert got[0] is None
    raw = [stats.ttest_rel([0.95, 0.97, 0.93], [0.90, 0.91, 0.89]).pvalue]
    raw.append(stats.ttest_rel([0.905, 0.90, 0.895], [0.90, 0.91, 0.89]).pvalue)
    assert [got[1].p, got[2].p] == pytest.approx(raw)
    assert [got[1].p_holm, got[2].p_holm] == pytest.approx(holm(raw))
    assert got[1].significant is True
    assert got[2].significant is False
    assert got[3].significant is None


def test_compare_keeps_each_runs_value_with_its_seed() -> None:
    rows = compare(
        [
            ("a", {"seed": 1, "acc": 0.9}),
            ("a", {"seed": 2, "acc": 0.8}),
            ("a", {"seed": 3, "acc": math.nan}),
            ("b", {"acc": 0.7}),
        ],
        ["acc"],
    )
    assert rows[0].values["acc"] == [(1, 0.9), (2, 0.8)]
    assert rows[1].values["acc"] == [(None, 0.7)]
    assert rows[0].metrics["acc"].n == 2


def test_resolve_baseline() -> None:
    names = ["none", "l2", "7"]
    assert resolve_baseline(names, None) == 0
    assert resolve_baseline(names, "l2") == 1
    assert resolve_baseline(names, "2") == 2
    assert resolve_baseline(names, 1) == 1
    assert resolve_baseline(names, "7") == 2  # a name wins over an index
    assert resolve_baseline([], "anything") == 0
    with pytest.raises(UnknownBaselineError, match="choose one of 'none', 'l2', '7'") as info:
        resolve_baseline(names, "dropout")
    assert info.value.choices == names
    with pytest.raises(UnknownBaselineError):
        resolve_baseline(names, "3")
