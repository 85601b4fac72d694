"""What the analysis plots say, read from the matplotlib objects they save: labelled
train and validation losses, the best epoch marked, scales and legends where a picture
needs them to be read, titles clear of the images."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from regcore.analysis import plots
from regcore.analysis.base import AnalysisContext
from regcore.analysis.calibration import CalibrationAnalysis, CalibrationParams
from regcore.analysis.figures import occlusion, saliency, training_curves
from regcore.data import load_dataset
from regcore.data.base import DataInfo, DataSplits, Split
from regcore.pipeline import run_analyses
from regcore.spec import AnalysisSpec, EarlyStopping, ExperimentSpec
from regcore.tracking import MemoryTracker
from regcore.train import best_epoch_of, train


def line_labels(ax: Axes) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def legend_texts(figure: Figure) -> list[str]:
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend()] + figure.legends
    return [text.get_text() for legend in legends for text in legend.get_texts()]


HISTORY = [
    {
        "epoch": float(epoch),
        "train/loss": 3.0 - 0.2 * epoch,  # data loss + a penalty
        "train/data_loss": 1.0 - 0.2 * epoch,
        "train/accuracy": 0.5 + 0.1 * epoch,
        "val/loss": [0.9, 0.7, 0.8, 0.85][epoch - 1],  # best at epoch 2
        "val/accuracy": 0.5 + 0.05 * epoch,
    }
    for epoch in range(1, 5)
]


def test_loss_curves_label_train_total_train_data_and_val_data_loss(
    saved: dict[str, Figure], tmp_path: Path
) -> None:
    training_curves(HISTORY, tmp_path, best_epoch=2)
    (ax,) = saved["loss_curves.png"].axes
    labels = line_labels(ax)
    assert "train: total (data + penalties)" in labels
    assert "train: data loss (cross-entropy)" in labels
    assert "val: data loss (cross-entropy)" in labels
    by_label = {line.get_label(): line for line in ax.get_lines()}
    data_line = by_label["train: data loss (cross-entropy)"]
    assert list(data_line.get_ydata()) == [row["train/data_loss"] for row in HISTORY]
    # the three lines differ in more than colour
    styles = {(line.get_marker(), line.get_linestyle()) for line in by_label.values()}
    assert len(styles) == len(by_label)


def test_the_best_epoch_is_marked_on_both_curves(saved: dict[str, Figure], tmp_path: Path) -> None:
    training_curves(HISTORY, tmp_path, best_epoch=2)
    for name in ("loss_curves.png", "accuracy_curves.png"):
        (ax,) = saved[name].axes
        marks = [line for line in ax.get_lines() if "best epoch" in line.get_label()]
        assert len(marks) == 1 and marks[0].get_label() == "best epoch 2 (weights restored)"
        assert list(marks[0].get_xdata()) == [2.0, 2.0]  # a vertical line at the epoch
        assert "best epoch 2 (weights restored)" in legend_texts(saved[name])
    training_curves(HISTORY, tmp_path, best_epoch=None)
    (ax,) = saved["loss_curves.png"].axes
    assert not [label for label in line_labels(ax) if "best epoch" in label]


def test_best_epoch_is_replayed_from_the_history_as_training_kept_it(
    saved: dict[str, Figure], tmp_path: Path
) -> None:
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "blobs", "n_train": 300, "n_test": 40, "val_fraction": 0.3},
            "model": {"name": "mlp", "hidden": [16]},
            "training": {
                "epochs": 6, "batch_size": 32, "lr": 0.5, "device": "cpu",
                "early_stopping": {"patience": 2, "metric": "val_accuracy"},
            },
        }
    )  # fmt: skip
    result = train(spec)
    assert result.best_epoch is not None
    assert best_epoch_of(spec.training, result.history) == result.best_epoch
    # the analyses get it from the history: the curves mark it
    with_plots = spec.model_copy(
        update={"analyses": [AnalysisSpec.model_validate({"kind": "plots", "tsne": False})]}
    )
    data = load_dataset(spec.dataset, spec.training.seed)
    run_analyses(with_plots, result.model, data, result.history, tmp_path, MemoryTracker())
    (ax,) = saved["loss_curves.png"].axes
    marks = [line for line in ax.get_lines() if "best epoch" in line.get_label()]
    assert marks[0].get_xdata()[0] == result.best_epoch
    assert best_epoch_of(spec.training, HISTORY) == 4  # val accuracy rises every epoch
    by_loss = spec.training.model_copy(update={"early_stopping": EarlyStopping()})
    assert best_epoch_of(by_loss, HISTORY) == 2
    without = spec.training.model_copy(update={"early_stopping": None})
    assert best_epoch_of(without, HISTORY) is None


def test_boundary_planes_have_axes_in_pixel_l2_and_a_class_legend(
    saved: dict[str, Figure], tmp_path: Path
) -> None:
    maps = np.zeros((2, 5, 5), dtype=np.int16)
    maps[0, 3:, :] = 2
    maps[1, :, 4] = 1
    plots.label_maps(
        maps, 20.0, tmp_path / "planes.png", title="t", classes=3,
        class_names=["zero", "one", "two"],
    )  # fmt: skip
    figure = saved["planes.png"]
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 2
    for ax in panels:
        assert ax.get_xlim() == (-20.0, 20.0) and ax.get_ylim() == (-20.0, 20.0)
        assert len(ax.get_xticks()) > 1  # a scale to read distances off
    assert "pixel L2" in panels[0].get_xlabel() and "pixel L2" in panels[0].get_ylabel()
    assert {"zero", "one", "two"} <= set(legend_texts(figure))
    # each class' legend patch has the colour its pixels have in the map
    image = panels[0].images[0]
    legend = figure.legends[0]
    patches = {text.get_text(): patch for text, patch in zip(
        legend.get_texts(), legend.get_patches(), strict=False)}  # fmt: skip
    for label, name in ((0, "zero"), (2, "two")):
        colour = image.cmap(image.norm(label))
        assert np.allclose(patches[name].get_facecolor(), colour)


def calibration_context(tmp_path: Path) -> AnalysisContext:
    torch.manual_seed(0)
    info = DataInfo((4,), 3, (0.5,) * 4, (0.25,) * 4, ("a", "b", "c"))
    split = Split(torch.rand(300, 4), torch.randint(0, 3, (300,)))
    model = nn.Linear(4, 3).eval()
    with torch.no_grad():
        model.weight.mul_(8)  # confident: most samples in the last bins
    return AnalysisContext(
        model, DataSplits(split, None, split, info), torch.device("cpu"), tmp_path
    )


def test_confidence_histogram_counts_on_a_log_axis(
    saved: dict[str, Figure], tmp_path: Path
) -> None:
    CalibrationAnalysis(CalibrationParams(bins=10)).run(calibration_context(tmp_path))
    (ax,) = saved["confidence_histogram.png"].axes
    assert ax.get_yscale() == "log" and "log" in ax.get_ylabel()


def test_reliability_diagram_explains_its_overlay_and_counts_each_bin(
    saved: dict[str, Figure], tmp_path: Path
) -> None:
    CalibrationAnalysis(CalibrationParams(bins=10)).run(calibration_context(tmp_path))
    figure = saved["reliability.png"]
    texts = legend_texts(figure)
    assert "perfect calibration" in texts and "accuracy of the bin" in texts
    assert any("gap to the bin's mean confidence" in text for text in texts)
    counts_ax = next(ax for ax in figure.axes if "samples" in ax.get_ylabel())
    table = np.genfromtxt(tmp_path / "calibration" / "reliability.csv", delimiter=",", names=True)
    filled = table["count"][table["count"] > 0]
    heights = [patch.get_height() for patch in counts_ax.patches]
    assert heights == filled.tolist()
    labels = sorted(int(text.get_text()) for text in counts_ax.texts)
    assert labels == sorted(int(c) for c in filled)  # each bar says its count
    assert sum(labels) == 300


def images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(count, 1, 8, 8), torch.randint(0, 3, (count,))


class TinyCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))  # (N, 3)


def test_occlusion_has_one_colour_bar_shared_by_its_maps(
    saved: dict[str, Figure], tmp_path: Path
) -> None:
    x, y = images(4)
    occlusion(TinyCnn().eval(), x, y, tmp_path / "occlusion.png", patch=2, stride=2)
    figure = saved["occlusion.png"]
    bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "drop in p_y" in bars[0].get_ylabel()
    maps = [ax.images[0] for ax in figure.axes if ax.images and ax.get_title() == "occlusion"]
    assert len(maps) == 4
    limits = {image.get_clim() for image in maps}
    assert len(limits) == 1  # one scale for every map, the one the bar shows
    low, high = limits.pop()
    assert low == -high and high > 0


def test_saliency_titles_clear_the_images_and_each_other(
    saved: dict[str, Figure], tmp_path: Path
) -> None:
    x, y = images(8)
    saliency(TinyCnn().eval(), x, y, tmp_path / "saliency.png")
    figure = saved["saliency.png"]
    canvas = FigureCanvasAgg(figure)  # closed figures lose theirs; the layout is redone
    canvas.draw()
    renderer = canvas.get_renderer()
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 16
    margin = 3 * figure.dpi / 72  # 3 points of white around each title: no touching either
    titles = [ax.title.get_window_extent(renderer).padded(margin) for ax in panels]
    titles += [text.get_window_extent(renderer).padded(margin) for text in figure.texts]
    assert len(titles) == 17  # with the suptitle
    boxes = [ax.get_window_extent(renderer) for ax in panels]
    for number, title in enumerate(titles):
        others = [box for k, box in enumerate(boxes) if k != number]
        assert not any(title.overlaps(box) for box in others), f"title {number} covers an image"
    for first, second in combinations(titles, 2):
        assert not first.overlaps(second)


def test_boundary_planes_give_each_of_many_classes_its_own_colour(
    saved: dict[str, Figure], tmp_path: Path
) -> None:
    maps = np.array([[[0, 19], [20, 29]]], dtype=np.int16)  # (1, 2, 2): four of 30 classes
    names = [f"class {k}" for k in range(30)]
    plots.label_maps(maps, 1.0, tmp_path / "many.png", title="t", classes=30, class_names=names)
    figure = saved["many.png"]
    image = next(ax for ax in figure.axes if ax.images).images[0]
    colours = [tuple(image.cmap(image.norm(k))) for k in (0, 19, 20, 29)]
    assert len(set(colours)) == 4  # no two classes share a colour past the 20 of tab20
    legend = figure.legends[0]
    shown = dict(
        zip([t.get_text() for t in legend.get_texts()], legend.get_patches(), strict=False)
    )
    for k, colour in zip((0, 19, 20, 29), colours, strict=True):
        assert np.allclose(shown[f"class {k}"].get_facecolor(), colour)
