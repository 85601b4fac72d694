"""The training animation on blobs: one frame per snapshot in the GIF, the last frame is
the decision regions of the model training produced, a PNG of it, frames capped, the
process's randomness left alone, and a clear error for data that are not 2-D."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from regcore.analysis.base import AnalysisContext
from regcore.analysis.training_animation import (
    TrainingAnimationParams,
    decision_regions,
    grid_points,
)
from regcore.data import load_dataset
from regcore.data.base import DataInfo, DataSplits, Split
from regcore.pipeline import analyze, run
from regcore.registries import ANALYSES
from regcore.spec import ExperimentSpec
from regcore.train import build_model, load_checkpoint, train

N_TRAIN, VAL_FRACTION, BATCH = 200, 0.1, 32  # 180 training points: 6 steps per epoch


def blobs_spec(epochs: int = 3, **analysis: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {
                "name": "blobs",
                "n_train": N_TRAIN,
                "n_test": 100,
                "val_fraction": VAL_FRACTION,
            },
            "model": {"name": "mlp", "hidden": [16, 16]},
            "regularizers": [{"name": "jacobian", "weight": 0.01}],  # draws randomness
            "training": {
                "epochs": epochs,
                "batch_size": BATCH,
                "lr": 0.1,
                "seed": 7,
                "device": "cpu",
            },
            "analyses": [{"kind": "training_animation", "resolution": 40, **analysis}],
        }
    )


STEPS_PER_EPOCH = math.ceil(N_TRAIN * (1 - VAL_FRACTION) / BATCH)


def gif_frames(path: Path) -> int:
    with Image.open(path) as image:
        return image.n_frames


@pytest.mark.slow  # trains twice (the run, then the replay)
def test_frames_and_the_last_one_is_the_trained_model(tmp_path: Path) -> None:
    spec = blobs_spec(epochs=3, every=4)
    result = run(spec, workdir=tmp_path)  # trains, then the analysis replays the training
    steps = 3 * STEPS_PER_EPOCH  # 18
    expected_steps = [0, 4, 8, 12, 16, 18]  # step 0, every 4th, and the last step
    outdir = tmp_path / "analyses/training_animation"
    saved = np.load(outdir / "frames.npz")
    assert saved["steps"].tolist() == expected_steps
    assert saved["epochs"].tolist() == pytest.approx([s / STEPS_PER_EPOCH for s in expected_steps])
    assert saved["labels"].shape == (len(expected_steps), 40, 40)
    assert gif_frames(outdir / "decision_regions.gif") == len(expected_steps)
    assert result.metrics["training_animation/frames"] == len(expected_steps)
    assert result.metrics["training_animation/every"] == 4
    assert steps == expected_steps[-1]

    # The last frame is the decision regions of the model the run trained and saved.
    model, _ = build_model(spec, load_dataset(spec.dataset, 7).info)
    model.load_state_dict(load_checkpoint(result.model_path)["model"])
    grid = grid_points(tuple(saved["extent"].tolist()), 40)
    final = decision_regions(model, grid, 40, 10_000)
    assert np.array_equal(saved["labels"][-1], final)
    assert len(np.unique(final)) == 4  # a trained model: all four blobs have a region
    assert not np.array_equal(saved["labels"][0], final)  # training moved the boundaries

    with Image.open(outdir / "decision_regions.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    with Image.open(outdir / "decision_regions.gif") as gif:
        gif.seek(gif.n_frames - 1)
        assert gif.convert("RGB").size == png.size


def test_an_analysis_of_a_finished_run_replays_the_same_training(tmp_path: Path) -> None:
    spec = blobs_spec(epochs=2, every=5)
    trained = train(spec)
    state = {k: v.clone() for k, v in trained.model.state_dict().items()}
    analyses = list(spec.analyses)
    metrics = analyze(spec, state, analyses, workdir=tmp_path, history=trained.history)
    frames = 2 * STEPS_PER_EPOCH // 5 + 2  # step 0, steps 5 and 10, the last step 12
    assert metrics["training_animation/frames"] == frames
    saved = np.load(tmp_path / "analyses/training_animation/frames.npz")
    grid = grid_points(tuple(saved["extent"].tolist()), 40)
    assert np.array_equal(saved["labels"][-1], decision_regions(trained.model, grid, 40, 999))


def test_frames_are_capped_and_the_process_randomness_is_left_alone(tmp_path: Path) -> None:
    spec = blobs_spec(epochs=4, every=1, max_frames=5)  # 24 steps: every grows to 6
    data = load_dataset(spec.dataset, 7)
    model, _ = build_model(spec, data.info)
    analysis = ANALYSES.build("training_animation", spec.analyses[0].params)
    ctx = AnalysisContext(model.eval(), data, torch.device("cpu"), tmp_path, spec=spec)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    result = analysis.run(ctx)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert result.metrics == {"training_animation/frames": 5.0, "training_animation/every": 6.0}
    gif = tmp_path / "training_animation/decision_regions.gif"
    assert gif_frames(gif) == 5
    assert {path.name for path in result.artifacts} == {
        "decision_regions.gif",
        "decision_regions.png",
        "frames.npz",
    }


def test_data_that_are_not_2d_are_refused(tmp_path: Path) -> None:
    images = Split(torch.rand(6, 1, 8, 8), torch.arange(6) % 2)  # (N, 1, 8, 8), (N,)
    info = DataInfo((1, 8, 8), 2, (0.5,), (0.25,), ("a", "b"))
    data = DataSplits(train=images, val=None, test=images, info=info)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    analysis = ANALYSES.build("training_animation", {})
    ctx = AnalysisContext(model, data, torch.device("cpu"), tmp_path, spec=blobs_spec())
    with pytest.raises(ValueError, match=r"2-D inputs only .* input shape is \(1, 8, 8\)"):
        analysis.run(ctx)
    blobs = load_dataset(blobs_spec().dataset, 0)
    no_spec = AnalysisContext(model, blobs, torch.device("cpu"), tmp_path)
    with pytest.raises(ValueError, match="needs its spec"):
        analysis.run(no_spec)


def test_params_are_bounded() -> None:
    assert TrainingAnimationParams().max_frames == 100
    for bad in ({"every": 0}, {"max_frames": 1}, {"resolution": 1}, {"margin": -0.1}):
        with pytest.raises(ValueError):
            TrainingAnimationParams.model_validate(bad)
