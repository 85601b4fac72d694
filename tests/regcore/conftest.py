"""Fixtures of the regcore tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Figure]]:
    """Every matplotlib figure saved meanwhile, by file name (a buffer counts as
    ``figure<n>``): a test reads what a plot shows from its artists, which a closed
    figure keeps."""
    figures: dict[str, Figure] = {}
    original = Figure.savefig

    def recording(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        name = Path(fname).name if isinstance(fname, str | Path) else f"figure{len(figures)}"
        figures[name] = self
        original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    yield figures
