"""Grids: a base spec and lists of values at dotted paths, expanded as a cartesian product.

    base: {dataset: {name: digits}, model: {name: lenet}, ...}
    grid:
      regularizers: [[], [{name: l2, weight: 0.0005}]]
      training.seed: [0, 1, 2]

gives six specs. A path walks mappings by key and lists by integer index
(``regularizers.0.weight``); the last key may be new. Pure data: no torch, no I/O.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SEED_PATH = "training.seed"


class GridError(ValueError):
    """A grid that cannot be expanded (bad path, empty list of values, not a mapping);
    ``path``: the grid entry at fault, when one is."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class GridPoint:
    spec: dict[str, Any]  # the base with this point's values written in
    values: dict[str, Any]  # path -> value chosen at this point

    @property
    def configuration(self) -> str:
        """The point's label without the seed: runs that differ only by seed share it."""
        return describe({k: v for k, v in self.values.items() if k != SEED_PATH})


def is_grid(document: Mapping[str, Any]) -> bool:
    return "base" in document and "grid" in document


def expand(base: Mapping[str, Any], grid: Mapping[str, Any]) -> list[GridPoint]:
    if not isinstance(base, Mapping):
        raise GridError("grid file: 'base' must be a mapping (a spec)")
    if not isinstance(grid, Mapping):
        raise GridError("grid file: 'grid' must map dotted paths to lists of values")
    for path, values in grid.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"grid.{path}: expected a non-empty list of values")
    paths = list(grid)
    points = []
    for combination in itertools.product(*(grid[path] for path in paths)):
        spec = copy.deepcopy(dict(base))
        for path, value in zip(paths, combination, strict=True):
            set_path(spec, path, copy.deepcopy(value))
        points.append(GridPoint(spec, dict(zip(paths, combination, strict=True))))
    return points


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node: Any = document
    for depth, key in enumerate(keys[:-1]):
        following = keys[depth + 1]
        if isinstance(node, dict) and key not in node and following.lstrip("-").isdigit():
            # Else a dict {"0": ...} would be made where a list was meant.
            where = ".".join(keys[: depth + 1])
            raise GridError(
                f"grid.{path}: the base spec has no list at {where!r} to index with "
                f"{following}; write the list in the base, or give the whole {where!r} as "
                "the grid's values",
                path,
            )
        node = _child(node, key, path)
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, path)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise GridError(f"grid.{path}: cannot set {last!r} inside a {type(node).__name__}")


def _child(node: Any, key: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, path)]
    if isinstance(node, dict):
        return node.setdefault(key, {})
    raise GridError(f"grid.{path}: {key!r} is inside a {type(node).__name__}, not a mapping")


def _index(node: list[Any], key: str, path: str) -> int:
    if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
        raise GridError(f"grid.{path}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def describe(values: Mapping[str, Any]) -> str:
    """A short readable label: ``regularizers=l2(weight=0.0005)``, ``lr=0.1``."""
    if not values:
        return "base"
    return ", ".join(f"{path.split('.')[-1]}={_short(value)}" for path, value in values.items())


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_short(item) for item in value) if value else "none"
    if isinstance(value, Mapping) and ("name" in value or "kind" in value):
        key = "name" if "name" in value else "kind"
        args = ",".join(f"{k}={_short(v)}" for k, v in value.items() if k != key)
        return f"{value[key]}({args})" if args else str(value[key])
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return str(value)
