"""Local instability across seeds: identical members, a hand-made 3-seed case, test sets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from regcore.instability import (
    ALL_AGREE,
    CHURN,
    LABEL_ENTROPY,
    MAJORITY_AGREEMENT,
    StoredPrediction,
    configuration_instability,
    decode_labels,
    encode_labels,
    instability,
    labels_checksum,
)


def test_identical_members_are_perfectly_stable() -> None:
    labels = np.array([0, 3, 3, 9, 1])
    got = instability([labels, labels.copy(), labels.copy()])
    assert got == {CHURN: 0.0, LABEL_ENTROPY: 0.0, MAJORITY_AGREEMENT: 1.0, ALL_AGREE: 1.0}


def test_hand_made_three_seeds_match_a_direct_count() -> None:
    a = np.array([0, 1, 2, 3, 4, 5])
    b = np.array([0, 1, 2, 3, 0, 1])
    c = np.array([0, 1, 9, 4, 4, 2])
    got = instability([a, b, c])
    # pairs differ on: a-b 2 points, a-c 3 points, b-c 4 points, of 6
    assert got[CHURN] == pytest.approx((2 + 3 + 4) / (3 * 6))
    churn = np.mean([np.mean(x != y) for x, y in itertools.combinations([a, b, c], 2)])
    assert got[CHURN] == pytest.approx(churn)
    # per point: all agree (3), 2-1 split (3 points: 2,3,4... see below), all differ (1)
    # point 2: 2,2,9 -> 2-1; point 3: 3,3,4 -> 2-1; point 4: 4,0,4 -> 2-1; point 5: 5,1,2
    split = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert got[LABEL_ENTROPY] == pytest.approx((3 * split + math.log(3)) / 6)
    # majority agreement: 3 + 3 + 2 + 2 + 2 + 1 (a tie goes to label 1: only b) of 18
    assert got[MAJORITY_AGREEMENT] == pytest.approx((3 + 3 + 2 + 2 + 2 + 1) / 18)
    assert got[ALL_AGREE] == pytest.approx(2 / 6)


def test_one_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="two seeds"):
        instability([np.array([1, 2])])


def test_labels_round_trip_compactly() -> None:
    small, dtype = encode_labels(np.array([0, 9, 3]))
    assert len(small) == 3 and dtype == "|u1"
    assert decode_labels(small, dtype).tolist() == [0, 9, 3]
    wide, dtype = encode_labels(np.array([0, 1000]))
    assert decode_labels(wide, dtype).tolist() == [0, 1000]


def test_members_without_predictions_or_on_another_test_set_are_left_out() -> None:
    truth = np.array([0, 1, 2, 3])
    other = np.array([0, 1, 2, 2])
    stored = {
        "e1": StoredPrediction(np.array([0, 1, 2, 3]), labels_checksum(truth)),
        "e2": StoredPrediction(np.array([0, 1, 2, 0]), labels_checksum(truth)),
        "e3": None,
        "e4": StoredPrediction(np.array([3, 3, 3, 3]), labels_checksum(other)),
    }
    got = configuration_instability(stored)
    assert got.members == 2
    assert got.left_out == {
        "e3": "no stored predictions",
        "e4": "predicted on a different test set",
    }
    assert got.metrics[CHURN] == pytest.approx(0.25)


def test_fewer_than_two_comparable_members_give_no_metrics() -> None:
    truth = np.array([0, 1])
    got = configuration_instability({"e1": StoredPrediction(truth, labels_checksum(truth))})
    assert got.metrics == {} and got.members == 1
