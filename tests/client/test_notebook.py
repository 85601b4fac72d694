"""The notebook client without a server's dependencies, and its progress bar off a
terminal. (Against a live stack: tests/e2e/test_notebook_client.py.)"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from client.notebook import TextBar, describe_state, load_document

ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = (
    "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "celery", "kombu",
    "redis", "mlflow", "torch", "torchvision", "regcore", "api", "worker",
    "pydantic_settings", "psycopg",
)  # fmt: skip

BLOCKED_IMPORT = f"""
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_PACKAGES!r}:
            raise ImportError(f"blocked for this test: {{name}}")
        return None

sys.meta_path.insert(0, Refuse())
from client.notebook import Regbench, TextBar
from client.remote import RegbenchClient
client = Regbench("http://127.0.0.1:9")
assert isinstance(client, RegbenchClient)
client.close()
loaded = sorted({{name.split(".")[0] for name in sys.modules}} & set({SERVER_PACKAGES!r}))
print("loaded:", loaded)
"""


def test_the_client_imports_without_the_server_packages() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded: []"


def test_the_block_does_refuse_a_server_package() -> None:
    """The finder above really refuses (else the test before proves nothing)."""
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT.replace("from client.notebook", "import mlflow\n#")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0 and "blocked for this test: mlflow" in done.stderr


def test_off_a_terminal_the_text_bar_prints_a_line_per_change_not_per_poll() -> None:
    stream = io.StringIO()
    bar = TextBar("sweep abc", stream)
    assert not bar.redraw
    polls = [
        (0.0, "queued"), (0.0, "queued"),
        (0.50, "running: 1 running  ETA 40s"), (0.51, "running: 1 running  ETA 39s"),
        (0.55, "running: 1 running  ETA 30s"),  # only the ETA and 5 %: no new line
        (1.0, "succeeded"),
    ]  # fmt: skip
    for fraction, text in polls:
        bar.update(fraction, text)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in stream.getvalue()
    assert lines[0].startswith("sweep abc:   0% ░") and lines[0].endswith("queued")
    assert lines[1].startswith("sweep abc:  50% ████████████░") and lines[1].endswith("40s")
    assert lines[2].startswith("sweep abc: 100% ████████████████████████  succeeded")


def test_on_a_terminal_or_notebook_the_text_bar_redraws_one_line() -> None:
    stream = io.StringIO()
    bar = TextBar("experiment e1", stream, redraw=True)
    bar.update(0.25, "running (train: epoch 1)")
    bar.update(1.0, "succeeded")
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    last = text.split("\r")[-1]
    assert last.startswith("experiment e1: 100%") and len(last.rstrip("\n")) >= len(
        "experiment e1:  25% " + "x" * 24 + "  running (train: epoch 1)"
    )  # padded over the longer line before


def test_states_become_a_fraction_and_a_line() -> None:
    sweep = {"status": "running", "progress": 0.46, "eta_s": 81,
             "experiments": {"succeeded": 1, "running": 5, "queued": 0}}  # fmt: skip
    assert describe_state("sweep", sweep) == (0.46, "running: 1 succeeded · 5 running  ETA 1m21s")
    experiment = {"status": "running", "jobs": [
        {"state": "succeeded", "kind": "train", "progress": 1.0},
        {"state": "running", "kind": "attack", "progress": 0.5, "message": "eps 0.1"},
    ]}  # fmt: skip
    assert describe_state("experiment", experiment) == (0.75, "running (attack: eps 0.1)")


def test_a_document_is_a_dict_or_a_yaml_file(tmp_path: Path) -> None:
    grid = {"base": {"dataset": {"name": "digits"}}, "grid": {"training.seed": [0, 1]}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert load_document(path) == grid == load_document(str(path)) == load_document(grid)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_document(tmp_path / "list.yaml")
    with pytest.raises(ValueError, match="cannot read"):
        load_document(tmp_path / "missing.yaml")
