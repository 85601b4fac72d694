"""The catalog: every registered component with its summary and its params' JSON schema."""

from __future__ import annotations

from typing import Any

from regcore.registries import ANALYSES, ATTACKS, DATASETS, MODELS, REGULARIZERS
from regcore.registry import Registry

CATALOG: dict[str, Registry] = {
    "datasets": DATASETS,
    "models": MODELS,
    "regularizers": REGULARIZERS,
    "analyses": ANALYSES,
    "attacks": ATTACKS,
}


def build_catalog() -> dict[str, list[dict[str, Any]]]:
    return {
        kind: [
            {"name": e.name, "summary": e.summary, "params": e.params.model_json_schema()}
            for e in registry
        ]
        for kind, registry in CATALOG.items()
    }
