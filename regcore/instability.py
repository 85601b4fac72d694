"""Local instability across seeds: how much one configuration's predictions change from
one training seed to the next, on one shared test set (SCIENCE.md, "Local instability
across seeds").

From S >= 2 vectors of predicted labels on the same N test points:

- ``instability/churn``: the fraction of points on which two seeds' labels differ,
  averaged over the S(S-1)/2 pairs;
- ``instability/label_entropy``: per point, the entropy (nats) of the distribution of the
  S labels, averaged over the points (0 when every seed agrees; at most ln S);
- ``instability/majority_agreement``: how often a seed's label equals the points'
  majority label (ties go to the smallest label), averaged over seeds and points;
- ``instability/all_agree``: the fraction of points on which all S seeds agree.

Members are comparable only on one test set: each stored prediction carries a checksum of
the test labels (``labels_checksum``); ``shared_test_set`` keeps the largest group with
one checksum and says why the others were left out.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from regcore.compare import ComparisonRow, Summary

CHURN = "instability/churn"
LABEL_ENTROPY = "instability/label_entropy"
MAJORITY_AGREEMENT = "instability/majority_agreement"
ALL_AGREE = "instability/all_agree"
METRICS = (CHURN, LABEL_ENTROPY, MAJORITY_AGREEMENT, ALL_AGREE)


def labels_checksum(labels: np.ndarray) -> str:
    """Identifies a test set by its true labels (in order): sha256 of them as int64."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def encode_labels(labels: np.ndarray) -> tuple[bytes, str]:
    """Predicted labels as compact bytes and their numpy dtype (uint8 up to 256 classes)."""
    dtype = np.uint8 if labels.size == 0 or int(labels.max()) < 256 else np.int32
    return np.ascontiguousarray(labels, dtype=dtype).tobytes(), np.dtype(dtype).str


def decode_labels(data: bytes, dtype: str) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(dtype)).astype(np.int64)


def instability(predictions: Sequence[np.ndarray]) -> dict[str, float]:
    """The four instability metrics of S >= 2 equally long label vectors (one per seed)."""
    if len(predictions) < 2:
        raise ValueError(f"instability needs two seeds or more, got {len(predictions)}")
    labels = np.stack([np.asarray(p, dtype=np.int64) for p in predictions])  # (S, N)
    seeds, points = labels.shape
    if points == 0:
        raise ValueError("instability needs at least one test point")
    classes = int(labels.max()) + 1
    # counts[n, c]: how many seeds predict class c on point n
    counts = np.zeros((points, classes), dtype=np.int64)  # (N, C)
    np.add.at(counts, (np.broadcast_to(np.arange(points), (seeds, points)), labels), 1)
    # Per point, the pairs that agree are sum_c k_c (k_c - 1) / 2 of S(S-1)/2.
    pairs = seeds * (seeds - 1) / 2
    agreeing = (counts * (counts - 1)).sum(axis=1) / 2  # (N,)
    churn = float(np.mean(1.0 - agreeing / pairs))
    share = counts / seeds  # (N, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(share > 0, share * np.log(share), 0.0).sum(axis=1)  # (N,)
    majority = counts.argmax(axis=1)  # (N,), the smallest label on ties
    return {
        CHURN: churn,
        LABEL_ENTROPY: float(np.mean(entropy)),
        MAJORITY_AGREEMENT: float(np.mean(labels == majority[None, :])),
        ALL_AGREE: float(np.mean(counts.max(axis=1) == seeds)),
    }


@dataclass(frozen=True)
class StoredPrediction:
    """One member's predicted test labels with the checksum of the true labels."""

    labels: np.ndarray  # (N,) int64
    labels_checksum: str


@dataclass
class Instability:
    """A configuration's instability: the metrics (empty when fewer than two members could
    be compared), the members used, and those left out with why."""

    metrics: dict[str, float] = field(default_factory=dict)
    members: int = 0
    left_out: dict[str, str] = field(default_factory=dict)  # member -> reason


def shared_test_set(
    stored: Mapping[Hashable, StoredPrediction | None],
) -> tuple[list[Hashable], dict[Hashable, str]]:
    """The members predicted on one test set: the largest group with one test-label
    checksum and length (first seen on ties); the others, with the reason each is left out."""
    left_out: dict[Hashable, str] = {}
    groups: Counter[tuple[str, int]] = Counter()
    for key, prediction in stored.items():
        if prediction is None:
            left_out[key] = "no stored predictions"
        else:
            groups[(prediction.labels_checksum, len(prediction.labels))] += 1
    if not groups:
        return [], left_out
    chosen = groups.most_common(1)[0][0]
    kept = []
    for key, prediction in stored.items():
        if prediction is None:
            continue
        if (prediction.labels_checksum, len(prediction.labels)) == chosen:
            kept.append(key)
        else:
            left_out[key] = "predicted on a different test set"
    return kept, left_out


def configuration_instability(stored: Mapping[Hashable, StoredPrediction | None]) -> Instability:
    """Instability over a configuration's members (key -> stored prediction, None where
    none was stored): computed on the members sharing one test set, if two or more."""
    kept, left_out = shared_test_set(stored)
    result = Instability(members=len(kept), left_out={str(k): v for k, v in left_out.items()})
    if len(kept) >= 2:
        result.metrics = instability([stored[key].labels for key in kept])  # type: ignore[union-attr]
    return result


def add_instability(
    rows: Sequence[ComparisonRow], metrics: Sequence[str], per_row: Mapping[str, Instability]
) -> list[str]:
    """Put each configuration's instability among its row's metrics (one number, not a
    spread over seeds: std is NaN, n the members compared); the columns, with the
    instability metrics after the others when some row has them."""
    for row in rows:
        measured = per_row.get(row.configuration)
        if measured is None:
            continue
        for name, value in measured.metrics.items():
            row.metrics[name] = Summary(value, math.nan, measured.members)
    present = [name for name in METRICS if any(name in row.metrics for row in rows)]
    return [*[m for m in metrics if m not in METRICS], *present]
