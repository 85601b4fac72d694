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
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

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
            if fig.get_layout_engine() is None:
                fig.tight_layout()
            # "tight": legends and colour bars placed outside the axes stay in the picture
            fig.savefig(path, bbox_inches="tight", pad_inches=0.05)
        finally:
            plt.close(fig)


GAP_LABEL = "gap to the bin's mean confidence\n(above the bar: over-confident)"


def reliability_diagram(
    bin_edges: np.ndarray, bin_accuracy: np.ndarray, bin_confidence: np.ndarray,
    bin_counts: np.ndarray, ece: float, path: Path,
) -> Path:  # fmt: skip
    """Accuracy per confidence bin against the diagonal of perfect calibration; the bars
    below count the samples in each bin (log scale: most sit in the last bins)."""
    with figure(path, size=(4.8, 5.2)) as fig:
        fig.set_layout_engine("constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        width = np.diff(bin_edges)
        filled = bin_counts > 0
        left = bin_edges[:-1][filled]
        top.bar(left, bin_accuracy[filled], width=width[filled], align="edge",
                edgecolor="black", linewidth=0.5, label="accuracy of the bin")  # fmt: skip
        top.bar(left, (bin_confidence - bin_accuracy)[filled], bottom=bin_accuracy[filled],
                width=width[filled], align="edge", color="tab:red", alpha=0.3,
                label=GAP_LABEL)  # fmt: skip
        top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
        top.set_title(f"reliability (ECE {ece:.4f}, {int(bin_counts.sum())} samples)")
        fig.legend(loc="outside lower center", fontsize=7)
        counts = bin_counts[filled]
        bars = bottom.bar(left, counts, width=width[filled], align="edge", color="tab:gray",
                          edgecolor="black", linewidth=0.5, label="samples per bin")  # fmt: skip
        bottom.bar_label(bars, labels=[f"{int(c)}" for c in counts], fontsize=6, padding=1)
        bottom.set_yscale("log")
        bottom.set_ylim(0.8, max(float(counts.max()) if counts.size else 1.0, 1.0) * 8)
        bottom.set(xlabel="confidence (max softmax probability)", ylabel="samples\n(log)")
    return path


def histogram(
    values: np.ndarray, path: Path, *, title: str, xlabel: str, bins: int = 30, log: bool = False
) -> Path:
    """``log``: a log count axis, for skewed values (confidences pile up near 1)."""
    with figure(path) as fig:
        ax = fig.add_subplot()
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
        ax.set(title=title, xlabel=xlabel, ylabel="count (log scale)" if log else "count")
        if log:
            ax.set_yscale("log")
    return path


# a distinct look per line, for print in grey too: colour, marker and line style all change
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def line_style(index: int) -> dict[str, object]:
    """The ``index``-th line's colour, marker and dash pattern (keywords of ``Axes.plot``)."""
    return {
        "color": f"C{index % 10}",
        "marker": MARKERS[index % len(MARKERS)],
        "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
        "markersize": 4,
    }


def readable_log_axis(ax: Axes) -> None:
    """A log y axis labelled 0.05, 0.1, 0.2, 0.5 rather than 5 x 10^-2 or every minor tick."""
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def curves(
    x: Sequence[float], series: dict[str, Sequence[float]], path: Path, *,
    title: str, xlabel: str, ylabel: str, marks: Sequence[tuple[float, str]] = (),
    log: bool = False,
) -> Path:  # fmt: skip
    """Several named lines over one x axis (training curves, accuracy vs eps); ``marks``
    are labelled vertical lines (the restored best epoch). The legend sits outside."""
    with figure(path, size=(5.6, 3.2)) as fig:
        ax = fig.add_subplot()
        for index, (label, values) in enumerate(series.items()):
            ax.plot(x, values, label=label, **line_style(index))  # type: ignore[arg-type]
        for position, label in marks:
            ax.axvline(position, color="black", linestyle=":", linewidth=1.2, label=label)
        ax.set(title=title, xlabel=xlabel, ylabel=f"{ylabel} (log scale)" if log else ylabel)
        if all(float(v).is_integer() for v in x):  # epochs: no ticks between them
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log:
            ax.set_yscale("log")
            readable_log_axis(ax)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7)
    return path


def image_grid(
    images: Sequence[np.ndarray], path: Path, *, title: str, labels: Sequence[str] | None = None,
    cmap: str = "gray", columns: int = 8, diverging: Sequence[bool] | None = None,
    colorbar: str | None = None,
) -> Path:  # fmt: skip
    """(H, W) or (H, W, 3) arrays in a grid; panels flagged ``diverging`` get a red-blue map
    centred at 0 and shared by all of them (signed maps such as occlusion), with a colour
    bar titled ``colorbar``; the others ``cmap`` over their own range."""
    count = len(images)
    rows = max(1, -(-count // columns))
    arrays = [np.asarray(image, dtype=np.float64) for image in images]
    flagged = list(diverging) if diverging is not None else [False] * count
    signed = [a for a, d in zip(arrays, flagged, strict=True) if d]
    limit = max((float(np.abs(a).max()) for a in signed), default=0.0) or 1.0
    # constrained layout keeps each row's titles clear of the images above them
    size = (1.3 * min(count, columns) + (1.0 if colorbar else 0.4), 1.55 * rows + 0.6)
    with figure(path, size=size) as fig:
        fig.set_layout_engine("constrained")
        axes, shown = [], None
        for index, image in enumerate(arrays):
            ax = fig.add_subplot(rows, min(count, columns), index + 1)
            axes.append(ax)
            if flagged[index]:
                shown = ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
            else:
                ax.imshow(image, cmap=None if image.ndim == 3 else cmap)
            ax.set_xticks([]), ax.set_yticks([])
            ax.grid(False)
            if labels is not None:
                ax.set_title(labels[index], fontsize=7)
        if colorbar is not None and shown is not None:
            fig.colorbar(shown, ax=axes, label=colorbar, shrink=0.9, aspect=25)
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
    maps: np.ndarray,
    half_width: float,
    path: Path,
    *,
    title: str,
    classes: int,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Decision-boundary planes: (P, R, R) label maps over [-w, w]^2 in pixel L2 units along
    the plane's two directions, the centre (a test point) marked, a legend of the classes."""
    count = len(maps)
    columns = min(count, 4)
    rows = -(-count // columns)
    # one colour per class: qualitative maps up to 20 classes, then a resampled rainbow
    colours = (
        plt.get_cmap("tab10" if classes <= 10 else "tab20")
        if classes <= 20
        else matplotlib.colormaps["turbo"].resampled(classes)
    )
    names = list(class_names) if class_names is not None else [str(k) for k in range(classes)]
    extent = (-half_width, half_width, -half_width, half_width)
    with figure(path, size=(2.5 * columns + 1.4, 2.5 * rows + 0.6)) as fig:
        fig.set_layout_engine("constrained")
        for index, label_map in enumerate(maps):
            ax = fig.add_subplot(rows, columns, index + 1)
            ax.imshow(
                label_map.T,  # rows are the first direction: put it on the x axis
                origin="lower",
                extent=extent,
                cmap=colours,
                vmin=-0.5,
                vmax=colours.N - 0.5,  # class k is colour k of the map
                interpolation="nearest",
            )
            ax.plot([0], [0], marker="x", color="black", markersize=6)
            ax.grid(False)
            ax.set_title(f"plane {index + 1}", fontsize=8)
            ax.tick_params(labelsize=7)
            if index % columns == 0:
                ax.set_ylabel("along v2 (pixel L2)", fontsize=7)
            if index >= count - columns:
                ax.set_xlabel("along v1 (pixel L2)", fontsize=7)
        shown = sorted({int(k) for k in np.unique(maps)}) if count else []
        handles = [
            Patch(facecolor=colours(k), edgecolor="black", linewidth=0.3, label=names[k])
            for k in shown
            if 0 <= k < len(names)
        ]
        handles.append(
            Line2D([], [], marker="x", color="black", linestyle="none", label="test point")
        )
        fig.legend(handles=handles, title="predicted class", loc="outside right upper",
                   fontsize=7, title_fontsize=7)  # fmt: skip
        fig.suptitle(title)
    return path
