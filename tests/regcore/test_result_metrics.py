"""The comparison's columns: which metrics a sweep's results show, in reading order."""

from __future__ import annotations

from regcore.compare import BOUNDARY, result_metrics


def test_boundary_found_follows_each_distance_column() -> None:
    keys = [
        "train_seconds",
        "boundary/w40/boundary_found",
        "boundary/w40/distance_mean",
        "boundary/w40/tv_iso_mean",
        "boundary/w5/distance_mean",
        "boundary/w5/boundary_found",
        "boundary/w5/tv_iso_mean",
        "boundary/w5/distance_std",  # not a column
        "boundary/w5/tv_aniso_mean",  # not a column
        "geometry/curvature_mean",
        "test_accuracy",
    ]
    assert result_metrics(keys) == [
        "test_accuracy",
        "boundary/w5/tv_iso_mean",
        "boundary/w40/tv_iso_mean",
        "boundary/w5/distance_mean",
        "boundary/w5/boundary_found",
        "boundary/w40/distance_mean",
        "boundary/w40/boundary_found",
        "geometry/curvature_mean",
        "train_seconds",
    ]


def test_boundary_pattern_names_the_metric_or_the_found_fraction() -> None:
    tv = BOUNDARY.match("boundary/w20/tv_iso_mean")
    found = BOUNDARY.match("boundary/w20/boundary_found")
    assert tv is not None and tv["metric"] == "tv_iso" and tv["found"] is None
    assert found is not None and found["metric"] is None and found["width"] == "20"
    assert BOUNDARY.match("boundary/w20/boundary_found_mean") is None
