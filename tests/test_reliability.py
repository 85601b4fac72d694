"""The README's reliability section: records in, Markdown out, the same text whatever the
order the records were written in, and the README untouched when a record is missing."""

from __future__ import annotations

from pathlib import Path

from tests import reliability
from tests.reliability import BEGIN, END, render, update_readme, write_record

FAULTS = ["tests/faults/test_a.py::test_worker_killed", "tests/faults/test_b.py::test_redis"]
NEEDED = {"inputs": ["embedded", "cluster"], "load": ["embedded"]}
RECORDS = {
    "test_worker_killed": {
        "test": FAULTS[0],
        "fault": "Worker SIGKILL mid-training",
        "outcome": "job resumed | from its checkpoint",
        "recover_s": 12.34,
    },
    "test_redis": {
        "test": FAULTS[1],
        "fault": "Redis killed",
        "outcome": "messages re-sent",
        "recover_s": None,
    },
    "inputs-cluster": {
        "kind": "inputs",
        "store": "cluster",
        "operations": 20,
        "examples": 4321,
        "server_errors": 0,
    },
    "inputs-embedded": {
        "kind": "inputs",
        "store": "embedded",
        "operations": 20,
        "examples": 4000,
        "server_errors": 0,
    },
    "load-embedded": {
        "kind": "load",
        "store": "embedded",
        "experiments": 10000,
        "jobs": 40000,
        "fill_s": 9.0,
        "reads": {
            "/api/v1/queue": {"p50_ms": 30.2, "p95_ms": 41.7, "requests": 20},
            "/api/v1/experiments?limit=50": {"p50_ms": 12.0, "p95_ms": 15.0, "requests": 20},
        },
    },
}
README = f"# Title\n\n## Reliability\n\nWords.\n\n{BEGIN}\nold\n{END}\n\n## Layout\n"


def test_records_make_a_table_in_a_stable_order(tmp_path: Path) -> None:
    forward, backward = tmp_path / "forward", tmp_path / "backward"
    for name, record in RECORDS.items():
        write_record(forward, name, record)
    for name, record in reversed(list(RECORDS.items())):
        write_record(backward, name, record)
    text = render(reliability.load_records(forward))
    assert text == render(reliability.load_records(backward))
    lines = text.splitlines()
    faults = [line for line in lines if line.startswith("| Redis") or line.startswith("| Worker")]
    assert faults == [  # by fault, a pipe in a cell escaped, no time shown as a dash
        "| Redis killed | messages re-sent | — |",
        "| Worker SIGKILL mid-training | job resumed \\| from its checkpoint | 12.3 s |",
    ]
    assert "| PostgreSQL (cluster) | 20 | 4,321 | 0 |" in lines
    assert "| SQLite (embedded) | 20 | 4,000 | 0 |" in lines
    assert lines.index("| PostgreSQL (cluster) | 20 | 4,321 | 0 |") < lines.index(
        "| SQLite (embedded) | 20 | 4,000 | 0 |"
    )
    assert (
        "| SQLite (embedded) | 10,000 (40,000) | 9.0 s | `GET /api/v1/experiments?limit=50` "
        "| 12 ms | 15 ms |"
    ) in lines
    assert (
        "| SQLite (embedded) | 10,000 (40,000) | 9.0 s | `GET /api/v1/queue` | 30 ms | 42 ms |"
        in (lines)
    )


def test_the_readme_section_is_replaced_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    for name, record in RECORDS.items():
        write_record(tmp_path / "records", name, record)
    assert update_readme(readme, tmp_path / "records", FAULTS, NEEDED) == []
    text = readme.read_text()
    section = render(reliability.load_records(tmp_path / "records"))
    assert text == README.replace("old\n", section)
    assert update_readme(readme, tmp_path / "records", FAULTS, NEEDED) == []
    assert readme.read_text() == text  # the same records: the same README


def test_a_missing_record_leaves_the_readme_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    for name, record in RECORDS.items():
        if name not in ("test_redis", "inputs-cluster"):
            write_record(tmp_path / "records", name, record)
    absent = update_readme(readme, tmp_path / "records", FAULTS, NEEDED)
    assert absent == [f"fault record of {FAULTS[1]}", "inputs record for cluster"]
    assert readme.read_text() == README
    assert update_readme(readme, tmp_path / "nothing", FAULTS, NEEDED) != []
    assert readme.read_text() == README


def test_only_a_full_run_with_every_fault_test_passing_rebuilds() -> None:
    files = ["tests/faults/test_a.py", "tests/api/test_fuzz.py", "tests/api/test_load.py"]
    required = ["tests/api/test_fuzz.py", "tests/api/test_load.py"]
    passed = {FAULTS[0]: True, FAULTS[1]: True}
    assert reliability.blockers(passed, files, required, True) == []
    assert reliability.blockers({FAULTS[0]: True, FAULTS[1]: False}, files, required, True) == [
        f"{FAULTS[1]} passed"
    ]
    assert reliability.blockers({}, files[1:], required, True) is None  # no fault test run
    assert reliability.blockers(passed, files[:2], required, True) is None  # no load test
    assert reliability.blockers(passed, files, required, False) is None  # -k picked some
