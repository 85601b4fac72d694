"""``python -m bench --quick``: the cheap sections run end to end and write a well-formed
results.json and results.md (figures are not checked, only their shape and finiteness)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.common import Spread, rotated
from bench.runner import DEFAULT_DATA_ROOT, SECTIONS, format_value, select

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = DEFAULT_DATA_ROOT
CHEAP = ["step_cost", "throughput", "attacks", "boundary"]


def run_bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--out", str(out), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.with_suffix(".md").read_text() in done.stdout
    return json.loads(out.read_text())


def finite_spread(value: dict[str, Any], positive: bool = True) -> bool:
    numbers = [value["median"], value["min"], value["max"]]
    return all(math.isfinite(v) and (v > 0 or not positive) for v in numbers)


@pytest.mark.skipif(
    not (DATA_ROOT / "MNIST" / "raw").is_dir(),
    reason=f"real MNIST is not under {DATA_ROOT} (set REGBENCH_DATA_ROOT)",
)
def test_quick_run_writes_every_cheap_section(tmp_path: Path) -> None:
    results = run_bench(tmp_path, "--only", ",".join(CHEAP), "--data-root", str(DATA_ROOT))

    assert results["quick"] is True
    assert {"cpu", "cores", "torch", "devices"} <= set(results["machine"])
    assert results["machine"]["devices"] == ["cpu"]
    assert list(results["sections"]) == CHEAP
    for name, entry in results["sections"].items():
        assert entry["status"] == "ok", (name, entry)
        assert entry["rows"] and entry["notes"] and entry["title"]

    step_cost = results["sections"]["step_cost"]["rows"]
    by_label = {row["configuration"]: row for row in step_cost}
    assert {"none", "dropout", "l2", "svb_hard", "spectral_norm"} <= set(by_label)
    assert by_label["none"]["ratio"]["median"] == 1.0
    for row in step_cost:
        assert row["model"] == "lenet" and row["device"] == "cpu" and row["data"] == "real MNIST"
        assert finite_spread(row["ratio"]) and finite_spread(row["step_ms"])
    assert by_label["l2"]["target"] == 1.10 and isinstance(by_label["l2"]["meets"], bool)

    for row in results["sections"]["throughput"]["rows"]:
        assert finite_spread(row["train_samples_per_s"])
        assert finite_spread(row["eval_samples_per_s"])
    attacks = results["sections"]["attacks"]["rows"]
    assert {row["attack"] for row in attacks} == {"FGSM", "PGD-2"}
    pgd = next(row for row in attacks if row["attack"] == "PGD-2")
    assert finite_spread(pgd["time_ratio_to_reference"])
    assert finite_spread(pgd["regcore_examples_per_s"])
    (boundary,) = results["sections"]["boundary"]["rows"]
    assert finite_spread(boundary["label_maps_points_per_s"])
    assert finite_spread(boundary["analysis_points_per_s"])

    table = (tmp_path / "results.md").read_text()
    for name in CHEAP:
        assert f"(`{name}`)" in table


def test_a_section_that_cannot_run_says_why(tmp_path: Path) -> None:
    results = run_bench(tmp_path, "--only", "step_cost", "--data-root", str(tmp_path / "none"))
    entry = results["sections"]["step_cost"]
    assert entry["status"] == "unavailable"
    assert "MNIST not found" in entry["reason"]
    assert "Not measured (unavailable): MNIST not found" in (tmp_path / "results.md").read_text()


def test_merge_replaces_only_the_sections_run_again(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "none")
    first = run_bench(tmp_path, "--only", "step_cost,boundary", "--data-root", nowhere)
    second = run_bench(tmp_path, "--only", "attacks,boundary", "--data-root", nowhere, "--merge")

    assert list(second["sections"]) == ["step_cost", "attacks", "boundary"]  # SECTIONS order
    assert second["date"] == first["date"]
    assert second["sections"]["step_cost"] == first["sections"]["step_cost"]
    assert "merged" not in second["sections"]["step_cost"]
    for name in ("attacks", "boundary"):
        assert second["sections"][name]["date"] >= first["date"]
        assert second["sections"][name]["status"] == "unavailable"
    table = (tmp_path / "results.md").read_text()
    assert table.count("Not measured (unavailable)") == 3
    assert table.count("Measured later:") == 2

    alone = run_bench(tmp_path, "--only", "attacks", "--data-root", nowhere)  # no --merge
    assert list(alone["sections"]) == ["attacks"]


def test_sections_are_selected_from_one_registry() -> None:
    names = [section.name for section in SECTIONS]
    assert len(names) == len(set(names))
    assert [s.name for s in select(None, quick=True)] == CHEAP
    assert [s.name for s in select("boundary,step_cost", quick=False)] == [
        "step_cost",
        "boundary",
    ]


def test_rounds_rotate_and_spreads_summarize() -> None:
    assert [rotated("abc", r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"],
    ]  # fmt: skip
    spread = Spread.of([3.0, 1.0, 2.0, 4.0, 5.0])
    assert (spread.median, spread.low, spread.high, spread.q1, spread.q3) == (3, 1, 5, 2, 4)
    assert format_value(spread.as_json()) == "3 [2-4]"
    assert format_value({"median": 3.0, "min": 1.0, "max": 5.0}) == "3 [1-5]"
