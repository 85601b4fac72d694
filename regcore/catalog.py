"""The catalog: every registered component with its summary and its params' JSON schema.

Regularizers also say whether the seeds of a spec using them may train stacked
(``regcore.stacked``): ``stacking: {stackable, note}``, from the class's ``stackable``
and ``stack_note``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from regcore.registries import ANALYSES, ATTACKS, DATASETS, MODELS, REGULARIZERS
from regcore.registry import Entry, Registry

CATALOG: dict[str, Registry] = {
    "datasets": DATASETS,
    "models": MODELS,
    "regularizers": REGULARIZERS,
    "analyses": ANALYSES,
    "attacks": ATTACKS,
}


def _stacking(entry: Entry[Any]) -> dict[str, Any]:
    target = entry.target
    return {
        "stacking": {
            "stackable": bool(getattr(target, "stackable", True)),
            "note": str(getattr(target, "stack_note", "")),
        }
    }


EXTRAS: dict[str, Callable[[Entry[Any]], dict[str, Any]]] = {"regularizers": _stacking}
"""What a kind's entries show beyond name, summary and params."""


def build_catalog() -> dict[str, list[dict[str, Any]]]:
    return {
        kind: [
            {
                "name": e.name,
                "summary": e.summary,
                "params": e.params.model_json_schema(),
                **(EXTRAS[kind](e) if kind in EXTRAS else {}),
            }
            for e in registry
        ]
        for kind, registry in CATALOG.items()
    }
