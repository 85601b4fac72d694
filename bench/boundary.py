"""Decision boundaries: plane points classified per second (``regcore.analysis.boundary``).

Two figures per model: ``label_maps`` alone (the forward passes over the R x R grids,
batches of 16,384 points) and the whole boundary analysis as a job runs it (planes,
label maps, per-plane metrics, CSV/NPZ/JSON files), both over the same planes. LeNet
through real MNIST test images; DDNet through random CIFAR-shaped ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bench.common import (
    WORKLOADS,
    BenchContext,
    Clock,
    SectionResult,
    interleaved,
    rate_spread,
    single_thread,
    timed,
    workload_batches,
    workload_info,
)
from regcore.analysis.base import AnalysisContext
from regcore.analysis.boundary import (
    BoundaryAnalysis,
    BoundaryParams,
    draw_planes,
    grid_coordinates,
    label_maps,
)
from regcore.data import DataSplits, Split
from regcore.models import create_model
from regcore.spec import ModelSpec

HALF_WIDTH = 40.0


def boundary_tasks(
    ctx: BenchContext, name: str, device: torch.device, planes: int, resolution: int
) -> dict[str, Callable[[], Any]]:
    """The label maps alone and the whole analysis, over the same planes of one model."""
    workload = WORKLOADS[name]
    info = workload_info(ctx, workload)
    torch.manual_seed(0)
    model = create_model(ModelSpec.model_validate({"name": name}), info).to(device).eval()
    ((x, y),) = workload_batches(ctx, workload, 1, 100, device, split="test")
    split = Split(x, y)  # (100, C, H, W), (100,)
    data = DataSplits(train=split, val=None, test=split, info=info)
    chosen = draw_planes(split, planes, seed=0)
    coords = grid_coordinates(HALF_WIDTH, resolution)  # (R,)
    analysis = BoundaryAnalysis(
        BoundaryParams(planes=planes, resolution=resolution, half_width=[HALF_WIDTH], save_maps=2)
    )
    analysis_ctx = AnalysisContext(model, data, device, ctx.workdir / f"boundary-{name}")
    return {
        "maps": lambda: label_maps(model, chosen, coords, info.input_shape, device=device),
        "analysis": lambda: analysis.run(analysis_ctx),
    }


# Planes and resolution per model: (full run, quick run). A DDNet forward costs ~100x
# LeNet's, so it classifies fewer points on one CPU thread.
PLANS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "lenet": ((2, 101), (2, 21)),
    "ddnet": ((1, 31), (1, 11)),
}


def run(ctx: BenchContext) -> SectionResult:
    rounds = 2 if ctx.quick else 3
    names = ["lenet"] if ctx.quick else list(PLANS)
    plans = {name: PLANS[name][1 if ctx.quick else 0] for name in names}
    rows: list[dict[str, Any]] = []
    with single_thread():
        for device in ctx.devices:
            clock = Clock(device)
            tasks: dict[str, Callable[[], float]] = {}
            for name, (planes, resolution) in plans.items():
                for label, work in boundary_tasks(ctx, name, device, planes, resolution).items():
                    work()  # warm-up
                    tasks[f"{name}/{label}"] = timed(work, clock)
            ctx.log(f"boundary: {len(names)} models on {device} x {rounds} rounds")
            seconds = interleaved(tasks, rounds)
            for name, (planes, resolution) in plans.items():
                points = planes * resolution * resolution
                rows.append(
                    {
                        "model": name,
                        "device": device.type,
                        "data": WORKLOADS[name].data,
                        "planes": f"{planes} x {resolution}x{resolution}",
                        "points": points,
                        "label_maps_points_per_s": rate_spread(
                            points, seconds[f"{name}/maps"]
                        ).as_json(),
                        "analysis_points_per_s": rate_spread(
                            points, seconds[f"{name}/analysis"]
                        ).as_json(),
                    }
                )
    notes = [
        f"Half-width {HALF_WIDTH:g}; per round a rate, median [IQR] over {rounds} rounds; "
        "CPU: CPU time, one thread; CUDA: wall time."
    ]
    return SectionResult(rows, notes)
