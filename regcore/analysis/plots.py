"""Plots regbench draws, in one consistent style, headless (matplotlib's Agg backend).

Every function takes plain arrays, writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


@contextmanager
def figure(path: Path, *, size: tuple[float, float] = (4.5, 3.2)) -> Iterator[Figure]:
    """A figure in regbench's style, saved to ``path`` and closed on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=size)
        try:
            yield fig
            fig.tight_layout()
            fig.savefig(path)
        finally:
            plt.close(fig)


def reliability_diagram(
    bin_edges: np.ndarray, bin_accuracy: np.ndarray, bin_confidence: np.ndarray,
    bin_counts: np.ndarray, ece: float, path: Path,
) -> Path:  # fmt: skip
    """Accuracy per confidence bin against the diagonal of perfect calibration."""
    with figure(path) as fig:
        ax = fig.add_subplot()
        width = np.diff(bin_edges)
        filled = bin_counts > 0
        ax.bar(bin_edges[:-1][filled], bin_accuracy[filled], width=width[filled], align="edge",
               edgecolor="black", linewidth=0.5, label="accuracy")  # fmt: skip
        ax.bar(bin_edges[:-1][filled], (bin_confidence - bin_accuracy)[filled],
               bottom=bin_accuracy[filled], width=width[filled], align="edge", color="tab:red",
               alpha=0.3, label="gap")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.set_title(f"reliability (ECE {ece:.4f})")
        ax.legend(loc="upper left")
    return path


def histogram(values: np.ndarray, path: Path, *, title: str, xlabel: str, bins: int = 30) -> Path:
    with figure(path) as fig:
        ax = fig.add_subplot()
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
        ax.set(title=title, xlabel=xlabel, ylabel="count")
    return path


def curves(
    x: Sequence[float], series: dict[str, Sequence[float]], path: Path, *,
    title: str, xlabel: str, ylabel: str,
) -> Path:  # fmt: skip
    """Several named lines over one x axis (training curves, accuracy vs eps)."""
    with figure(path) as fig:
        ax = fig.add_subplot()
        for label, values in series.items():
            ax.plot(x, values, marker="o", markersize=3, label=label)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.legend()
    return path


def image_grid(
    images: Sequence[np.ndarray], path: Path, *, title: str, labels: Sequence[str] | None = None,
    cmap: str = "gray", columns: int = 8, diverging: Sequence[bool] | None = None,
) -> Path:  # fmt: skip
    """(H, W) or (H, W, 3) arrays in a grid; panels flagged ``diverging`` get a red-blue map
    centred at 0 (signed maps such as occlusion), the others ``cmap`` over their range."""
    count = len(images)
    rows = max(1, -(-count // columns))
    with figure(path, size=(1.3 * min(count, columns) + 0.4, 1.4 * rows + 0.5)) as fig:
        for index, image in enumerate(images):
            ax = fig.add_subplot(rows, min(count, columns), index + 1)
            image = np.asarray(image, dtype=np.float64)
            if diverging is not None and diverging[index]:
                limit = float(np.abs(image).max()) or 1.0
                ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
            else:
                ax.imshow(image, cmap=None if image.ndim == 3 else cmap)
            ax.set_xticks([]), ax.set_yticks([])
            ax.grid(False)
            if labels is not None:
                ax.set_title(labels[index], fontsize=7)
        fig.suptitle(title)
    return path


def histograms(named_values: dict[str, np.ndarray], path: Path, *, title: str) -> Path:
    """One small histogram per entry (weight distributions per layer)."""
    count = len(named_values)
    columns = min(count, 4)
    rows = -(-count // columns)
    with figure(path, size=(2.6 * columns, 2.0 * rows + 0.5)) as fig:
        for index, (name, values) in enumerate(named_values.items()):
            ax = fig.add_subplot(rows, columns, index + 1)
            ax.hist(values, bins=50, color="tab:blue", alpha=0.8)
            ax.set_title(f"{name} (std {values.std():.3f})", fontsize=7)
        fig.suptitle(title)
    return path


def scatter_by_class(
    points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: Path, *, title: str
) -> Path:
    """(N, 2) embedding coloured by class."""
    with figure(path, size=(4.5, 4.0)) as fig:
        ax = fig.add_subplot()
        for k, name in enumerate(class_names):
            chosen = labels == k
            if chosen.any():
                ax.scatter(points[chosen, 0], points[chosen, 1], s=6, label=name, alpha=0.8)
        ax.set_title(title)
        if len(class_names) <= 12:
            ax.legend(markerscale=2, fontsize=7, loc="best")
    return path


def label_maps(
    maps: np.ndarray, half_width: float, path: Path, *, title: str, classes: int
) -> Path:
    """Decision-boundary planes: (P, R, R) label maps, the centre marked."""
    count = len(maps)
    columns = min(count, 4)
    rows = -(-count // columns)
    with figure(path, size=(2.4 * columns, 2.4 * rows + 0.5)) as fig:
        for index, label_map in enumerate(maps):
            ax = fig.add_subplot(rows, columns, index + 1)
            ax.imshow(
                label_map.T,  # rows are the first direction: put it on the x axis
                origin="lower",
                extent=(-half_width, half_width, -half_width, half_width),
                cmap="tab10" if classes <= 10 else "tab20",
                vmin=0,
                vmax=max(classes - 1, 1),
                interpolation="nearest",
            )
            ax.plot([0], [0], marker="x", color="black", markersize=6)
            ax.grid(False)
            ax.set_xticks([]), ax.set_yticks([])
        fig.suptitle(title)
    return path
