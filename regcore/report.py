"""The sweep report: one PNG and one self-contained HTML page from a comparison.

The figure holds, for every configuration side by side: robust accuracy against eps
for each attack and accuracy under random noise against its size for each noise kind
(mean over seeds, a band of ± one standard deviation), the decision
boundaries' total variation and the curvature as bar charts with std error bars, and a
table of test accuracy. The HTML page embeds that PNG (base64) and the full table of
every metric, so it opens anywhere with no other file.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from regcore.analysis.plots import STYLE
from regcore.compare import (
    BOUNDARY,
    TEST_ACCURACY,
    ComparisonRow,
    RobustCurve,
    Summary,
    noise_curves,
    robust_curves,
)
from regcore.significance import Difference

CURVATURE = "geometry/curvature_mean"
PANEL_SIZE = (5.5, 3.6)  # inches per panel
MAX_LABEL = 48  # characters of a configuration label on an axis
NOISE_PANEL = "accuracy under random noise vs size"
NOISE_UNITS = {"gaussian_l2": "L2 as s sqrt(D)", "uniform_linf": "Linf"}


@dataclass(frozen=True)
class Report:
    png: bytes
    html: str
    panels: list[str]  # the titles of the figure's panels, in order


def build_report(
    title: str,
    rows: Sequence[ComparisonRow],
    metrics: Sequence[str],
    *,
    counts: Mapping[str, tuple[int, int]] | None = None,
    subtitle: str = "",
    versus: Mapping[str, Mapping[str, Difference]] | None = None,
    baseline: str | None = None,
) -> Report:
    """``counts``: configuration -> (succeeded, experiments), shown in the table.
    ``versus``: configuration -> metric -> its difference from the ``baseline`` row
    (``regcore.significance``), shown beside test accuracy and as a table of its own."""
    curves = robust_curves(rows)
    attacks = sorted({curve.attack for curve in curves})
    tv_keys = sorted(  # (plane half-width, metric key)
        (float(m["width"]), key)
        for key in metrics
        if (m := BOUNDARY.match(key)) and m["metric"] == "tv_iso"
    )
    panels: list[tuple[str, object]] = [
        (f"robust accuracy vs eps: {attack}", attack) for attack in attacks
    ]
    noise = noise_curves(rows)
    panels += [
        (f"{NOISE_PANEL}: {kind}", (NOISE_PANEL, kind))
        for kind in sorted({curve.attack for curve in noise})
    ]
    if tv_keys:
        panels.append(("decision-boundary total variation", tv_keys))
    if any(CURVATURE in row.metrics for row in rows):
        panels.append(("curvature", CURVATURE))
    columns = 2 if len(panels) > 1 else 1
    lines = math.ceil(len(panels) / columns)
    table_height = 0.5 + 0.22 * (len(rows) + 1)  # inches: the accuracy table spans the width
    heights = [PANEL_SIZE[1]] * lines + [table_height]
    with matplotlib.rc_context(STYLE):  # a bare Figure: no pyplot state to clean up
        figure = Figure(figsize=(PANEL_SIZE[0] * 2, sum(heights) + 0.6))
        figure.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
        layout = figure.add_gridspec(lines + 1, columns, height_ratios=heights)
        for number, (panel_title, what) in enumerate(panels):
            ax = figure.add_subplot(layout[number // columns, number % columns])
            ax.set_title(panel_title, fontsize=9)
            if isinstance(what, str) and what != CURVATURE:
                _robust_panel(ax, [c for c in curves if c.attack == what])
            elif isinstance(what, tuple):
                _noise_panel(ax, [c for c in noise if c.attack == what[1]], what[1])
            elif isinstance(what, list):
                keys, names = [key for _, key in what], [f"half-width {w:g}" for w, _ in what]
                _grouped_bars(ax, rows, keys, names)
                ax.set_xlabel("total variation (mean ± std over seeds)")
            else:
                _grouped_bars(ax, rows, [CURVATURE], ["curvature"])
                ax.set_xlabel("curvature (mean ± std over seeds)")
        ax = figure.add_subplot(layout[lines, :])
        ax.set_title("test accuracy", fontsize=9)
        _accuracy_table(ax, rows, counts or {}, versus or {}, baseline)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    png = buffer.getvalue()
    page = _html(title, subtitle, png, rows, metrics, counts or {})
    if versus and baseline is not None:
        section = _versus_html(rows, metrics, versus, baseline)
        page = page.replace("</body></html>", f"{section}</body></html>")
    return Report(png, page, [panel for panel, _ in panels] + ["test accuracy"])


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def _robust_panel(ax: Axes, curves: Sequence[RobustCurve]) -> None:
    for curve in curves:
        eps, mean, std = (np.asarray(v, dtype=float) for v in (curve.eps, curve.mean, curve.std))
        (line,) = ax.plot(eps, mean, marker="o", markersize=3, label=_short(curve.configuration))
        ax.fill_between(eps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="eps", ylabel="robust accuracy", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, loc="best")


def _noise_panel(ax: Axes, curves: Sequence[RobustCurve], kind: str) -> None:
    _robust_panel(ax, curves)
    units = NOISE_UNITS.get(kind, kind)
    ax.set(xlabel=f"noise size ({units}, pixel units)", ylabel="accuracy")


def _grouped_bars(
    ax: Axes, rows: Sequence[ComparisonRow], keys: Sequence[str], names: Sequence[str]
) -> None:
    """Horizontal bars: one group per configuration, one bar per key, std as error bars."""
    positions = np.arange(len(rows))
    height = 0.8 / max(1, len(keys))
    for number, (key, name) in enumerate(zip(keys, names, strict=True)):
        summaries = [row.metrics.get(key) for row in rows]
        means = [s.mean if _present(s) else 0.0 for s in summaries]
        stds = [s.std if _present(s) and math.isfinite(s.std) else 0.0 for s in summaries]
        offset = (number - (len(keys) - 1) / 2) * height
        ax.barh(positions + offset, means, height=height, xerr=stds, capsize=2, label=name)
    ax.set_yticks(positions, [_short(row.configuration) for row in rows], fontsize=7)
    ax.invert_yaxis()  # first configuration on top, as in the table
    if len(keys) > 1:
        ax.legend(fontsize=7)


def _accuracy_table(
    ax: Axes,
    rows: Sequence[ComparisonRow],
    counts: Mapping[str, tuple[int, int]],
    versus: Mapping[str, Mapping[str, Difference]],
    baseline: str | None,
) -> None:
    ax.axis("off")
    cells = [
        [
            _short(row.configuration),
            _runs(row, counts),
            _format(row.metrics.get(TEST_ACCURACY), with_n=False),
        ]
        for row in rows
    ]
    labels, widths = ["configuration", "runs", "mean ± std"], [0.6, 0.15, 0.25]
    if versus and baseline is not None:  # the difference from the baseline, marked
        for line, row in zip(cells, rows, strict=True):
            difference = versus.get(row.configuration, {}).get(TEST_ACCURACY)
            line.append("baseline" if row.configuration == baseline else _short_versus(difference))
        labels, widths = [*labels, f"vs {_short(baseline)}"], [0.45, 0.1, 0.2, 0.25]
    table = ax.table(
        cellText=cells or [["–"] * len(labels)],
        colLabels=labels,
        colWidths=widths,
        bbox=[0.0, 0.0, 1.0, 1.0],
        cellLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(7)


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
    header = "".join(f"<th>{escape(_column(m))}</th>" for m in compared)
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
        body += f"<tr><td>{escape(row.configuration)}</td>{cells}</tr>"
    return f"""<h2>Against the baseline {escape(baseline)}: difference of means [95% CI],
Holm-corrected p</h2>
<p>* significant (corrected p &lt; 0.05); n.s. not significant. Paired t-test when both rows
were trained on the same seeds, else Welch's; a row of one run cannot be tested. Two or
three seeds give wide intervals.</p>
<table class="versus"><thead><tr><th>configuration</th><th>test</th>{header}</tr></thead>
<tbody>{body}</tbody></table>
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


def _html(
    title: str,
    subtitle: str,
    png: bytes,
    rows: Sequence[ComparisonRow],
    metrics: Sequence[str],
    counts: Mapping[str, tuple[int, int]],
) -> str:
    escape = html.escape
    header = "".join(f"<th>{escape(_column(m))}</th>" for m in metrics)
    body = "".join(
        "<tr><td>{}</td><td>{}</td>{}</tr>".format(
            escape(row.configuration),
            escape(_runs(row, counts)),
            "".join(f"<td>{escape(_format(row.metrics.get(m)))}</td>" for m in metrics),
        )
        for row in rows
    )
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #f4f4f4; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{escape(title)}</h1>
<p>{escape(subtitle)}</p>
<img alt="robust accuracy, accuracy under noise, total variation, curvature, test accuracy"
 src="data:image/png;base64,{image}">
<h2>Every metric: mean ± std over seeds (n runs)</h2>
<table><thead><tr><th>configuration</th><th>runs</th>{header}</tr></thead>
<tbody>{body}</tbody></table>
</body></html>
"""


def _column(metric: str) -> str:
    return re.sub(r"_mean$", "", metric)
