"""The sweep report: a decodable PNG with the right panels and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import re

import matplotlib.image
import pytest

from regcore.analysis.plots import STYLE
from regcore.compare import ComparisonRow, Summary, summarize
from regcore.instability import CHURN, Instability, add_instability
from regcore.report import PANEL_SIZE, build_report
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
COLUMNS = [
    "test_accuracy",
    "attack/fgsm_linf/acc_eps0.1",
    "attack/pgd_linf/acc_eps0",
    "attack/pgd_linf/acc_eps0.1",
    "boundary/w20/tv_iso",  # the "_mean" suffix is dropped from the column title
    "geometry/curvature",
]
FULL_PANELS = [
    "robust accuracy vs eps: fgsm_linf",
    "robust accuracy vs eps: pgd_linf",
    "decision-boundary total variation",
    "curvature",
    "test accuracy",
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


def embedded_png(page: str) -> bytes:
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match is not None
    return base64.b64decode(match.group(1), validate=True)


def html_rows(page: str) -> dict[str, list[str]]:
    """The page's table: configuration (unescaped) -> the other cells (unescaped)."""
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    table: dict[str, list[str]] = {}
    for line in re.findall(r"<tr>(.*?)</tr>", body):
        cells = [html.unescape(cell) for cell in re.findall(r"<td>(.*?)</td>", line)]
        table[cells[0]] = cells[1:]
    return table


def test_png_is_decodable_and_sized_by_its_panels() -> None:
    report = build_report("sweep demo", rows(), METRICS, subtitle="3 configurations")
    assert report.png[:8] == PNG_MAGIC
    image = matplotlib.image.imread(io.BytesIO(report.png), format="png")
    height, width = image.shape[:2]
    dpi = STYLE["savefig.dpi"]
    assert width == round(2 * PANEL_SIZE[0] * dpi)  # two panels side by side
    # two lines of panels, the accuracy table (three rows and its header), the title
    inches = 2 * PANEL_SIZE[1] + 0.5 + 0.22 * 4 + 0.6
    assert height == pytest.approx(inches * dpi, abs=2)
    assert image.std() > 0.01  # something was drawn


def test_panels_follow_the_metrics() -> None:
    report = build_report("sweep demo", rows(), METRICS)
    assert report.panels == FULL_PANELS

    only_accuracy = [
        ComparisonRow(row.configuration, row.n, {"test_accuracy": row.metrics["test_accuracy"]})
        for row in rows()
    ]
    bare = build_report("accuracy only", only_accuracy, ["test_accuracy"])
    assert bare.panels == ["test accuracy"]
    assert bare.png[:8] == PNG_MAGIC
    height, width = matplotlib.image.imread(io.BytesIO(bare.png), format="png").shape[:2]
    assert height < width  # the table alone: no lines of panels

    no_boundary = [name for name in METRICS if not name.startswith("boundary/")]
    assert build_report("t", rows(), no_boundary).panels == [
        "robust accuracy vs eps: fgsm_linf",
        "robust accuracy vs eps: pgd_linf",
        "curvature",
        "test accuracy",
    ]
    pgd_only = [
        ComparisonRow(
            row.configuration,
            row.n,
            {k: v for k, v in row.metrics.items() if k.startswith("attack/pgd")},
        )
        for row in rows()
    ]
    report = build_report("t", pgd_only, ["attack/pgd_linf/acc_eps0", "attack/pgd_linf/acc_eps0.1"])
    assert report.panels == ["robust accuracy vs eps: pgd_linf", "test accuracy"]
    # nothing at all still gives a page with an (empty) table
    empty = build_report("empty", [], [])
    assert empty.panels == ["test accuracy"] and empty.png[:8] == PNG_MAGIC


def test_html_is_self_contained_and_embeds_exactly_the_png() -> None:
    report = build_report("sweep <demo> & co", rows(), METRICS, subtitle="sub & title")
    page = report.html
    assert page.startswith("<!DOCTYPE html>")
    assert "data:image/png;base64," in page
    assert embedded_png(page) == report.png
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "<title>sweep &lt;demo&gt; &amp; co</title>" in page
    assert "<p>sub &amp; title</p>" in page


def test_html_table_lists_every_configuration_and_metric() -> None:
    counts = {BASELINE: (3, 3), L2: (2, 3), ODD: (1, 1)}
    page = build_report("sweep demo", rows(), METRICS, counts=counts).html
    assert html.escape(ODD) in page and ODD not in page
    assert "jacobian&lt;0.1&gt; &amp; friends" in page
    header = page.split("<thead>", 1)[1].split("</thead>", 1)[0]
    assert re.findall(r"<th>(.*?)</th>", header) == ["configuration", "runs", *COLUMNS]

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
    assert l2["boundary/w20/tv_iso_mean"] == "80.00 ± 5.00 (n=3)"
    assert l2["geometry/curvature_mean"] == "–"  # missing metric
    odd = dict(zip(METRICS, table[ODD][1:], strict=True))
    assert odd["test_accuracy"] == "0.5000 (n=1)"  # one run: no std
    assert odd["attack/fgsm_linf/acc_eps0.1"] == "–"
    assert odd["boundary/w20/tv_iso_mean"] == "–"


def test_runs_default_to_the_row_count_and_nan_shows_a_dash() -> None:
    data = [
        ComparisonRow("a", 2, {"test_accuracy": Summary(0.8, 0.1, 2)}),
        ComparisonRow("b", 2, {"test_accuracy": Summary(float("nan"), float("nan"), 0)}),
    ]
    table = html_rows(build_report("t", data, ["test_accuracy"]).html)
    assert table == {"a": ["2", "0.8000 ± 0.1000 (n=2)"], "b": ["2", "–"]}


def test_html_table_shows_boundary_found_right_after_each_distance() -> None:
    from regcore.compare import result_metrics

    data = [
        ComparisonRow(
            BASELINE,
            3,
            {
                "test_accuracy": Summary(0.9, 0.01, 3),
                "boundary/w20/tv_iso_mean": Summary(1.5, 0.1, 3),
                "boundary/w20/distance_mean": Summary(4.0, 0.5, 3),
                "boundary/w20/boundary_found": Summary(0.25, 0.05, 3),
            },
        )
    ]
    metrics = result_metrics([*data[0].metrics, "boundary/w20/distance_std"])
    report = build_report("t", data, metrics)
    header = report.html.split("<thead>", 1)[1].split("</thead>", 1)[0]
    assert re.findall(r"<th>(.*?)</th>", header) == [
        "configuration", "runs", "test_accuracy", "boundary/w20/tv_iso",
        "boundary/w20/distance", "boundary/w20/boundary_found",
    ]  # fmt: skip
    cells = html_rows(report.html)[BASELINE]
    assert cells[-2:] == ["4.0000 ± 0.5000 (n=3)", "0.2500 ± 0.0500 (n=3)"]
    # the found fraction is no total variation: the TV panel shows only tv_iso
    assert report.panels == ["decision-boundary total variation", "test accuracy"]


def test_report_shows_significance_against_the_baseline_and_instability() -> None:
    """The comparison from real values: a significant row marked, one of one run says no
    test is possible; the instability metrics are columns (one number, n members)."""
    data = [
        ComparisonRow(BASELINE, 3, values={"test_accuracy": [(0, 0.90), (1, 0.91), (2, 0.89)]}),
        ComparisonRow(L2, 3, values={"test_accuracy": [(0, 0.95), (1, 0.97), (2, 0.93)]}),
        ComparisonRow(ODD, 1, values={"test_accuracy": [(0, 0.5)]}),
    ]
    for row in data:
        row.metrics["test_accuracy"] = summarize([v for _, v in row.values["test_accuracy"]])
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
        [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", line)]
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
