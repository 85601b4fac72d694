"""Decision-boundary metrics against values computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from regcore.analysis.base import AnalysisContext
from regcore.analysis.boundary import (
    BoundaryAnalysis,
    BoundaryParams,
    Planes,
    draw_planes,
    grid_coordinates,
    label_maps,
    plane_metrics,
)
from regcore.data.base import DataInfo, DataSplits, Split


class ThresholdOnV1(nn.Module):
    """Two classes: label 1 where the coordinate along v1 exceeds ``threshold``."""

    def __init__(self, v1: torch.Tensor, threshold: float) -> None:
        super().__init__()
        self.v1, self.threshold = v1, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(1) @ self.v1 - self.threshold  # (N,)
        return torch.stack([-a, a], dim=1)  # (N, 2)


def one_plane(dimension: int = 4) -> Planes:
    eye = torch.eye(dimension, dtype=torch.float64)
    return Planes(
        torch.tensor([0]), torch.zeros(1, dimension, dtype=torch.float64), eye[:1], eye[1:2]
    )


def test_straight_boundary_by_hand() -> None:
    planes = one_plane()
    coords = grid_coordinates(1.0, 11)  # -1.0, -0.8, ..., 1.0
    model = ThresholdOnV1(planes.v1[0], threshold=0.3)
    maps = label_maps(model, planes, coords, (4,))
    expected = (coords > 0.3).long()[:, None].expand(11, 11)  # label depends on a (rows) only
    assert torch.equal(maps[0], expected)

    metrics = plane_metrics(maps, coords, centre_labels=torch.tensor([0]))
    # one row of label changes (between a = 0.2 and 0.4) across the 10 columns j < R - 1
    assert metrics["tv_aniso"].item() == pytest.approx(10 / 11)
    assert metrics["tv_iso"].item() == pytest.approx(10 / 11)
    assert metrics["tv_study"].item() == pytest.approx(10 / 11)
    # nearest grid point of label 1 is (a, b) = (0.4, 0)
    assert metrics["distance"].item() == pytest.approx(0.4)
    assert metrics["centre_area"].item() == pytest.approx(7 * 11 / 121)  # rows a <= 0.2


def test_diagonal_boundary_isotropic_vs_anisotropic() -> None:
    resolution = 5
    maps = torch.zeros(1, resolution, resolution, dtype=torch.long)
    for i in range(resolution):
        for j in range(resolution):
            maps[0, i, j] = int(i + j >= resolution)  # a staircase boundary
    coords = grid_coordinates(1.0, resolution)
    metrics = plane_metrics(maps, coords, torch.tensor([0]))
    dx = dy = both = 0
    for i in range(resolution - 1):
        for j in range(resolution - 1):
            x_change = maps[0, i + 1, j] != maps[0, i, j]
            y_change = maps[0, i, j + 1] != maps[0, i, j]
            dx, dy, both = dx + x_change, dy + y_change, both + (x_change and y_change)
    iso = (int(dx) + int(dy) - 2 * int(both) + math.sqrt(2) * int(both)) / resolution
    assert metrics["tv_aniso"].item() == pytest.approx((int(dx) + int(dy)) / resolution)
    assert metrics["tv_iso"].item() == pytest.approx(iso)
    assert metrics["tv_iso"].item() < metrics["tv_aniso"].item()


def test_study_variant_counts_index_differences() -> None:
    maps = torch.zeros(1, 3, 3, dtype=torch.long)
    maps[0, 1:, :] = 9  # a 0|9 border
    metrics = plane_metrics(maps, grid_coordinates(1.0, 3), torch.tensor([0]))
    assert metrics["tv_aniso"].item() == pytest.approx(2 / 3)
    assert metrics["tv_study"].item() == pytest.approx(9 * 2 / 3)


def test_constant_label_map_has_zero_tv_and_no_boundary() -> None:
    maps = torch.full((2, 7, 7), 3, dtype=torch.long)
    metrics = plane_metrics(maps, grid_coordinates(2.0, 7), torch.tensor([3, 3]))
    for name in ("tv_iso", "tv_aniso", "tv_study"):
        assert torch.equal(metrics[name], torch.zeros(2, dtype=torch.float64))
    assert torch.isnan(metrics["distance"]).all()
    assert torch.equal(metrics["centre_area"], torch.ones(2, dtype=torch.float64))


def test_planes_are_orthonormal_and_shared_by_every_model() -> None:
    split = Split(torch.rand(30, 1, 3, 3), torch.zeros(30, dtype=torch.long))
    first, second = draw_planes(split, 5, seed=4), draw_planes(split, 5, seed=4)
    for a, b in ((first.indices, second.indices), (first.v1, second.v1), (first.v2, second.v2)):
        assert torch.equal(a, b)
    assert torch.allclose(first.v1.norm(dim=1), torch.ones(5))
    assert torch.allclose((first.v1 * first.v2).sum(dim=1), torch.zeros(5), atol=1e-6)
    assert not torch.equal(draw_planes(split, 5, seed=5).v1, first.v1)


def test_analysis_runs_batched_and_writes_artifacts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    info = DataInfo((1, 4, 4), 3, (0.5,), (0.25,), ("a", "b", "c"))
    split = Split(torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,)))
    data = DataSplits(train=split, val=None, test=split, info=info)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    params = BoundaryParams(planes=4, resolution=9, half_width=[0.5, 2.0], batch_size=50)
    ctx = AnalysisContext(model, data, torch.device("cpu"), tmp_path)
    result = BoundaryAnalysis(params).run(ctx)
    for width in ("0.5", "2"):
        for name in ("tv_iso", "tv_aniso", "tv_study", "distance", "centre_area"):
            assert f"boundary/w{width}/{name}_mean" in result.metrics
            assert f"boundary/w{width}/{name}_ci95" in result.metrics
    assert (
        result.metrics["boundary/w2/tv_aniso_mean"] >= result.metrics["boundary/w0.5/tv_aniso_mean"]
    )
    names = {path.name for path in result.artifacts}
    assert names == {"planes.csv", "maps.npz", "summary.json"}
    saved = np.load(tmp_path / "boundary" / "maps.npz")
    assert saved["maps_w2"].shape == (4, 9, 9)
    # a batch size that does not divide the grid gives the same maps as one big batch
    planes = draw_planes(split, 4, 0)
    coords = grid_coordinates(2.0, 9)
    small = label_maps(model, planes, coords, (1, 4, 4), batch_size=7)
    assert torch.equal(small, label_maps(model, planes, coords, (1, 4, 4), batch_size=10_000))
