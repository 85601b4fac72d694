"""The sweep report: the figures a paper would use (read from their matplotlib objects)
and a readable, self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import math
import re

import matplotlib.image
import numpy as np
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from scipy import stats

from regcore.compare import ComparisonRow, Summary, compare, result_metrics, summarize
from regcore.instability import CHURN, Instability, add_instability
from regcore.report import (
    RunLink,
    build_report,
    confidence_interval,
    metric_name,
)
from regcore.significance import versus_baseline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASELINE = "baseline"
L2 = "regularizers=l2(weight=0.001)"
ODD = "jacobian<0.1> & friends"  # needs escaping in HTML
METRICS = [
    "test_accuracy",
    "attack/fgsm_linf/acc_eps0.1",
    "attack/pgd_linf/acc_eps0",
    "attack/pgd_linf/acc_eps0.1",
    "boundary/w20/tv_iso_mean",
    "geometry/curvature_mean",
]
COLUMNS = [  # readable names, each with its metric key as the abbreviation's title
    ("test acc", "test_accuracy"),
    ("FGSM L∞ ε=0.1", "attack/fgsm_linf/acc_eps0.1"),
    ("PGD L∞ ε=0", "attack/pgd_linf/acc_eps0"),
    ("PGD L∞ ε=0.1", "attack/pgd_linf/acc_eps0.1"),
    ("TV w=20", "boundary/w20/tv_iso_mean"),
    ("curvature", "geometry/curvature_mean"),
]
FULL_FIGURES = [
    "test accuracy",
    "robust accuracy vs eps",
    "decision-boundary TV and curvature",
]


def rows() -> list[ComparisonRow]:
    return [
        ComparisonRow(
            BASELINE,
            3,
            {
                "test_accuracy": Summary(0.91234, 0.01111, 3),
                "attack/fgsm_linf/acc_eps0.1": Summary(0.3, 0.05, 3),
                "attack/pgd_linf/acc_eps0": Summary(0.91234, 0.01111, 3),
                "attack/pgd_linf/acc_eps0.1": Summary(0.2, 0.04, 3),
                "boundary/w20/tv_iso_mean": Summary(123.456, 7.891, 3),
                "geometry/curvature_mean": Summary(12.3456, 0.5, 3),
            },
        ),
        ComparisonRow(
            L2,
            3,
            {
                "test_accuracy": Summary(0.93, 0.02, 3),
                "attack/fgsm_linf/acc_eps0.1": Summary(0.4, 0.06, 2),
                "attack/pgd_linf/acc_eps0": Summary(0.93, 0.02, 3),
                "attack/pgd_linf/acc_eps0.1": Summary(0.35, 0.03, 3),
                "boundary/w20/tv_iso_mean": Summary(80.0, 5.0, 3),
                # no curvature measured
            },
        ),
        ComparisonRow(
            ODD,
            1,
            {
                "test_accuracy": Summary(0.5, 0.0, 1),
                "attack/pgd_linf/acc_eps0": Summary(0.5, 0.0, 1),
                "attack/pgd_linf/acc_eps0.1": Summary(0.1, 0.0, 1),
                "geometry/curvature_mean": Summary(3.0, 0.0, 1),
            },
        ),
    ]


HISTORIES = {  # two seeds of the baseline, one of L2 (stopped early after 2 epochs)
    BASELINE: [
        {"train/data_loss": [(1, 1.0), (2, 0.5), (3, 0.25)], "val/accuracy": [(1, 0.5), (2, 0.7)]},
        {"train/data_loss": [(1, 2.0), (2, 1.5), (3, 0.75)], "val/accuracy": [(1, 0.7), (2, 0.9)]},
    ],
    L2: [{"train/data_loss": [(1, 1.2), (2, 0.6)], "val/accuracy": [(1, 0.6), (2, 0.8)]}],
}


def embedded_pngs(page: str) -> list[bytes]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [base64.b64decode(data, validate=True) for data in found]


def html_rows(page: str) -> dict[str, list[str]]:
    """The results table: configuration (unescaped) -> the other cells (unescaped)."""
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    table: dict[str, list[str]] = {}
    for line in re.findall(r"<tr>(.*?)</tr>", body):
        cells = [html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", line)]
        table[cells[0]] = cells[1:]
    return table


def header(page: str) -> list[tuple[str, str]]:
    head = page.split("<thead>", 1)[1].split("</thead>", 1)[0]
    return [
        (html.unescape(name), html.unescape(key))
        for key, name in re.findall(r'<th><abbr title="(.*?)">(.*?)</abbr></th>', head)
    ]


# --------------------------------------------------------------------------- figures


def test_figures_follow_the_metrics_and_none_is_empty(saved: dict[str, Figure]) -> None:
    report = build_report("sweep demo", rows(), METRICS, histories=HISTORIES)
    assert report.panels == ["learning curves", *FULL_FIGURES]
    assert [figure.title for figure in report.figures] == report.panels
    for figure in saved.values():  # every panel of every figure shows something
        for ax in figure.axes:
            assert ax.get_lines() or ax.collections or ax.patches, ax.get_title()

    no_boundary = [name for name in METRICS if not name.startswith("boundary/")]
    assert build_report("t", rows(), no_boundary).panels == [
        "test accuracy",
        "robust accuracy vs eps",
        "decision-boundary TV and curvature",  # curvature alone
    ]
    only_accuracy = [
        ComparisonRow(row.configuration, row.n, {"test_accuracy": row.metrics["test_accuracy"]})
        for row in rows()
    ]
    assert build_report("t", only_accuracy, ["test_accuracy"]).panels == ["test accuracy"]
    empty = build_report("empty", [], [])  # nothing at all: still a picture and a page
    assert empty.panels == [] and empty.png[:8] == PNG_MAGIC and "<h1>empty</h1>" in empty.html


def test_report_png_stacks_the_figures(saved: dict[str, Figure]) -> None:
    report = build_report("sweep demo", rows(), METRICS, histories=HISTORIES)
    assert report.png[:8] == PNG_MAGIC
    image = matplotlib.image.imread(io.BytesIO(report.png), format="png")
    parts = [matplotlib.image.imread(io.BytesIO(f.png), format="png") for f in report.figures]
    assert image.shape[0] >= sum(part.shape[0] for part in parts)
    assert image.shape[1] == max(part.shape[1] for part in parts)


def test_legends_sit_outside_the_axes_and_lines_differ_beyond_colour(
    saved: dict[str, Figure],
) -> None:
    build_report("sweep demo", rows(), METRICS, histories=HISTORIES)
    line_figures = [f for f in saved.values() if f.legends]
    assert len(line_figures) == 2  # learning curves, robust accuracy
    for figure in line_figures:
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        renderer = canvas.get_renderer()
        (legend,) = figure.legends
        box = legend.get_window_extent(renderer)
        for ax in figure.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
        looks = [(h.get_marker(), h.get_linestyle(), h.get_color()) for h in legend.legend_handles]
        assert len({look[:2] for look in looks}) == len(looks)  # marker and dashes differ too
    robust = next(f for f in line_figures if any("PGD" in ax.get_title() for ax in f.axes))
    assert sorted(ax.get_title() for ax in robust.axes) == ["FGSM L∞", "PGD L∞"]
    labels = [text.get_text() for text in robust.legends[0].get_texts()]
    assert labels == [BASELINE, L2, ODD]


def test_learning_curves_are_the_mean_over_seeds_with_a_std_band(
    saved: dict[str, Figure],
) -> None:
    report = build_report("t", rows(), METRICS, histories=HISTORIES)
    figure = saved[f"figure{report.panels.index('learning curves')}"]
    loss, accuracy = figure.axes
    assert loss.get_title() == "train data loss" and accuracy.get_title() == "val accuracy"
    assert loss.get_yscale() == "log"
    baseline_line, l2_line = loss.get_lines()
    assert list(baseline_line.get_xdata()) == [1, 2, 3]
    assert list(baseline_line.get_ydata()) == pytest.approx([1.5, 1.0, 0.5])
    assert list(l2_line.get_xdata()) == [1, 2]  # its run stopped after two epochs
    band = next(c for c in loss.collections if isinstance(c, PolyCollection))
    ys = band.get_paths()[0].vertices[:, 1]  # mean ± std at each epoch, the widest ends
    assert ys.max() == pytest.approx(1.5 + np.std([1.0, 2.0], ddof=1))
    assert ys.min() == pytest.approx(0.5 - np.std([0.25, 0.75], ddof=1))


def test_test_accuracy_has_95_percent_intervals_and_the_difference_from_the_baseline(
    saved: dict[str, Figure],
) -> None:
    summary = Summary(0.9, 0.02, 3)
    half = stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert confidence_interval(summary) == pytest.approx((0.9 - half, 0.9 + half))
    assert confidence_interval(Summary(0.9, 0.0, 1)) is None

    data = seeded_rows()
    _, versus = versus_baseline(data, ["test_accuracy"])
    report = build_report("t", data, ["test_accuracy"], versus=versus, baseline=BASELINE)
    figure = saved[f"figure{report.panels.index('test accuracy')}"]
    means, differences = figure.axes
    assert "95% CI" in means.get_title() and "difference from baseline" in differences.get_title()
    assert [t.get_text() for t in means.get_yticklabels()] == [BASELINE, L2, ODD]
    bars = [c for c in means.collections if c.get_segments()]
    segments = [segment for bar in bars for segment in bar.get_segments()]
    low, high = confidence_interval(data[1].metrics["test_accuracy"])  # type: ignore[misc]
    assert any(
        np.allclose(s[:, 0], [low, high]) or np.allclose(s[:, 0], [high, low]) for s in segments
    )
    l2 = versus[L2]["test_accuracy"]
    difference_segments = [s for c in differences.collections for s in c.get_segments()]
    assert any(np.allclose(sorted(s[:, 0]), [l2.ci_low, l2.ci_high]) for s in difference_segments)
    notes = [text.get_text() for text in differences.texts]
    assert "baseline" in notes and any(text.startswith("p=") for text in notes)


def test_noise_metrics_are_read_from_their_names(saved: dict[str, Figure]) -> None:
    keys = [
        "test_accuracy", "noise/uniform_linf/acc_eps0.1", "noise/gaussian_l2/acc_eps1",
        "noise/gaussian_l2/acc_eps0", "attack/pgd_linf/acc_eps0.1", "boundary/w20/tv_iso_mean",
    ]  # fmt: skip
    assert result_metrics(keys) == [
        "test_accuracy", "attack/pgd_linf/acc_eps0.1", "noise/gaussian_l2/acc_eps0",
        "noise/gaussian_l2/acc_eps1", "noise/uniform_linf/acc_eps0.1", "boundary/w20/tv_iso_mean",
    ]  # fmt: skip
    assert metric_name("noise/gaussian_l2/acc_eps1")[0] == "Gaussian L2 ε=1"
    runs = [
        (config, {"noise/gaussian_l2/acc_eps0": 0.9, "noise/gaussian_l2/acc_eps1": value})
        for config, value in ((BASELINE, 0.5), (BASELINE, 0.7), (L2, 0.8))
    ]
    metrics = result_metrics([*runs[0][1]])
    report = build_report("t", compare(runs, metrics), metrics)
    assert report.panels == ["noise robustness"]
    (ax,) = saved["figure0"].axes
    assert ax.get_title() == "Gaussian L2"
    baseline_line = ax.get_lines()[0]
    assert list(baseline_line.get_xdata()) == [0, 1]
    assert list(baseline_line.get_ydata()) == pytest.approx([0.9, 0.6])


def test_instability_gets_a_figure_of_its_own(saved: dict[str, Figure]) -> None:
    data = seeded_rows()
    columns = add_instability(
        data[:2],
        ["test_accuracy"],
        {BASELINE: Instability({CHURN: 0.125}, 3), L2: Instability({CHURN: 0.0}, 3)},
    )
    report = build_report("t", data, columns)
    assert report.panels == ["test accuracy", "instability across seeds"]
    figure = saved["figure1"]
    (ax,) = figure.axes
    assert ax.get_title() == "churn"
    xs = sorted(line.get_xdata()[0] for line in ax.get_lines())
    assert xs == [0.0, 0.125]


# --------------------------------------------------------------------------- HTML


def test_html_has_the_title_once_and_each_figure_as_its_own_image() -> None:
    report = build_report(
        "sweep <demo> & co", rows(), METRICS, subtitle="sub & title", histories=HISTORIES
    )
    page = report.html
    assert page.startswith("<!DOCTYPE html>")
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "<title>sweep &lt;demo&gt; &amp; co</title>" in page
    assert page.count("sweep &lt;demo&gt; &amp; co") == 2  # <title> and <h1>, nowhere else
    assert page.count("<h1>") == 1 and "<p>sub &amp; title</p>" in page
    images = embedded_pngs(page)
    assert images == [figure.png for figure in report.figures]
    assert report.png not in images  # not the stacked picture again
    for figure in report.figures:
        title = figure.title[:1].upper() + figure.title[1:]
        assert f"<b>{html.escape(title)}.</b>" in page  # a caption each


def test_html_table_has_readable_names_a_legend_and_fits_the_page() -> None:
    counts = {BASELINE: (3, 3), L2: (2, 3), ODD: (1, 1)}
    page = build_report("sweep demo", rows(), METRICS, counts=counts).html
    assert html.escape(ODD) in page and ODD not in page
    assert header(page) == COLUMNS
    # inside a container that scrolls sideways instead of widening the page
    assert re.search(r'<div class="scroll"><table class="results">', page)
    assert re.search(r"\.scroll \{ overflow-x: auto;", page)
    legend = page.split('<dl class="legend">', 1)[1].split("</dl>", 1)[0]
    entries = [html.unescape(name) for name in re.findall(r"<dt>(.*?)</dt>", legend)]
    patterns = [html.unescape(code) for code in re.findall(r"<code>(.*?)</code>", legend)]
    assert entries == [  # one entry per family of columns
        "test acc", "FGSM L∞ ε=0.1", "PGD L∞ ε=0, 0.1", "TV w=20", "curvature",
    ]  # fmt: skip
    assert patterns == [
        "test_accuracy", "attack/fgsm_linf/acc_eps<ε>", "attack/pgd_linf/acc_eps<ε>",
        "boundary/w<w>/tv_iso_mean", "geometry/curvature_mean",
    ]  # fmt: skip

    table = html_rows(page)
    assert list(table) == [BASELINE, L2, ODD]
    assert [cells[0] for cells in table.values()] == ["3", "2/3 ok", "1"]
    baseline = dict(zip(METRICS, table[BASELINE][1:], strict=True))
    assert baseline == {
        "test_accuracy": "0.9123 ± 0.0111 (n=3)",
        "attack/fgsm_linf/acc_eps0.1": "0.3000 ± 0.0500 (n=3)",
        "attack/pgd_linf/acc_eps0": "0.9123 ± 0.0111 (n=3)",
        "attack/pgd_linf/acc_eps0.1": "0.2000 ± 0.0400 (n=3)",
        "boundary/w20/tv_iso_mean": "123.5 ± 7.9 (n=3)",  # fewer places for larger numbers
        "geometry/curvature_mean": "12.35 ± 0.50 (n=3)",
    }
    l2 = dict(zip(METRICS, table[L2][1:], strict=True))
    assert l2["attack/fgsm_linf/acc_eps0.1"] == "0.4000 ± 0.0600 (n=2)"
    assert l2["geometry/curvature_mean"] == "–"  # missing metric
    odd = dict(zip(METRICS, table[ODD][1:], strict=True))
    assert odd["test_accuracy"] == "0.5000 (n=1)"  # one run: no std


def test_runs_default_to_the_row_count_and_nan_shows_a_dash() -> None:
    data = [
        ComparisonRow("a", 2, {"test_accuracy": Summary(0.8, 0.1, 2)}),
        ComparisonRow("b", 2, {"test_accuracy": Summary(float("nan"), float("nan"), 0)}),
    ]
    table = html_rows(build_report("t", data, ["test_accuracy"]).html)
    assert table == {"a": ["2", "0.8000 ± 0.1000 (n=2)"], "b": ["2", "–"]}


def test_html_links_every_run_and_shows_each_configuration_spec() -> None:
    runs = {
        BASELINE: [
            RunLink("seed 0", "r0", "http://mlflow:5000/#/experiments/1/runs/r0", "succeeded"),
            RunLink("seed 1", None, None, "failed"),
        ],
        L2: [RunLink("seed 0", "r2", "#/experiments/1/runs/r2", "succeeded")],
    }
    specs = {BASELINE: "model:\n  name: lenet\n", ODD: "a: '<b>'\n"}
    page = build_report(
        "t", rows(), METRICS, runs=runs, specs=specs, links_note="relative to the UI"
    ).html
    assert '<a href="http://mlflow:5000/#/experiments/1/runs/r0">seed 0</a>' in page
    assert '<a href="#/experiments/1/runs/r2">seed 0</a>' in page
    assert "seed 1: no MLflow run (failed)" in page
    assert "<p>relative to the UI</p>" in page
    details = re.findall(r"<details><summary>spec \(YAML\)</summary><pre>(.*?)</pre>", page, re.S)
    assert [yaml.safe_load(html.unescape(text)) for text in details] == [
        {"model": {"name": "lenet"}},
        {"a": "<b>"},
    ]


def seeded_rows() -> list[ComparisonRow]:
    data = [
        ComparisonRow(BASELINE, 3, values={"test_accuracy": [(0, 0.90), (1, 0.91), (2, 0.89)]}),
        ComparisonRow(L2, 3, values={"test_accuracy": [(0, 0.95), (1, 0.97), (2, 0.93)]}),
        ComparisonRow(ODD, 1, values={"test_accuracy": [(0, 0.5)]}),
    ]
    for row in data:
        row.metrics["test_accuracy"] = summarize([v for _, v in row.values["test_accuracy"]])
    return data


def test_report_shows_significance_against_the_baseline_and_instability() -> None:
    """The comparison from real values: a significant row marked, one of one run says no
    test is possible; the instability metrics are columns (one number, n members)."""
    data = seeded_rows()
    columns = add_instability(
        data[:2],
        ["test_accuracy"],
        {BASELINE: Instability({CHURN: 0.125}, 3), L2: Instability({CHURN: 0.0}, 3)},
    )
    _, versus = versus_baseline(data, columns)
    report = build_report("t", data, columns, versus=versus, baseline=BASELINE)
    assert report.png[:8] == PNG_MAGIC

    table = html_rows(report.html)
    assert table[BASELINE] == ["3", "0.9000 ± 0.0100 (n=3)", "0.1250 (n=3)"]
    section = report.html.split(f"Against the baseline {BASELINE}", 1)[1]
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    lines = [
        [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", line)]
        for line in re.findall(r"<tr>(.*?)</tr>", body)
    ]
    l2 = versus[L2]["test_accuracy"]
    assert l2.significant is True and l2.test == "paired"
    assert lines[0] == [BASELINE, "baseline", ""]
    assert lines[1] == [
        L2,
        "paired",
        f"+0.0500 [{l2.ci_low:+.4f}, {l2.ci_high:+.4f}] p={l2.p_holm:.2g} *",
    ]
    assert lines[2] == [ODD, "–", "-0.4000 (n=1: no test possible)"]
    assert "instability/churn" not in section  # not compared: one number per configuration

    plain = build_report("t", data, columns)  # no comparison given: no section
    assert "Against the baseline" not in plain.html
