"""Terminal tables shared by local runs and remote submissions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

TABLE_METRICS = ("test_accuracy", "test_loss", "train_accuracy", "val_accuracy", "train_seconds")


def comparison_table(results: list[tuple[str, Mapping[str, Any]]]) -> Table:
    from regcore.compare import compare

    rows = compare(results, TABLE_METRICS)
    table = Table(title="regbench results (mean ± std over seeds)")
    table.add_column("configuration")
    table.add_column("n", justify="right")
    for metric in TABLE_METRICS:
        table.add_column(metric.replace("_", " "), justify="right")
    for row in rows:
        cells = [str(row.metrics[m]) if m in row.metrics else "-" for m in TABLE_METRICS]
        table.add_row(row.configuration, str(row.n), *cells)
    return table
