"""Terminal rendering of the server's JSON: results tables, sweep and queue status.

Pure functions from the shapes of the HTTP contract (``/sweeps/{id}/results``,
``/sweeps/{id}``, ``/queue``) to rich renderables or text. No regcore import: the client
stays HTTP only, and ``regbench run`` (local) reuses ``comparison_table`` by putting its
runs into the same results shape the server sends.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from rich.cells import cell_len
from rich.columns import Columns
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text

# The local `regbench run` table (the server picks its own metrics for sweeps).
TABLE_METRICS = ("test_accuracy", "test_loss", "train_accuracy", "val_accuracy", "train_seconds")
STATES = ("succeeded", "failed", "cancelled", "running", "queued")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
STATE_STYLES = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "queued": "dim",
}
BAR_WIDTH = 24
MISSING = "–"

SHORT_TITLES = {
    "test_accuracy": "test acc",
    "test_loss": "test loss",
    "train_accuracy": "train acc",
    "train_loss": "train loss",
    "val_accuracy": "val acc",
    "val_loss": "val loss",
    "train_seconds": "train s",
    "calibration/ece": "ECE",
    "calibration/mce": "MCE",
    "calibration/nll": "NLL",
    "instability/churn": "churn",
    "instability/label_entropy": "label entropy",
    "instability/majority_agreement": "majority agr.",
    "instability/all_agree": "all agree",
}
NOISE_TITLES = {"gaussian_l2": "gauss L2", "uniform_linf": "unif Linf"}  # noise/<kind>/...
ATTACK_ACCURACY = re.compile(r"acc_eps(?P<eps>[^_]+)(?:_steps(?P<steps>\d+))?")


# --------------------------------------------------------------------------- metric titles


def short_metric(name: str) -> str:
    """A column title that fits: ``attack/pgd_linf/acc_eps0.1`` -> ``pgd_linf ε=0.1``,
    ``noise/gaussian_l2/acc_eps2`` -> ``gauss L2 noise ε=2``,
    ``boundary/w40/tv_iso_mean`` -> ``TV w40``, ``geometry/curvature_mean`` -> ``curvature``."""
    if name in SHORT_TITLES:
        return SHORT_TITLES[name]
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "attack":
        _, attack, statistic = parts
        if statistic == "clean_acc":
            return f"{attack} clean"
        if match := ATTACK_ACCURACY.fullmatch(statistic):
            steps = f" {match['steps']} steps" if match["steps"] else ""
            return f"{attack} ε={match['eps']}{steps}"
    if len(parts) == 3 and parts[0] == "noise" and (match := ATTACK_ACCURACY.fullmatch(parts[2])):
        return f"{NOISE_TITLES.get(parts[1], parts[1])} noise ε={match['eps']}"
    if len(parts) == 3 and parts[0] == "boundary":
        _, width, statistic = parts
        if statistic == "tv_iso_mean":
            return f"TV {width}"
        return f"{statistic.removesuffix('_mean').replace('_', ' ')} {width}"
    if len(parts) == 2 and parts[0] in ("geometry", "calibration"):
        return parts[1].removesuffix("_mean").replace("_", " ")
    return name.replace("_", " ")


def column_titles(metrics: Sequence[str]) -> list[str]:
    """Short titles, falling back to the full name where two short ones would collide."""
    short = [short_metric(name) for name in metrics]
    return [s if short.count(s) == 1 else name for s, name in zip(short, metrics, strict=True)]


def select_metrics(metrics: Sequence[str], patterns: Sequence[str] = ()) -> list[str]:
    """Metrics matching any pattern (all when none): a glob (``attack/*``) matches the whole
    name, a plain word (``pgd``) any part of it."""
    if not patterns:
        return list(metrics)
    return [name for name in metrics if any(_matches(name, p) for p in patterns)]


def _matches(name: str, pattern: str) -> bool:
    if any(char in pattern for char in "*?["):
        return fnmatchcase(name, pattern)
    return pattern in name


# --------------------------------------------------------------------------- numbers


def _decimals(value: float) -> int:
    magnitude = abs(value)
    return 1 if magnitude >= 100 else 2 if magnitude >= 10 else 4


def format_summary(summary: Mapping[str, Any] | None, row_n: int | None = None) -> str:
    """``{"mean", "std", "n"}`` -> ``0.9123 ± 0.0042``; only the mean when n is 1 (no spread
    is known), ``–`` when no run has the metric, ``(n=2)`` when fewer runs than the row's."""
    if not summary or not summary.get("n") or not _finite(summary.get("mean")):
        return MISSING
    mean, std, n = float(summary["mean"]), summary.get("std"), int(summary["n"])
    places = _decimals(mean)
    text = f"{mean:.{places}f}"
    if n > 1 and _finite(std):
        text += f" ± {float(std):.{places}f}"
    if row_n is not None and n != row_n:
        text += f" (n={n})"
    return text


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _runs_cell(row: Mapping[str, Any]) -> str:
    """Succeeded runs; ``2/3`` when some of the configuration's experiments did not succeed."""
    succeeded, experiments = int(row.get("succeeded", 0)), int(row.get("experiments", 0))
    return str(succeeded) if succeeded == experiments else f"{succeeded}/{experiments}"


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def format_size(size: int | None) -> str:
    if size is None:
        return ""
    value, unit = float(size), "B"
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


# --------------------------------------------------------------------------- results


def results_table(
    results: Mapping[str, Any], patterns: Sequence[str] = (), title: str | None = None
) -> Table:
    """GET /sweeps/{id}/results -> configuration, n, then each metric as mean ± std."""
    metrics = select_metrics(results.get("metrics", []), patterns)
    if title is None:
        sweep = results.get("sweep_id")
        title = f"sweep {sweep}: mean ± std over seeds" if sweep else "mean ± std over seeds"
    table = Table(title=title, title_justify="left")
    table.add_column("configuration")
    table.add_column("n", justify="right")
    for column in column_titles(metrics):
        table.add_column(Text(column), justify="right")
    for row in results.get("rows", []):
        row_n = int(row.get("succeeded", 0))
        cells = [format_summary(row.get("metrics", {}).get(m), row_n) for m in metrics]
        table.add_row(*(Text(c) for c in (str(row["configuration"]), _runs_cell(row), *cells)))
    return table


def results_markdown(results: Mapping[str, Any], patterns: Sequence[str] = ()) -> str:
    """The same table as GitHub markdown (for a README, an issue or a paper's notes)."""
    metrics = select_metrics(results.get("metrics", []), patterns)
    header = ["configuration", "n", *column_titles(metrics)]
    lines = [_markdown_row(header), _markdown_row([":--", "--:", *("--:" for _ in metrics)])]
    for row in results.get("rows", []):
        row_n = int(row.get("succeeded", 0))
        cells = [format_summary(row.get("metrics", {}).get(m), row_n) for m in metrics]
        lines.append(_markdown_row([str(row["configuration"]), _runs_cell(row), *cells]))
    return "\n".join(lines) + "\n"


def _markdown_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


# --------------------------------------------------------------------------- vs baseline

SIGNIFICANT = "*"  # marks a difference whose Holm-corrected p is below 0.05
NOT_SIGNIFICANT = "n.s."


def format_difference(difference: Mapping[str, Any] | None) -> str:
    """A row's ``versus_baseline`` entry -> ``+0.0600 [+0.0100, +0.1100] p=0.012 *``: the
    difference of means, its 95% CI and the Holm-corrected p, ``*`` when significant and
    ``n.s.`` when not; ``+0.0600 (n=1: no test possible)`` when no test could be made."""
    if not difference or not _finite(difference.get("diff")):
        note = (difference or {}).get("note")
        return f"{MISSING} ({note})" if note else MISSING
    diff = float(difference["diff"])
    places = _decimals(diff)
    text = f"{diff:+.{places}f}"
    p_holm = difference.get("p_holm")
    if not _finite(p_holm):
        return f"{text} ({difference.get('note') or 'no test'})"
    low, high = difference.get("ci_low"), difference.get("ci_high")
    if _finite(low) and _finite(high):
        text += f" [{float(low):+.{places}f}, {float(high):+.{places}f}]"
    marker = SIGNIFICANT if difference.get("significant") else NOT_SIGNIFICANT
    return f"{text} p={float(p_holm):.2g} {marker}"


def compared_metrics(results: Mapping[str, Any], patterns: Sequence[str] = ()) -> list[str]:
    """The selected metrics some row is compared on (never a per-configuration number)."""
    rows = results.get("rows", [])
    compared = {name for row in rows for name in row.get("versus_baseline") or {}}
    return [
        name for name in select_metrics(results.get("metrics", []), patterns) if name in compared
    ]


def baseline_table(results: Mapping[str, Any], patterns: Sequence[str] = ()) -> Table | None:
    """Each configuration against the baseline row, per metric: difference of means with
    its 95% CI, Holm-corrected p, significance; None when nothing was compared."""
    metrics = compared_metrics(results, patterns)
    if not metrics:
        return None
    baseline = results.get("baseline")
    title = (
        f"vs baseline {baseline}: difference of means [95% CI], Holm-corrected p; "
        f"{SIGNIFICANT} p < 0.05, {NOT_SIGNIFICANT} not significant"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("configuration")
    table.add_column("test")
    for column in column_titles(metrics):
        table.add_column(Text(column), justify="right")
    for row in results.get("rows", []):
        table.add_row(*(Text(c) for c in _baseline_cells(row, metrics, baseline)))
    return table


def baseline_markdown(results: Mapping[str, Any], patterns: Sequence[str] = ()) -> str:
    """The same comparison as GitHub markdown ("" when nothing was compared)."""
    metrics = compared_metrics(results, patterns)
    if not metrics:
        return ""
    header = ["configuration", "test", *column_titles(metrics)]
    lines = [_markdown_row(header), _markdown_row([":--", ":--", *("--:" for _ in metrics)])]
    for row in results.get("rows", []):
        lines.append(_markdown_row(_baseline_cells(row, metrics, results.get("baseline"))))
    return "\n".join(lines) + "\n"


def _baseline_cells(row: Mapping[str, Any], metrics: Sequence[str], baseline: Any) -> list[str]:
    versus = row.get("versus_baseline") or {}
    if row["configuration"] == baseline:
        return [str(row["configuration"]), "baseline", *("" for _ in metrics)]
    tests = sorted({str(d.get("test")) for d in versus.values() if d.get("test")})
    cells = [format_difference(versus.get(name)) for name in metrics]
    return [str(row["configuration"]), "/".join(tests) or MISSING, *cells]


# --------------------------------------------------------------------------- narrow terminals

Column = tuple[str, list[str], JustifyMethod]  # (title, one cell per row, justify)


def results_view(
    results: Mapping[str, Any],
    patterns: Sequence[str] = (),
    width: int | None = None,
    title: str | None = None,
) -> RenderableType:
    """The results table, then the comparison with the baseline, fitted to ``width``
    columns. As they are when they fit (or ``width`` is None); else the rows are numbered
    with a legend of the full configurations, the metric columns are split into blocks
    that fit, side by side with the row numbers, and a legend names each column's metric.
    Nothing is cut: a researcher reads every configuration and every digit."""
    tables: list[RenderableType] = [results_table(results, patterns, title)]
    if (compared := baseline_table(results, patterns)) is not None:
        tables.append(compared)
    if width is None or all(_natural_width(table) <= width for table in tables):
        return Group(*tables)
    rows = results.get("rows", [])
    numbers = [str(number) for number in range(1, len(rows) + 1)]
    metrics = select_metrics(results.get("metrics", []), patterns)
    titles = column_titles(metrics)
    if title is None:
        sweep = results.get("sweep_id")
        title = f"sweep {sweep}: mean ± std over seeds" if sweep else "mean ± std over seeds"
    parts: list[RenderableType] = [_configuration_legend(rows)]
    summaries = [
        (
            column,
            [format_summary(r.get("metrics", {}).get(m), int(r.get("succeeded", 0))) for r in rows],
            "right",
        )
        for column, m in zip(titles, metrics, strict=True)
    ]
    first: list[Column] = [("#", numbers, "right"), ("n", [_runs_cell(r) for r in rows], "right")]
    parts += _blocks(title, first, [("#", numbers, "right")], summaries, width)
    compared_names = compared_metrics(results, patterns)
    if compared_names:
        baseline = results.get("baseline")
        differences = [
            (
                titles[metrics.index(name)],
                [_difference_lines(r, name, baseline) for r in rows],
                "right",
            )
            for name in compared_names
        ]
        tests = [_baseline_cells(r, [], baseline)[1] for r in rows]
        fixed: list[Column] = [("#", numbers, "right"), ("test", tests, "left")]
        baseline_title = (
            f"vs baseline {baseline}: difference of means, Holm-corrected p "
            f"({SIGNIFICANT} p < 0.05, {NOT_SIGNIFICANT} not significant), [95% CI] below"
        )
        parts += _blocks(baseline_title, fixed, fixed, differences, width)
    parts.append(_metric_legend(metrics, titles))
    return Group(*parts)


def _natural_width(table: Table) -> int:
    """The columns a table takes when nothing limits it (its title wraps, so not counted)."""
    return Console(width=100_000).measure(table).maximum


def _column_width(column: Column) -> int:
    title, cells, _ = column
    return max(cell_len(line) for text in (title, *cells) for line in text.splitlines() or [""])


def _blocks(
    title: str, first: list[Column], rest: list[Column], columns: list[Column], width: int
) -> list[RenderableType]:
    """Tables of the row-identifying ``first`` (then ``rest``) columns and as many of
    ``columns`` as fit in ``width`` (at least one: a lone wide column then wraps), as
    evenly split as the fewest blocks allow; each under its title line."""

    def pack(most: int) -> list[list[Column]]:
        blocks: list[list[Column]] = []
        block = list(first)
        for column in columns:
            fixed = rest if blocks else first
            full = len(block) - len(fixed) >= most
            if len(block) > len(fixed) and (full or _table_width([*block, column]) > width):
                blocks.append(block)
                block = list(rest)
            block.append(column)
        blocks.append(block)
        return blocks

    blocks = pack(len(columns))
    even = pack(math.ceil(len(columns) / len(blocks)))
    blocks = even if len(even) == len(blocks) else blocks
    parts: list[RenderableType] = []
    for number, block in enumerate(blocks):
        parts.append(Text(title if number == 0 else f"{title.split(':')[0]} (continued)"))
        table = Table()
        for column_title, _, justify in block:
            table.add_column(Text(column_title), justify=justify, overflow="fold")
        for index in range(len(block[0][1])):
            table.add_row(*(Text(cells[index]) for _, cells, _ in block))
        parts.append(table)
    return parts


def _table_width(block: list[Column]) -> int:
    """Columns of a table of these columns in rich's default box (edges, padding 1)."""
    return sum(_column_width(c) + 3 for c in block) + 1


def _configuration_legend(rows: Sequence[Mapping[str, Any]]) -> RenderableType:
    legend = Table.grid(padding=(0, 1))
    legend.add_column(justify="right")
    legend.add_column(overflow="fold")
    legend.add_row(Text("#", "bold"), Text("configuration", "bold"))
    for number, row in enumerate(rows, start=1):
        legend.add_row(Text(str(number)), Text(str(row["configuration"])))
    return legend


def _metric_legend(metrics: Sequence[str], titles: Sequence[str]) -> RenderableType:
    """``title = metric`` for each abbreviated column, as many to a line as fit."""
    named = [Text(f"{t} = {m}") for t, m in zip(titles, metrics, strict=True) if t != m]
    if not named:
        return Text("")
    return Group(Text("columns", "bold"), Columns(named, padding=(0, 3)))


def _difference_lines(row: Mapping[str, Any], name: str, baseline: Any) -> str:
    """``format_difference`` over two lines (difference, p and mark; then the CI or the
    note) so that a column stays about as wide as a mean ± std."""
    if row["configuration"] == baseline:
        return ""
    difference = (row.get("versus_baseline") or {}).get(name)
    text = format_difference(difference)
    if (
        not difference
        or not _finite(difference.get("diff"))
        or not _finite(difference.get("p_holm"))
    ):
        head, _, note = text.partition(" (")
        return f"{head}\n({note}" if note else head
    head, bracket, rest = text.partition(" [")
    if not bracket:
        return text
    interval, _, p_and_mark = rest.partition("] ")
    return f"{head} {p_and_mark}\n[{interval}]"


def summarize_runs(
    runs: Iterable[tuple[str, Mapping[str, Any]]], metrics: Sequence[str]
) -> dict[str, Any]:
    """Local runs (configuration, final metrics) -> the server's results shape: one row per
    configuration in first-seen order, mean, sample std (0.0 for one run) and n per metric."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for configuration, run_metrics in runs:
        grouped.setdefault(configuration, []).append(run_metrics)
    rows = []
    for configuration, group in grouped.items():
        summaries = {}
        for name in metrics:
            values = [float(m[name]) for m in group if _finite(m.get(name))]
            summaries[name] = {
                "mean": statistics.fmean(values) if values else None,
                "std": (statistics.stdev(values) if len(values) > 1 else 0.0) if values else None,
                "n": len(values),
            }
        rows.append(
            {
                "configuration": configuration,
                "experiments": len(group),
                "succeeded": len(group),
                "metrics": summaries,
            }
        )
    return {"metrics": list(metrics), "rows": rows}


def comparison_table(runs: list[tuple[str, Mapping[str, Any]]]) -> Table:
    """The table of ``regbench run``: local runs grouped by configuration."""
    results = summarize_runs(runs, TABLE_METRICS)
    return results_table(results, title="regbench results (mean ± std over seeds)")


def metrics_table(metrics: Mapping[str, Any], title: str) -> Table:
    """One experiment's final metrics, one per line (numbers only)."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(metrics.items()):
        if _finite(value):
            number = float(value)
            table.add_row(Text(name), Text(f"{number:.{_decimals(number)}f}"))
    return table


# --------------------------------------------------------------------------- status pieces


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> Text:
    """A text bar with its percentage, readable without colour: ``█████░░░░░  50%``."""
    fraction = min(1.0, max(0.0, fraction or 0.0))
    filled = round(fraction * width)
    return Text.assemble(
        ("█" * filled, "green"), ("░" * (width - filled), "dim"), f" {fraction * 100:3.0f}%"
    )


def state_counts(counts: Mapping[str, int]) -> Text:
    """``3 succeeded · 1 running · 2 queued``: the non-zero states, in a fixed order."""
    present = [(state, counts.get(state, 0)) for state in STATES if counts.get(state, 0)]
    if not present:
        return Text("none")
    return Text(" · ").join(Text(f"{n} {state}", STATE_STYLES[state]) for state, n in present)


def eta_text(item: Mapping[str, Any]) -> str:
    """``ETA 3m05s``; ``ETA ~3m05s (estimate)`` while some job kinds were never timed;
    ``took 12m40s`` once finished; ``ETA unknown`` before the server knows anything."""
    if item.get("status") in FINISHED:
        took = _seconds_between(item.get("started_at"), item.get("finished_at"))
        return f"took {format_duration(took)}" if took is not None else "finished"
    eta = item.get("eta_s")
    if not _finite(eta):
        return "ETA unknown"
    if item.get("eta_estimated"):
        return f"ETA ~{format_duration(eta)} (estimate)"
    return f"ETA {format_duration(eta)}"


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def _status(status: str) -> Text:
    return Text(status, STATE_STYLES.get(status, ""))


def _cell(value: Any) -> Text:
    return Text(MISSING if value is None or value == "" else str(value))


def _age(seconds: Any) -> Text:
    return Text(f"{format_duration(seconds)} ago" if _finite(seconds) else MISSING)


# --------------------------------------------------------------------------- sweeps


def sweeps_table(sweeps: Sequence[Mapping[str, Any]]) -> Table:
    """GET /sweeps -> one line per sweep: bar, experiment counts by state, ETA."""
    table = Table(title="sweeps", title_justify="left")
    for column in ("sweep", "name", "status", "progress", "experiments", "ETA"):
        # The id is what the next command takes: never cut (32 hex digits).
        table.add_column(
            column, no_wrap=column == "sweep", min_width=32 if column == "sweep" else None
        )
    for sweep in sweeps:
        table.add_row(
            Text(sweep["id"]),
            _cell(sweep.get("name")),
            _status(sweep["status"]),
            progress_bar(sweep.get("progress", 0.0)),
            Text.assemble(state_counts(sweep["experiments"]), f" (of {sweep['size']})"),
            Text(eta_text(sweep)),
        )
    return table


def sweep_jobs_table(running: Sequence[Mapping[str, Any]]) -> Table:
    """A sweep's running jobs: which configuration and seed, how far, on what."""
    table = Table(title="running jobs", title_justify="left")
    for column in ("configuration", "seed", "kind", "progress", "message", "device", "worker"):
        # A long configuration folds rather than losing its end; a bar is never cut.
        table.add_column(
            column, justify="right" if column == "seed" else "left",
            overflow="fold" if column == "configuration" else "ellipsis",
            no_wrap=column == "progress",
        )  # fmt: skip
    for job in running:
        table.add_row(
            _cell(job.get("configuration")),
            _cell(job.get("seed")),
            _cell(job.get("kind")),
            progress_bar(job.get("progress", 0.0)),
            _cell(job.get("message")),
            _cell(job.get("device")),
            _cell(job.get("worker")),
        )
    return table


def report_text(report: Mapping[str, Any] | None) -> Text:
    status = (report or {}).get("status", "none")
    line = Text.assemble("report: ", _status_for_report(status))
    if status == "done" and report and report.get("files"):
        line.append(f" ({', '.join(report['files'])})")
    elif status == "failed" and report and report.get("error"):
        line.append(f": {report['error']}", "red")
    return line


def _status_for_report(status: str) -> Text:
    styles = {"done": "green", "failed": "red", "building": "cyan"}
    return Text(status, styles.get(status, "dim"))


def sweep_status(sweep: Mapping[str, Any]) -> RenderableType:
    """GET /sweeps/{id} -> bar, counts, ETA, report, and the running jobs."""
    name = f"  {sweep['name']}" if sweep.get("name") else ""
    parts: list[RenderableType] = [
        Text.assemble(
            ("sweep ", "bold"), (sweep["id"], "bold"), name, "  ", _status(sweep["status"])
        ),
        Text.assemble(progress_bar(sweep.get("progress", 0.0)), "  ", eta_text(sweep)),
        Text.assemble(
            f"experiments ({sweep['size']}): ", state_counts(sweep.get("experiments", {}))
        ),
        Text.assemble("jobs: ", state_counts(sweep.get("jobs", {}))),
        report_text(sweep.get("report")),
    ]
    running = sweep.get("running") or []
    parts.append(sweep_jobs_table(running) if running else Text("no running jobs"))
    return Group(*parts)


# --------------------------------------------------------------------------- queue


def queue_jobs_table(running: Sequence[Mapping[str, Any]]) -> Table:
    """GET /queue's running jobs: experiment, kind, bar, device and worker."""
    table = Table(title="running jobs", title_justify="left")
    columns = ("experiment", "kind", "progress", "message", "device", "worker", "heartbeat")
    for column in columns:
        table.add_column(column)
    for job in running:
        kind = job.get("kind", "")
        if job.get("cancel_requested"):
            kind += " (cancelling)"
        table.add_row(
            _cell(job.get("experiment_id")),
            _cell(kind),
            progress_bar(job.get("progress", 0.0)),
            _cell(job.get("message")),
            _cell(job.get("device")),
            _cell(job.get("worker")),
            _age(job.get("heartbeat_age_s")),
        )
    return table


def workers_table(workers: Sequence[Mapping[str, Any]]) -> Table:
    """GET /queue's live workers: their slots, and what runs in each busy slot."""
    table = Table(title="workers", title_justify="left")
    for column in ("worker", "host", "queues", "device", "slots", "running", "heartbeat"):
        table.add_column(column)
    for worker in workers:
        busy = worker.get("busy") or []
        slots = worker.get("slots", 1)
        running = "\n".join(
            f"{job['slot'].rsplit(':', 1)[-1]}: {job['kind']} {job['experiment_id'][:8]} "
            f"{job.get('progress', 0.0):.0%}"
            for job in busy
        )
        table.add_row(
            _cell(worker.get("name")),
            _cell(worker.get("hostname")),
            _cell(", ".join(worker.get("queues", []))),
            _cell(worker.get("device")),
            f"{len(busy)}/{slots} busy",
            running or "-",
            _age(worker.get("heartbeat_age_s")),
        )
    return table


def overview(sweeps: Mapping[str, Any], queue: Mapping[str, Any]) -> RenderableType:
    """GET /sweeps + GET /queue: every sweep, then the running jobs and the live workers."""
    listed = sweeps.get("data", [])
    parts: list[RenderableType] = []
    if listed:
        parts.append(sweeps_table(listed))
        if sweeps.get("count", len(listed)) > len(listed):
            parts.append(Text(f"(the newest {len(listed)} of {sweeps['count']} sweeps)", "dim"))
    else:
        parts.append(Text("no sweeps"))
    parts.append(Text.assemble("jobs: ", state_counts(queue.get("by_state", {}))))
    running, workers = queue.get("running", []), queue.get("workers", [])
    parts.append(queue_jobs_table(running) if running else Text("no running jobs"))
    parts.append(workers_table(workers) if workers else Text("no live workers"))
    return Group(*parts)


# --------------------------------------------------------------------------- ids


def experiments_table(
    experiments: Sequence[Mapping[str, Any]], order: Sequence[str] = (), title: str | None = None
) -> Table:
    """GET /experiments?sweep= -> the ids the next command needs: each experiment's id (for
    status, artifacts, cancel, retry) and its MLflow run. Rows by configuration (in
    ``order``, e.g. the results' rows, then by name), then seed."""
    rank = {configuration: number for number, configuration in enumerate(order)}

    def key(experiment: Mapping[str, Any]) -> tuple[int, str, int]:
        configuration = str(experiment.get("configuration") or experiment.get("name") or "")
        seed = experiment.get("seed")
        return rank.get(configuration, len(rank)), configuration, seed if seed is not None else -1

    table = Table(title=title or "experiments", title_justify="left")
    for column in ("experiment", "configuration", "seed", "status", "MLflow run"):
        # The ids are what this table is for: never cut (32 hex digits); a configuration folds.
        table.add_column(
            column, justify="right" if column == "seed" else "left",
            no_wrap=column != "configuration", overflow="fold",
            min_width=32 if column in ("experiment", "MLflow run") else None,
        )  # fmt: skip
    for experiment in sorted(experiments, key=key):
        table.add_row(
            Text(experiment["id"]),
            _cell(experiment.get("configuration") or experiment.get("name")),
            _cell(experiment.get("seed")),
            _status(experiment.get("status", "")),
            _cell(experiment.get("mlflow_run_id")),
        )
    return table


def mlflow_lines(experiment: Mapping[str, Any]) -> list[Text]:
    """``MLflow run <id>`` and ``MLflow UI <link>`` as far as the server knows them."""
    lines = []
    if run_id := experiment.get("mlflow_run_id"):
        lines.append(Text.assemble("MLflow run  ", (str(run_id), "bold")))
    if url := experiment.get("mlflow_url"):
        lines.append(Text.assemble("MLflow UI   ", (str(url), "link " + str(url))))
    return lines


def experiment_view(experiment: Mapping[str, Any]) -> RenderableType:
    """GET /experiments/{id} -> status, its jobs with progress, its MLflow run and link,
    its final metrics once it has some."""
    what = experiment.get("configuration") or experiment.get("name") or ""
    jobs = experiment.get("jobs") or []
    done = sum(1.0 if j["state"] in FINISHED else j.get("progress") or 0.0 for j in jobs)
    parts: list[RenderableType] = [
        Text.assemble(
            ("experiment ", "bold"),
            (experiment["id"], "bold"),
            f"  {what}  ",
            _status(experiment["status"]),
        ),
        Text.assemble(progress_bar(done / len(jobs) if jobs else 0.0)),
    ]
    if experiment.get("sweep_id"):
        parts.append(Text(f"sweep {experiment['sweep_id']}"))
    table = Table(title="jobs", title_justify="left")
    for column in ("job", "kind", "state", "progress", "device", "worker", "error"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            Text(job["id"]),
            _cell(job.get("kind")),
            _status(job["state"]),
            progress_bar(1.0 if job["state"] == "succeeded" else job.get("progress") or 0.0),
            _cell(job.get("device")),
            _cell(job.get("worker")),
            _cell(job.get("error")),
        )
    parts.append(table)
    parts += mlflow_lines(experiment)
    if experiment.get("metrics"):
        parts.append(metrics_table(experiment["metrics"], "final metrics"))
    return Group(*parts)
