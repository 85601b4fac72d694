"""Decision regions of a 2-D classifier as training goes: an animated GIF and its last frame.

Analyses run after training, on the final model, so this one replays the run's training
(``AnalysisContext.spec``; the pipeline and the worker fill it) from the same seed, with
no checkpoint, and on every ``every``-th optimizer step draws the argmax label over a
``resolution`` x ``resolution`` grid covering the data's inputs (training and test) with
a ``margin`` on each side. Replaying rather than hooking the normal training keeps the
loop and its checkpoints untouched and lets the analysis run on any finished run (``regbench
analyze``, an analysis job); the price is a second training, which is cheap at the toy
sizes this is for. Training is seeded and the snapshots consume no randomness (eval mode,
no gradients), so on the CPU the replay ends with exactly the weights the run produced:
the last frame is the final model's decision regions. (A run trained stacked with other
seeds, or on a GPU without ``training.deterministic``, may differ in the last bits.)

Frames are taken at step 0 (the initial model), every ``every`` steps and at the last
step; the final model (with early stopping's restored best weights, when used) is always
the last frame. More than ``max_frames`` frames raise ``every`` to ceil(steps /
(max_frames - 1)). The replay runs inside forked RNG states and leaves the process's
random generators and deterministic-algorithms switch as they were.

Only 2-D inputs (input shape (2,), like ``blobs``) can be drawn; any other dataset is a
ValueError. Artifacts under ``training_animation/``: decision_regions.gif (one frame per
snapshot, training points drawn, step and epoch in each title), decision_regions.png
(the last frame) and frames.npz (the label maps (F, R, R), their steps and epochs, and
the grid's extent). Metrics: ``training_animation/frames`` and ``.../every``.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from PIL import Image
from pydantic import Field
from torch import nn

from regcore.analysis.base import Analysis, AnalysisContext, AnalysisResult, batched
from regcore.analysis.plots import STYLE
from regcore.registries import ANALYSES
from regcore.registry import MAX_BATCH, MAX_COUNT, MAX_FLOAT, MAX_SAMPLES, MAX_SEED, ComponentParams

PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
           "#8c8c8c", "#ccb974", "#64b5cd"]  # fmt: skip


class TrainingAnimationParams(ComponentParams):
    every: int = Field(10, ge=1, le=MAX_COUNT, description="optimizer steps between frames")
    max_frames: int = Field(
        100, ge=2, le=1000, description="at most this many frames (every grows to fit)"
    )
    resolution: int = Field(100, ge=2, le=1000, description="grid points per axis")
    margin: float = Field(
        0.1, ge=0, le=MAX_FLOAT, description="margin around the data, a fraction of its range"
    )
    points: int = Field(400, ge=0, le=MAX_SAMPLES, description="training points drawn per frame")
    frame_ms: int = Field(100, ge=10, le=10_000, description="display time of a frame (ms)")
    batch_size: int = Field(10_000, ge=1, le=MAX_BATCH, description="grid points per forward pass")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="picks the training points drawn")


def grid_extent(x: torch.Tensor, margin: float) -> tuple[float, float, float, float]:
    """(x0 min, x0 max, x1 min, x1 max) of the points (N, 2), widened by ``margin`` x range."""
    low, high = x.min(dim=0).values.tolist(), x.max(dim=0).values.tolist()
    pad = [margin * max(hi - lo, 1e-6) for lo, hi in zip(low, high, strict=True)]
    return (low[0] - pad[0], high[0] + pad[0], low[1] - pad[1], high[1] + pad[1])


def grid_points(extent: tuple[float, float, float, float], resolution: int) -> torch.Tensor:
    """(R * R, 2) grid points, row r at x1 = linspace(...)[r], column c at x0 = ...[c]."""
    x0 = torch.linspace(extent[0], extent[1], resolution)
    x1 = torch.linspace(extent[2], extent[3], resolution)
    rows, columns = torch.meshgrid(x1, x0, indexing="ij")  # (R, R) each
    return torch.stack([columns.flatten(), rows.flatten()], dim=1)


@torch.no_grad()
def decision_regions(
    model: nn.Module, grid: torch.Tensor, resolution: int, batch_size: int
) -> np.ndarray:
    """(R, R) uint8 argmax labels over ``grid`` (R * R, 2), in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters())).device
    labels = torch.cat(
        [model(grid[a:b].to(device)).argmax(dim=1).cpu() for a, b in batched(len(grid), batch_size)]
    )  # (R * R,)
    model.train(was_training)
    return labels.view(resolution, resolution).to(torch.uint8).numpy()


@contextlib.contextmanager
def isolated_randomness() -> Iterator[None]:
    """Every random generator and the deterministic-algorithms switch as they were, after."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    python, numpy = random.getstate(), np.random.get_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@ANALYSES.register("training_animation")
class TrainingAnimation(Analysis):
    """Decision regions every k training steps of a 2-D classifier, as an animated GIF."""

    Params = TrainingAnimationParams
    params: TrainingAnimationParams

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        from regcore.train import Callbacks, finish_run, open_run, run_epochs

        p = self.params
        info = ctx.data.info
        if tuple(info.input_shape) != (2,):
            raise ValueError(
                f"training_animation draws 2-D inputs only (input shape (2,), e.g. blobs); "
                f"this dataset's input shape is {tuple(info.input_shape)}"
            )
        if ctx.spec is None:
            raise ValueError("training_animation replays the run's training: it needs its spec")
        train_x = ctx.data.train.x.detach().cpu()  # (N, 2)
        every_x = torch.cat([train_x, ctx.data.test.x.detach().cpu()])
        extent = grid_extent(every_x, p.margin)
        grid = grid_points(extent, p.resolution)  # (R * R, 2)

        frames: list[np.ndarray] = []
        steps: list[int] = []
        with isolated_randomness():
            run = open_run(ctx.spec, ctx.data, workdir=None, resume=False)
            steps_per_epoch = run.total_steps // max(1, ctx.spec.training.epochs)
            every = max(p.every, math.ceil(run.total_steps / (p.max_frames - 1)))
            taken = 0

            def snapshot() -> None:
                frames.append(decision_regions(run.model, grid, p.resolution, p.batch_size))
                steps.append(taken)

            def on_step(epoch: int, step: int, per_epoch: int) -> None:
                nonlocal taken
                taken += 1
                if taken % every == 0:
                    snapshot()

            snapshot()  # step 0: the initial model
            run_epochs(run, Callbacks(on_step=on_step))
            final = finish_run(run).model
            last = decision_regions(final, grid, p.resolution, p.batch_size)
            if steps[-1] != taken or not np.array_equal(frames[-1], last):
                frames.append(last)  # the last step, or the restored best weights
                steps.append(taken)

        outdir = ctx.outdir / "training_animation"
        outdir.mkdir(parents=True, exist_ok=True)
        epochs = [step / steps_per_epoch for step in steps]
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(p.seed))
        shown = order[: p.points]
        points = (train_x[shown].numpy(), ctx.data.train.y[shown.to(ctx.data.train.y.device)])
        images = self._render(frames, steps, epochs, extent, points, info.num_classes)
        gif, png = outdir / "decision_regions.gif", outdir / "decision_regions.png"
        images[0].save(gif, save_all=True, append_images=images[1:], duration=p.frame_ms, loop=0)
        images[-1].save(png)
        npz = outdir / "frames.npz"
        np.savez_compressed(
            npz, labels=np.stack(frames), steps=np.array(steps), epochs=np.array(epochs),
            extent=np.array(extent),
        )  # fmt: skip
        metrics = {
            "training_animation/frames": float(len(frames)),
            "training_animation/every": float(every),
        }
        return AnalysisResult(metrics, [gif, png, npz])

    def _render(
        self,
        frames: list[np.ndarray],
        steps: list[int],
        epochs: list[float],
        extent: tuple[float, float, float, float],
        points: tuple[np.ndarray, torch.Tensor],
        classes: int,
    ) -> list[Image.Image]:
        """One RGB image per frame: one figure, its label map and title updated per frame."""
        colors = ListedColormap([PALETTE[k % len(PALETTE)] for k in range(classes)])
        xy, labels = points[0], points[1].cpu().numpy()
        images = []
        with matplotlib.rc_context(STYLE):  # a bare Figure: no pyplot state to clean up
            figure = Figure(figsize=(4.2, 4.0))
            canvas = FigureCanvasAgg(figure)
            ax = figure.add_subplot()
            image = ax.imshow(
                frames[0], origin="lower", extent=extent, cmap=colors, vmin=-0.5,
                vmax=classes - 0.5, alpha=0.35, interpolation="nearest", aspect="auto",
            )  # fmt: skip
            ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=colors, vmin=-0.5,
                       vmax=classes - 0.5, s=6, edgecolors="black", linewidths=0.2)  # fmt: skip
            ax.set(xlim=extent[:2], ylim=extent[2:], xlabel="x0", ylabel="x1")
            ax.grid(False)
            title = ax.set_title(self._title(steps[-1], epochs[-1]))  # sizes the layout
            figure.tight_layout()
            for labels_map, step, epoch in zip(frames, steps, epochs, strict=True):
                image.set_data(labels_map)
                title.set_text(self._title(step, epoch))
                canvas.draw()
                images.append(Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB"))
        return images

    @staticmethod
    def _title(step: int, epoch: float) -> str:
        return f"decision regions: step {step}, epoch {epoch:.2f}"
