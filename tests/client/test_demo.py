"""`make demo` (``client.demo``) prints its results as `regbench results` does: fitted to
the terminal, nothing cut. Its stack is stood in for by the contract's JSON shapes."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from client import demo
from client.remote import RegbenchClient
from tests.client.test_cli import (
    GRID_FILE,
    SUBMITTED,
    SWEEP_ID,
    FakeServer,
    digits_grid_results,
    finished_sweep,
)


class ServeProcess:
    """Stands in for the `regbench serve` process the demo starts and stops."""

    pid = 0

    def wait(self, timeout: float | None = None) -> int:
        return 0


def test_the_demo_table_fits_the_terminal_without_cutting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """At 120 columns the demo printed `regularizers=confidenc…` (the unfitted table)."""
    fake = FakeServer()
    fake["GET /whoami"] = {"name": "local", "admin": True}
    fake["POST /sweeps"] = SUBMITTED
    fake[f"GET /sweeps/{SWEEP_ID}"] = finished_sweep()
    answer = digits_grid_results()
    fake[f"GET /sweeps/{SWEEP_ID}/results"] = answer
    transport = httpx.MockTransport(fake.handle)
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID_FILE)
    monkeypatch.setattr(
        demo, "RegbenchClient", lambda url, token: RegbenchClient(url, token, transport=transport)
    )
    monkeypatch.setattr(demo.subprocess, "Popen", lambda *args, **kwargs: ServeProcess())
    monkeypatch.setattr(demo, "wait_until_up", lambda *args: None)
    monkeypatch.setattr(demo.os, "killpg", lambda *args: None)
    monkeypatch.setattr(sys, "argv", ["demo", str(grid), "--data-dir", str(tmp_path / "data")])
    monkeypatch.setenv("COLUMNS", "120")

    assert demo.main() == 0

    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 120, text
    assert "…" not in text, text
    flat = " ".join(text.split())
    for row in answer["rows"]:
        assert row["configuration"] in flat, row["configuration"]
    assert "baseline" in text  # the comparison, as `regbench results` prints it
