"""api.bodies.json_problems: the quick test (``json.dumps`` and a bracket count) never
passes a document the walk would refuse, and the walk names the path."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from api.bodies import json_problems


def nested(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    ("document", "loc", "kind"),
    [
        ({"a": [1.0, math.nan]}, ["body", "a", 1], "finite_number"),
        ({"a": {"b": -math.inf}}, ["body", "a", "b"], "finite_number"),
        ({"a": ["x\x00y"]}, ["body", "a", 0], "bad_text"),
        ({"a": "\udfff"}, ["body", "a"], "bad_text"),
        ({"k\ud800": 1}, ["body", "k\\ud800"], "bad_text"),  # the key, written readable
        ({"k\x00": 1}, ["body", "k\x00"], "bad_text"),
        (nested(33), None, "too_deep"),
        ({"s": "[" * 40}, [], None),  # brackets inside a string nest nothing
        ({"s": "a backslash and u0000: \\u0000"}, [], None),  # text, not a NUL
        ({"pair": "\U0001f600", "n": 1e308, "deep": nested(31)}, [], None),
    ],
)
def test_problems_and_their_paths(document: Any, loc: list[Any] | None, kind: str | None) -> None:
    problems = json_problems(document, 32)
    if kind is None:
        assert problems == []
        return
    [problem] = problems
    assert problem["type"] == kind
    if loc is not None:
        assert problem["loc"] == loc
    else:
        assert len(problem["loc"]) == 1 + 32
    json.dumps(problems, allow_nan=False).encode("utf-8")  # the 422 itself can be written


def test_the_depth_limit_counts_containers() -> None:
    assert json_problems(nested(32), 32) == []
    assert json_problems(nested(33), 32) != []
    assert json_problems([[[]]], 2) != [] and json_problems([[]], 2) == []
