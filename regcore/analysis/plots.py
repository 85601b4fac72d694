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
