"""Decision boundaries on random 2-D planes and their ruggedness (total variation).

For each plane: a test point x0 and two directions v1, v2 ~ N(0, I), Gram-Schmidt
orthonormalized; the label map L[i, j] = argmax f(x0 + a_i v1 + b_j v2) on an R x R
grid with a, b in [-w, w] (w in pixel L2 units; points optionally clipped to [0, 1]).
Points and planes come from the analysis' own seed, so every model of a comparison
sees the same planes.

Metrics per plane, with forward differences over the same index range i, j < R - 1,
and dx = 1[L[i+1, j] != L[i, j]], dy = 1[L[i, j+1] != L[i, j]]:
- ``tv_iso`` = sum sqrt(dx^2 + dy^2) / R and ``tv_aniso`` = sum (dx + dy) / R
  (divided by R so resolutions compare: a straight boundary across the plane is ~1);
- ``tv_study``: the study's index-difference TV, sum |L[i+1, j] - L[i, j]| +
  |L[i, j+1] - L[i, j]| over the same range, / R (a 0|9 border counts nine times);
- ``distance``: from the centre to the nearest grid point of another label, in pixel
  L2 units (nan when the plane shows no other label; ``boundary_found`` counts those);
- ``centre_area``: the share of the plane taken by the 4-connected region of the
  centre's label that contains the centre.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from regcore.analysis.base import (
    Aggregate,
    Analysis,
    AnalysisContext,
    AnalysisResult,
    as_json_value,
    batched,
)
from regcore.data.base import Split
from regcore.registries import ANALYSES
from regcore.registry import MAX_BATCH, MAX_COUNT, MAX_FLOAT, MAX_LIST, MAX_SEED, ComponentParams


class BoundaryParams(ComponentParams):
    planes: int = Field(
        50, ge=1, le=MAX_COUNT, description="random planes, each through its own test point"
    )
    resolution: int = Field(
        101, ge=3, le=MAX_COUNT, description="R: grid points per side (odd: centre on grid)"
    )
    half_width: list[Annotated[float, Field(gt=0, le=MAX_FLOAT)]] = Field(
        [40.0, 100.0],
        min_length=1,
        max_length=MAX_LIST,
        description="w: half-widths in pixel L2 units, one map each (random directions meet "
        "a boundary far later than adversarial ones: ~10-25 for LeNet on digits)",
    )
    clip: bool = Field(False, description="clip grid points to [0, 1]")
    split: Literal["test", "val", "train"] = "test"
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="draws points and planes; shared by a comparison"
    )
    batch_size: int = Field(16384, ge=1, le=MAX_BATCH, description="grid points per forward pass")
    save_maps: int = Field(
        8, ge=0, le=MAX_COUNT, description="label maps kept (per half-width) for plots"
    )


@dataclass(frozen=True)
class Planes:
    indices: torch.Tensor  # (P,) rows of the split
    origins: torch.Tensor  # (P, D) flattened x0
    v1: torch.Tensor  # (P, D) unit vectors
    v2: torch.Tensor  # (P, D) unit vectors orthogonal to v1


def draw_planes(split: Split, planes: int, seed: int) -> Planes:
    """The same planes for any model: they depend only on the split and the seed."""
    generator = torch.Generator().manual_seed(seed)
    count = min(planes, len(split))
    indices = torch.randperm(len(split), generator=generator)[:count]  # (P,)
    origins = split.x[indices.to(split.x.device)].flatten(1).cpu()  # (P, D)
    v1 = torch.randn(origins.shape, generator=generator, dtype=torch.float64)
    v2 = torch.randn(origins.shape, generator=generator, dtype=torch.float64)
    v1 = v1 / v1.norm(dim=1, keepdim=True)
    v2 = v2 - (v2 * v1).sum(dim=1, keepdim=True) * v1  # Gram-Schmidt
    v2 = v2 / v2.norm(dim=1, keepdim=True)
    return Planes(indices, origins, v1.to(origins.dtype), v2.to(origins.dtype))


def grid_coordinates(half_width: float, resolution: int) -> torch.Tensor:
    return torch.linspace(-half_width, half_width, resolution, dtype=torch.float64)  # (R,)


@torch.no_grad()
def label_maps(
    model: nn.Module,
    planes: Planes,
    coords: torch.Tensor,
    input_shape: tuple[int, ...],
    *,
    clip: bool = False,
    batch_size: int = 16384,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(P, R, R) predicted labels; map[p, i, j] at x0_p + coords[i] v1_p + coords[j] v2_p.
    ``progress(points done, points)`` after each batch."""
    count, resolution = planes.origins.shape[0], coords.numel()
    origins, v1, v2 = (t.to(device) for t in (planes.origins, planes.v1, planes.v2))
    a = coords.to(device=device, dtype=origins.dtype)
    labels = torch.empty(count * resolution * resolution, dtype=torch.long, device=device)
    for start, stop in batched(labels.numel(), batch_size):
        k = torch.arange(start, stop, device=device)  # flat (p, i, j) indices
        p, i, j = k // resolution**2, (k // resolution) % resolution, k % resolution
        points = origins[p] + a[i, None] * v1[p] + a[j, None] * v2[p]  # (N, D)
        if clip:
            points = points.clamp(0.0, 1.0)
        labels[start:stop] = model(points.view(-1, *input_shape)).argmax(dim=1)
        if progress is not None:
            progress(stop, labels.numel())
    return labels.view(count, resolution, resolution).cpu()


def plane_metrics(
    maps: torch.Tensor, coords: torch.Tensor, centre_labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-plane metrics of (P, R, R) label maps; each value is a (P,) tensor."""
    resolution = maps.shape[-1]
    base = maps[:, :-1, :-1]  # (P, R-1, R-1): the shared index range
    dx = (maps[:, 1:, :-1] != base).double()
    dy = (maps[:, :-1, 1:] != base).double()
    study = (maps[:, 1:, :-1] - base).abs() + (maps[:, :-1, 1:] - base).abs()

    a = coords.double()
    radius = torch.sqrt(a[:, None] ** 2 + a[None, :] ** 2)  # (R, R) pixel L2 from the centre
    other = maps != centre_labels[:, None, None]  # (P, R, R)
    distance = torch.where(other, radius, torch.full_like(radius, math.inf)).flatten(1).amin(1)
    distance = torch.where(torch.isinf(distance), torch.nan, distance)

    return {
        "tv_iso": torch.sqrt(dx + dy).sum(dim=(1, 2)) / resolution,
        "tv_aniso": (dx + dy).sum(dim=(1, 2)) / resolution,
        "tv_study": study.double().sum(dim=(1, 2)) / resolution,
        "distance": distance,
        "centre_area": centre_cell_area(maps, centre_labels),
    }


def centre_cell_area(maps: torch.Tensor, centre_labels: torch.Tensor) -> torch.Tensor:
    """(P,) share of each plane in the 4-connected region of the centre's label at the centre."""
    from scipy import ndimage

    middle = maps.shape[-1] // 2
    areas = []
    for label_map, centre_label in zip(maps.numpy(), centre_labels.tolist(), strict=True):
        regions, _ = ndimage.label(label_map == centre_label)  # 4-connectivity by default
        region = regions[middle, middle]
        areas.append(float((regions == region).mean()) if region else 0.0)
    return torch.tensor(areas, dtype=torch.float64)


@ANALYSES.register("boundary")
class BoundaryAnalysis(Analysis):
    """Decision boundaries on random 2-D planes: total variation, distance, centre cell."""

    Params = BoundaryParams
    params: BoundaryParams

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        params = self.params
        split: Split | None = getattr(ctx.data, params.split)
        if split is None:
            raise ValueError(f"boundary: the dataset has no {params.split} split")
        planes = draw_planes(split, params.planes, params.seed)
        input_shape = ctx.data.info.input_shape
        with torch.no_grad():
            origins = planes.origins.to(ctx.device).view(-1, *input_shape)
            centre_labels = ctx.model(origins).argmax(dim=1).cpu()  # (P,)

        outdir = ctx.outdir / "boundary"
        outdir.mkdir(parents=True, exist_ok=True)
        result = AnalysisResult()
        rows: list[dict[str, float | int]] = []
        saved: dict[str, np.ndarray] = {"indices": planes.indices.numpy()}
        widths = len(params.half_width)
        for number, width in enumerate(params.half_width):
            coords = grid_coordinates(width, params.resolution)

            def mapped(done: int, points: int, number: int = number, width: float = width) -> None:
                planes_done = done * params.planes // points
                message = f"half width {width:g}: {planes_done}/{params.planes} planes"
                ctx.report((number + done / points) / widths, message)

            maps = label_maps(
                ctx.model, planes, coords, input_shape,
                clip=params.clip, batch_size=params.batch_size, device=ctx.device,
                progress=mapped,
            )  # fmt: skip
            per_plane = plane_metrics(maps, coords, centre_labels)
            prefix = f"boundary/w{width:g}"
            for name, values in per_plane.items():
                result.metrics.update(Aggregate.of(values).as_metrics(f"{prefix}/{name}"))
            found = torch.isfinite(per_plane["distance"]).double().mean().item()
            result.metrics[f"{prefix}/boundary_found"] = found
            for p in range(maps.shape[0]):
                row = {"plane": p, "half_width": width, "index": int(planes.indices[p])}
                row |= {name: float(values[p]) for name, values in per_plane.items()}
                rows.append(row)
            saved[f"maps_w{width:g}"] = maps[: params.save_maps].numpy().astype(np.int16)
            saved[f"coords_w{width:g}"] = coords.numpy()
        saved["centre_labels"] = centre_labels.numpy()

        table = outdir / "planes.csv"
        with table.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        maps_file = outdir / "maps.npz"
        np.savez_compressed(maps_file, **saved)
        summary = outdir / "summary.json"
        metrics = {k: as_json_value(v) for k, v in result.metrics.items()}
        summary.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        result.artifacts += [table, maps_file, summary]
        return result
