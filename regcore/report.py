"""The sweep report: the figures a paper would use and one self-contained HTML page.

Figures, each drawn only when the sweep measured what it shows (no empty panels), every
configuration in the same colour, marker and dash pattern throughout, legends outside
the axes:

- learning curves: per-epoch train data loss, val loss and val accuracy, mean over the
  seeds with a band of ± one standard deviation (from the members' per-epoch histories);
- test accuracy: mean with its 95% confidence interval (Student t over the seeds) and,
  with a baseline, each difference from it with its 95% CI and Holm-corrected p;
- robust accuracy against eps, one panel per attack; noise robustness, accuracy against
  the noise size, one panel per noise kind (mean ± std bands);
- decision-boundary total variation per plane width and curvature (mean ± std);
- instability across seeds (churn and the other one-number-per-configuration metrics).

``Report.png`` stacks every figure; the HTML page embeds each one separately (base64),
the table of every metric under readable names (with a legend of the abbreviations),
the comparison with the baseline, links to every run in MLflow and each
configuration's spec (YAML), so it opens anywhere with no other file.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

from regcore.analysis.plots import STYLE, line_style, readable_log_axis
from regcore.compare import (
    BOUNDARY,
    NOISE_ACCURACY,
    ROBUST_ACCURACY,
    TEST_ACCURACY,
    ComparisonRow,
    RobustCurve,
    Summary,
    noise_curves,
    robust_curves,
)
from regcore.instability import METRICS as INSTABILITY_METRICS
from regcore.significance import Difference

CURVATURE = "geometry/curvature_mean"
MAX_LABEL = 48  # characters of a configuration label on an axis or in a legend
PANEL = (3.4, 2.7)  # inches per panel
# per-epoch history keys of the learning curves, in panel order, with fallbacks
HISTORY_PANELS = (
    (("train/data_loss", "train/loss"), "train loss"),
    (("val/loss",), "val loss"),
    (("val/accuracy", "train/accuracy"), "accuracy"),
)
HISTORY_KEYS = tuple(key for keys, _ in HISTORY_PANELS for key in keys)

# one run's per-epoch history: metric key -> (epoch, value) points
History = Mapping[str, Sequence[tuple[float, float]]]


@dataclass(frozen=True)
class RunLink:
    """One run of a configuration, for the page's links."""

    label: str  # "seed 0"
    run_id: str | None  # the MLflow run id, None where the run never started
    url: str | None = None  # the run in the MLflow UI (absolute or relative)
    state: str = ""


@dataclass(frozen=True)
class ReportFigure:
    name: str  # a file-name stem: "learning_curves"
    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Report:
    png: bytes  # every figure, one under the other
    html: str
    panels: list[str]  # the figures' titles, in order
    figures: list[ReportFigure] = field(default_factory=list)


def build_report(
    title: str,
    rows: Sequence[ComparisonRow],
    metrics: Sequence[str],
    *,
    counts: Mapping[str, tuple[int, int]] | None = None,
    subtitle: str = "",
    versus: Mapping[str, Mapping[str, Difference]] | None = None,
    baseline: str | None = None,
    histories: Mapping[str, Sequence[History]] | None = None,
    runs: Mapping[str, Sequence[RunLink]] | None = None,
    specs: Mapping[str, str] | None = None,
    links_note: str = "",
) -> Report:
    """``counts``: configuration -> (succeeded, experiments), shown in the table.
    ``versus``: configuration -> metric -> its difference from the ``baseline`` row
    (``regcore.significance``), drawn beside test accuracy and tabled.
    ``histories``: configuration -> its runs' per-epoch histories (the learning curves).
    ``runs``: configuration -> its runs, linked; ``links_note`` says where links lead.
    ``specs``: configuration -> its spec as YAML, in a collapsible section."""
    counts, versus, histories = counts or {}, versus or {}, histories or {}
    style = {row.configuration: line_style(k) for k, row in enumerate(rows)}
    figures = [
        figure
        for draw in _FIGURES
        if (figure := draw(rows, metrics, style, histories, versus, baseline)) is not None
    ]
    png = _stack([figure.png for figure in figures]) if figures else _empty_png(title)
    page = _html(title, subtitle, figures, rows, metrics, counts, runs or {}, specs or {})
    page = page.replace("<!--links-->", _links_note(links_note))
    section = _versus_html(rows, metrics, versus, baseline) if versus and baseline else ""
    page = page.replace("<!--versus-->", section)
    return Report(png, page, [figure.title for figure in figures], figures)


# --------------------------------------------------------------------------- figures

Style = Mapping[str, Mapping[str, object]]


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def _render(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.08)
    return buffer.getvalue()


def _panels(count: int, *, extra_width: float = 0.0, height: float = PANEL[1]) -> Figure:
    """A bare figure (no pyplot state to clean up) for ``count`` panels in one row."""
    figure = Figure(figsize=(PANEL[0] * count + extra_width, height), layout="constrained")
    return figure


def _legend(figure: Figure, rows: Sequence[ComparisonRow], style: Style, drawn: set[str]) -> None:
    """One legend for every panel, outside them on the right: the lines never hide under it."""
    handles = [
        Line2D([], [], label=_short(row.configuration), **style[row.configuration])  # type: ignore[arg-type]
        for row in rows
        if row.configuration in drawn
    ]
    if handles:
        figure.legend(handles=handles, loc="outside right upper", fontsize=7, title="configuration")


def _band(
    ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, look: Mapping[str, object]
) -> None:
    ax.plot(x, mean, **look)  # type: ignore[arg-type]
    std = np.where(np.isfinite(std), std, 0.0)
    ax.fill_between(x, mean - std, mean + std, color=str(look["color"]), alpha=0.15, linewidth=0)


def _learning_curves(
    rows: Sequence[ComparisonRow], _metrics: Sequence[str], style: Style,
    histories: Mapping[str, Sequence[History]], *_: object,
) -> ReportFigure | None:  # fmt: skip
    recorded = {key for runs in histories.values() for run in runs for key in run if run[key]}
    panels = []  # (title, history key): the first key of each panel that some run recorded
    for keys, name in HISTORY_PANELS:
        if found := [key for key in keys if key in recorded]:
            panels.append((name, found[0]))
    if not panels:
        return None
    with matplotlib.rc_context(STYLE):
        figure = _panels(len(panels), extra_width=2.4)
        drawn: set[str] = set()
        for number, (_name, key) in enumerate(panels):
            ax = figure.add_subplot(1, len(panels), number + 1)
            for row in rows:
                curve = _mean_curve(
                    [run.get(key, ()) for run in histories.get(row.configuration, ())]
                )
                if curve is None:
                    continue
                epochs, mean, std = curve
                _band(ax, epochs, mean, std, style[row.configuration])
                drawn.add(row.configuration)
            label = {"train/data_loss": "train data loss", "train/loss": "train loss (total)"}
            ax.set(title=label.get(key, key.replace("/", " ")), xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if "loss" in key:
                ax.set_yscale("log")
                readable_log_axis(ax)
        _legend(figure, rows, style, drawn)
        png = _render(figure)
    caption = (
        "Per epoch, mean over the seeds with a band of ± one standard deviation. The train "
        "loss is the data loss (cross-entropy, penalties left out), comparable with the "
        "validation loss; log scale."
    )
    return ReportFigure("learning_curves", "learning curves", caption, png)


def _mean_curve(
    runs: Sequence[Sequence[tuple[float, float]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean and std over the runs at each epoch any run reached (runs stopped early drop out)."""
    by_epoch: dict[float, list[float]] = {}
    for run in runs:
        for epoch, value in run:
            if math.isfinite(value):
                by_epoch.setdefault(float(epoch), []).append(float(value))
    if not by_epoch:
        return None
    epochs = np.array(sorted(by_epoch))
    mean = np.array([np.mean(by_epoch[e]) for e in epochs])
    std = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])
    return epochs, mean, std


def confidence_interval(summary: Summary, level: float = 0.95) -> tuple[float, float] | None:
    """The Student t interval of the mean over ``summary.n`` seeds; None below two runs."""
    if summary.n < 2 or not math.isfinite(summary.std):
        return None
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, summary.n - 1) * summary.std / math.sqrt(summary.n)
    return summary.mean - half, summary.mean + half


def _test_accuracy(
    rows: Sequence[ComparisonRow], _metrics: Sequence[str], style: Style,
    _histories: object, versus: Mapping[str, Mapping[str, Difference]], baseline: str | None,
) -> ReportFigure | None:  # fmt: skip
    shown = [row for row in rows if _present(row.metrics.get(TEST_ACCURACY))]
    if not shown:
        return None
    compared = bool(versus) and baseline is not None
    height = max(PANEL[1], 0.8 + 0.32 * len(shown))
    with matplotlib.rc_context(STYLE):
        figure = Figure(
            figsize=(PANEL[0] * (2 if compared else 1) + 2.6, height), layout="constrained"
        )
        axes = figure.subplots(1, 2 if compared else 1, sharey=True, squeeze=False)[0]
        positions = np.arange(len(shown))
        for y, row in zip(positions, shown, strict=True):
            summary = row.metrics[TEST_ACCURACY]
            interval = confidence_interval(summary)
            if interval is not None:  # an accuracy lies in [0, 1]: so does what is drawn
                interval = (max(interval[0], 0.0), min(interval[1], 1.0))
            _dot(axes[0], y, summary.mean, interval, style[row.configuration])
        _configurations_axis(axes[0], shown)
        axes[0].set(title="test accuracy (mean, 95% CI)", xlabel="test accuracy")
        if compared:
            ax = axes[1]
            ax.axvline(0.0, color="black", linewidth=0.8)
            for y, row in zip(positions, shown, strict=True):
                difference = versus.get(row.configuration, {}).get(TEST_ACCURACY)
                if row.configuration == baseline:
                    ax.annotate("baseline", (0, y), xytext=(4, 0), textcoords="offset points",
                                va="center", fontsize=7)  # fmt: skip
                elif difference is not None and math.isfinite(difference.diff):
                    interval = (
                        (difference.ci_low, difference.ci_high)
                        if difference.ci_low is not None and difference.ci_high is not None
                        else None
                    )
                    look = dict(style[row.configuration])
                    if not difference.significant:
                        look["markerfacecolor"] = "white"  # open: not significant
                    _dot(ax, y, difference.diff, interval, look)
                    ax.annotate(_short_versus(difference).split(" ", 1)[-1], (difference.diff, y),
                                xytext=(0, 7), textcoords="offset points", ha="center",
                                fontsize=6)  # fmt: skip
            ax.set(title=f"difference from {_short(baseline or '')} (95% CI)",
                   xlabel="test accuracy difference")  # fmt: skip
        png = _render(figure)
    caption = (
        "Mean over the seeds with its 95% confidence interval (Student t, drawn within "
        "[0, 1]; none for a single run; with two seeds t is 12.7, so the intervals are wide)."
    )
    if compared:
        caption += (
            " Right: the difference from the baseline with its 95% CI and Holm-corrected p; "
            "filled markers are significant (p < 0.05), open ones are not."
        )
    return ReportFigure("test_accuracy", "test accuracy", caption, png)


def _dot(
    ax: Axes, y: float, value: float, interval: tuple[float, float] | None,
    look: Mapping[str, object],
) -> None:  # fmt: skip
    error = None if interval is None else [[value - interval[0]], [interval[1] - value]]
    keep = {k: v for k, v in look.items() if k != "linestyle"}
    keep["markersize"] = 6
    ax.errorbar([value], [y], xerr=error, capsize=3, linestyle="none", **keep)  # type: ignore[arg-type]


def _curve_panels(
    title: str, name: str, caption: str, groups: Mapping[str, Sequence[RobustCurve]],
    rows: Sequence[ComparisonRow], style: Style, xlabel: str, ylabel: str,
) -> ReportFigure:  # fmt: skip
    with matplotlib.rc_context(STYLE):
        figure = _panels(len(groups), extra_width=2.4)
        drawn: set[str] = set()
        for number, (group, curves) in enumerate(groups.items()):
            ax = figure.add_subplot(1, len(groups), number + 1)
            for curve in curves:
                arrays = (np.asarray(v, dtype=float) for v in (curve.eps, curve.mean, curve.std))
                _band(ax, *arrays, style[curve.configuration])
                drawn.add(curve.configuration)
            ax.set(title=group, xlabel=xlabel, ylabel=ylabel if number == 0 else "",
                   ylim=(-0.02, 1.02))  # fmt: skip
        _legend(figure, rows, style, drawn)
        png = _render(figure)
    return ReportFigure(name, title, caption, png)


def _robust(
    rows: Sequence[ComparisonRow], _m: Sequence[str], style: Style, *_: object
) -> ReportFigure | None:
    curves = robust_curves(rows)
    if not curves:
        return None
    groups: dict[str, list[RobustCurve]] = {}
    for curve in curves:
        groups.setdefault(_attack_name(curve.attack), []).append(curve)
    caption = (
        "Accuracy under each attack against its budget eps, mean over the seeds with a band "
        "of ± one standard deviation."
    )
    return _curve_panels("robust accuracy vs eps", "robust_accuracy", caption, groups, rows,
                         style, "eps", "robust accuracy")  # fmt: skip


def _noise(
    rows: Sequence[ComparisonRow], _m: Sequence[str], style: Style, *_: object
) -> ReportFigure | None:
    curves = noise_curves(rows)
    if not curves:
        return None
    groups: dict[str, list[RobustCurve]] = {}
    for curve in curves:
        groups.setdefault(_noise_name(curve.attack), []).append(curve)
    caption = (
        "Accuracy under random noise of growing size (in the units of the attacks' eps), "
        "mean over the seeds with a band of ± one standard deviation: beside the attacks, "
        "it tells robustness to the worst case from robustness to the typical case."
    )
    return _curve_panels("noise robustness", "noise_robustness", caption, groups, rows, style,
                         "noise size", "accuracy")  # fmt: skip


def _configurations_axis(ax: Axes, rows: Sequence[ComparisonRow]) -> None:
    """Configurations down the y axis, the first on top (as in the table)."""
    ax.set_yticks(np.arange(len(rows)), [_short(row.configuration) for row in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)


def _dot_panels(
    title: str, name: str, caption: str, panels: Sequence[tuple[str, str, str]],
    rows: Sequence[ComparisonRow], style: Style, *, with_std: bool = True,
) -> ReportFigure:  # fmt: skip
    """One panel per (panel title, metric): a dot per configuration with ± std error bars."""
    height = max(PANEL[1], 0.8 + 0.32 * len(rows))
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(PANEL[0] * len(panels) + 2.6, height), layout="constrained")
        axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        positions = np.arange(len(rows))
        for ax, (panel, key, xlabel) in zip(axes, panels, strict=True):
            for y, row in zip(positions, rows, strict=True):
                summary = row.metrics.get(key)
                if not _present(summary):
                    continue
                assert summary is not None
                std = summary.std if with_std and math.isfinite(summary.std) else 0.0
                interval = (summary.mean - std, summary.mean + std) if std else None
                _dot(ax, y, summary.mean, interval, style[row.configuration])
            ax.set(title=panel, xlabel=xlabel)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # long tick labels stay apart
        _configurations_axis(axes[0], rows)
        png = _render(figure)
    return ReportFigure(name, title, caption, png)


def _geometry(
    rows: Sequence[ComparisonRow], metrics: Sequence[str], style: Style, *_: object
) -> ReportFigure | None:
    tv = sorted(
        (float(m["width"]), key)
        for key in metrics
        if (m := BOUNDARY.match(key)) and m["metric"] == "tv_iso"
    )
    panels = [(f"boundary TV (half-width {width:g})", key, "total variation") for width, key in tv]
    if any(_present(row.metrics.get(CURVATURE)) for row in rows):
        panels.append(("curvature", CURVATURE, "curvature"))
    if not panels:
        return None
    caption = (
        "Total variation of the decision boundaries on random planes through test points "
        "(per plane half-width, in pixel L2 units) and the curvature of the loss surface; "
        "mean over the seeds, error bars ± one standard deviation."
    )
    return _dot_panels("decision-boundary TV and curvature", "boundary_curvature", caption,
                       panels, rows, style)  # fmt: skip


def _instability(
    rows: Sequence[ComparisonRow], metrics: Sequence[str], style: Style, *_: object
) -> ReportFigure | None:
    panels = [
        (METRIC_NAMES[key][0], key, "share of test points" if "entropy" not in key else "nats")
        for key in INSTABILITY_METRICS
        if key in metrics and any(_present(row.metrics.get(key)) for row in rows)
    ]
    if not panels:
        return None
    caption = (
        "How much the test predictions of one configuration's seeds disagree: churn (the "
        "mean share of test points two seeds label differently), the entropy of the labels "
        "given, the agreement with the majority and the share where every seed agrees. One "
        "number per configuration (over its n seeds): no error bars."
    )
    return _dot_panels("instability across seeds", "instability", caption, panels, rows, style,
                       with_std=False)  # fmt: skip


_FIGURES: tuple[Callable[..., ReportFigure | None], ...] = (
    _learning_curves,
    _test_accuracy,
    _robust,
    _noise,
    _geometry,
    _instability,
)


def _stack(pngs: Sequence[bytes]) -> bytes:
    """The figures one under the other on white, left-aligned: the single-file report.png."""
    images = [Image.open(io.BytesIO(png)).convert("RGB") for png in pngs]
    width = max(image.width for image in images)
    gap = 12
    canvas = Image.new("RGB", (width, sum(i.height for i in images) + gap * (len(images) - 1)),
                       "white")  # fmt: skip
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height + gap
    buffer = io.BytesIO()
    canvas.save(buffer, format="png")
    return buffer.getvalue()


def _empty_png(title: str) -> bytes:
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(5.0, 1.0))
        figure.text(0.5, 0.5, f"{title}: no metric to draw yet", ha="center", va="center")
        return _render(figure)


# --------------------------------------------------------------------------- names


def _attack_name(attack: str) -> str:
    """pgd_linf -> PGD L∞."""
    method, _, norm = attack.partition("_")
    return f"{method.upper()} {_norm(norm)}".strip()


def _noise_name(kind: str) -> str:
    """gaussian_l2 -> Gaussian L2."""
    noise, _, norm = kind.partition("_")
    return f"{noise.capitalize()} {_norm(norm)}".strip()


def _norm(norm: str) -> str:
    return {"linf": "L∞", "l2": "L2", "l1": "L1"}.get(norm, norm)


METRIC_NAMES: dict[str, tuple[str, str]] = {  # key -> (short name, what it is)
    TEST_ACCURACY: ("test acc", "accuracy on the test split"),
    "train_seconds": ("train s", "training time in seconds"),
    CURVATURE: ("curvature", "curvature of the loss surface at test points (geometry)"),
    "geometry/grad_norm_mean": ("‖∇x‖", "norm of the input gradient of the loss"),
    "geometry/hessian_norm_mean": ("‖H‖", "spectral norm of the input Hessian of the loss"),
    "instability/churn": ("churn", "mean share of test points two seeds label differently"),
    "instability/label_entropy": ("label H", "entropy of the labels the seeds give a point"),
    "instability/majority_agreement": ("maj. agree", "share of seeds agreeing with the majority"),
    "instability/all_agree": ("all agree", "share of test points every seed labels alike"),
}


def metric_name(key: str) -> tuple[str, str]:
    """(short column name, what it measures) of a result metric."""
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    if match := ROBUST_ACCURACY.match(key):
        attack = _attack_name(match["attack"])
        return f"{attack} ε={match['eps']}", f"accuracy under {attack} with budget eps"
    if match := NOISE_ACCURACY.match(key):
        noise = _noise_name(match["kind"])
        return f"{noise} ε={match['eps']}", f"accuracy under {noise} noise of that size"
    if match := BOUNDARY.match(key):
        width = match["width"]
        if match["found"]:
            return f"found w={width}", (
                "share of planes where a boundary was found (the distance averages only those)"
            )
        if match["metric"] == "tv_iso":
            return f"TV w={width}", "total variation of the decision boundaries on planes"
        return f"dist w={width}", "distance to the nearest boundary on the planes (pixel L2)"
    plain = re.sub(r"_mean$", "", key)
    return plain, plain


# --------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 76em; color: #222;
  padding: 0 1em; line-height: 1.4; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.number { text-align: right; white-space: nowrap; }
td.configuration { min-width: 12em; max-width: 28em; overflow-wrap: anywhere; }
dl.legend { display: grid; grid-template-columns: max-content 1fr; gap: 0.2em 1em;
  font-size: 0.85em; }
dl.legend dt { font-weight: 600; }
dl.legend dd { margin: 0; }
details { margin: 0.4em 0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
code { font-size: 0.9em; }
"""


def _html(
    title: str,
    subtitle: str,
    figures: Sequence[ReportFigure],
    rows: Sequence[ComparisonRow],
    metrics: Sequence[str],
    counts: Mapping[str, tuple[int, int]],
    runs: Mapping[str, Sequence[RunLink]],
    specs: Mapping[str, str],
) -> str:
    escape = html.escape
    header = "".join(
        f'<th><abbr title="{escape(key)}">{escape(metric_name(key)[0])}</abbr></th>'
        for key in metrics
    )
    body = "".join(
        '<tr><td class="configuration">{}</td><td>{}</td>{}</tr>'.format(
            escape(row.configuration),
            escape(_runs(row, counts)),
            "".join(
                f'<td class="number">{escape(_format(row.metrics.get(m)))}</td>' for m in metrics
            ),
        )
        for row in rows
    )
    legend = "".join(
        f"<dt>{escape(names)}</dt><dd>{escape(what)} (<code>{escape(pattern)}</code>)</dd>"
        for names, what, pattern in _legend_entries(metrics)
    )
    shown = "".join(
        f'<figure><img alt="{escape(figure.title)}" '
        f'src="data:image/png;base64,{base64.b64encode(figure.png).decode("ascii")}">'
        f"<figcaption><b>{escape(figure.title[:1].upper() + figure.title[1:])}.</b> "
        f"{escape(figure.caption)}</figcaption></figure>\n"
        for figure in figures
    )
    configurations = "".join(_configuration_html(row, runs, specs) for row in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style></head><body>
<h1>{escape(title)}</h1>
<p>{escape(subtitle)}</p>
{shown}<h2>Every metric: mean ± std over seeds (n runs)</h2>
<div class="scroll"><table class="results"><thead><tr><th>configuration</th><th>runs</th>{header}
</tr></thead>
<tbody>{body}</tbody></table></div>
<h3>Column names</h3>
<dl class="legend">{legend}</dl>
<!--versus-->
<h2>Configurations and their runs</h2>
<!--links-->
{configurations}
</body></html>
"""


def _legend_entries(metrics: Sequence[str]) -> list[tuple[str, str, str]]:
    """(names, what they measure, metric key pattern): one entry per family of columns
    (``PGD L∞ ε=0, 0.05, 0.1`` - ``attack/pgd_linf/acc_eps<ε>``), in column order."""
    families: dict[tuple[str, str], list[str]] = {}
    for key in metrics:
        short, what = metric_name(key)
        families.setdefault((what, _pattern(key)), []).append(short)
    entries = []
    for (what, pattern), shorts in families.items():
        prefix = shorts[0].rpartition("=")[0] + "=" if "=" in shorts[0] else ""
        if len(shorts) > 1 and prefix and all(s.startswith(prefix) for s in shorts):
            names = prefix + ", ".join(s.removeprefix(prefix) for s in shorts)
        else:
            names = ", ".join(shorts)
        entries.append((names, what, pattern))
    return entries


def _pattern(key: str) -> str:
    """The metric key with its size parameter left open."""
    key = re.sub(r"acc_eps[0-9.e+-]+$", "acc_eps<ε>", key)
    return re.sub(r"^boundary/w[0-9.e+-]+/", "boundary/w<w>/", key)


def _links_note(note: str) -> str:
    return f"<p>{html.escape(note)}</p>" if note else ""


def _configuration_html(
    row: ComparisonRow, runs: Mapping[str, Sequence[RunLink]], specs: Mapping[str, str]
) -> str:
    escape = html.escape
    items = []
    for run in runs.get(row.configuration, ()):
        state = f" ({escape(run.state)})" if run.state else ""
        if run.run_id is None:
            items.append(f"<li>{escape(run.label)}: no MLflow run{state}</li>")
        elif run.url:
            items.append(
                f'<li><a href="{escape(run.url)}">{escape(run.label)}</a>: MLflow run '
                f"<code>{escape(run.run_id)}</code>{state}</li>"
            )
        else:
            items.append(
                f"<li>{escape(run.label)}: MLflow run <code>{escape(run.run_id)}</code>{state}</li>"
            )
    listed = f"<ul>{''.join(items)}</ul>" if items else ""
    spec = specs.get(row.configuration)
    details = (
        f"<details><summary>spec (YAML)</summary><pre>{escape(spec)}</pre></details>"
        if spec
        else ""
    )
    return f"<h3>{escape(row.configuration)}</h3>\n{listed}{details}\n"


def format_versus(difference: Difference | None, *, with_ci: bool = True) -> str:
    """``+0.0177 [+0.0101, +0.0252] p=0.008 *``: the difference of means, its 95% CI, the
    Holm-corrected p; ``*`` significant (p < 0.05), ``n.s.`` not; why there is no test."""
    if difference is None or not math.isfinite(difference.diff):
        return "–" if difference is None or not difference.note else f"– ({difference.note})"
    places = 1 if abs(difference.diff) >= 100 else 2 if abs(difference.diff) >= 10 else 4
    text = f"{difference.diff:+.{places}f}"
    if difference.p_holm is None:
        return f"{text} ({difference.note or 'no test'})"
    if with_ci and difference.ci_low is not None and difference.ci_high is not None:
        text += f" [{difference.ci_low:+.{places}f}, {difference.ci_high:+.{places}f}]"
    marker = "*" if difference.significant else "n.s."
    return f"{text} p={difference.p_holm:.2g} {marker}"


def _short_versus(difference: Difference | None) -> str:
    return format_versus(difference, with_ci=False)


def _versus_html(
    rows: Sequence[ComparisonRow],
    metrics: Sequence[str],
    versus: Mapping[str, Mapping[str, Difference]],
    baseline: str,
) -> str:
    """The table of each row against the baseline, per metric compared."""
    escape = html.escape
    compared = [m for m in metrics if any(m in by_metric for by_metric in versus.values())]
    header = "".join(
        f'<th><abbr title="{escape(m)}">{escape(metric_name(m)[0])}</abbr></th>' for m in compared
    )
    body = ""
    for row in rows:
        differences = versus.get(row.configuration, {})
        if row.configuration == baseline:
            cells = "<td>baseline</td>" + "<td></td>" * len(compared)
        else:
            tests = sorted({d.test for d in differences.values() if d.test})
            cells = f"<td>{escape('/'.join(tests) or '–')}</td>" + "".join(
                f"<td>{escape(format_versus(differences.get(m)))}</td>" for m in compared
            )
        body += f'<tr><td class="configuration">{escape(row.configuration)}</td>{cells}</tr>'
    return f"""<h2>Against the baseline {escape(baseline)}: difference of means [95% CI],
Holm-corrected p</h2>
<p>* significant (corrected p &lt; 0.05); n.s. not significant. Paired t-test when both rows
were trained on the same seeds, else Welch's; a row of one run cannot be tested. Two or
three seeds give wide intervals.</p>
<div class="scroll"><table class="versus"><thead><tr><th>configuration</th><th>test</th>{header}
</tr></thead>
<tbody>{body}</tbody></table></div>
"""


def _present(summary: Summary | None) -> bool:
    return summary is not None and summary.n > 0 and math.isfinite(summary.mean)


def _format(summary: Summary | None, *, with_n: bool = True) -> str:
    if not _present(summary):
        return "–"
    assert summary is not None
    places = 1 if abs(summary.mean) >= 100 else 2 if abs(summary.mean) >= 10 else 4
    text = f"{summary.mean:.{places}f}"
    if summary.n > 1 and math.isfinite(summary.std):
        text += f" ± {summary.std:.{places}f}"
    return f"{text} (n={summary.n})" if with_n else text


def _runs(row: ComparisonRow, counts: Mapping[str, tuple[int, int]]) -> str:
    succeeded, total = counts.get(row.configuration, (row.n, row.n))
    return str(total) if succeeded == total else f"{succeeded}/{total} ok"
