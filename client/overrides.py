"""``--set PATH=VALUE``: change a spec (or a grid's base) from the command line.

    regbench run spec.yaml --set training.epochs=2 --set regularizers.0.weight=0.1

PATH is dotted; a part made of digits is a list index (``regularizers.0``). VALUE is
parsed as YAML (``2`` an int, ``0.1`` or ``1e-3`` a float, ``[1, 2]`` a list, ``{kind: cosine}`` a
mapping, ``"2"`` a string). On a grid file the override changes its ``base``; a PATH that
is one of the grid's axes (or lies inside one, ``regularizers.0.weight`` when the grid
varies ``regularizers``) is refused: the axis would replace the value at every point.

A key the file does not write is allowed when the spec has it (a default): ``keys_at``
says which keys a level has (from the validated spec for ``regbench run``, from the
server's OpenAPI schema for ``regbench submit``); an unknown key is an error naming the
path and the valid keys there. No regcore import: the client stays HTTP only.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

Part = str | int
# The keys a mapping at this path may have; None: not known (anything goes, the spec's
# validation decides).
KeysAt = Callable[[tuple[Part, ...]], set[str] | None]


# YAML 1.1 reads 1e-3 as a string (it wants 1.0e-3); on a command line it means a number.
EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class OverrideError(ValueError):
    """A --set that cannot apply; the message names the path and what is valid there."""


@dataclass(frozen=True)
class Override:
    text: str  # the path as written
    path: tuple[Part, ...]
    value: Any


def parse_override(text: str) -> Override:
    """``training.epochs=2`` -> Override(("training", "epochs"), 2)."""
    raw_path, sep, raw_value = text.partition("=")
    raw_path = raw_path.strip()
    if not sep or not raw_path:
        raise OverrideError(f"--set {text!r}: expected PATH=VALUE, such as training.epochs=2")
    parts = raw_path.split(".")
    if any(not part for part in parts):
        raise OverrideError(f"--set {text!r}: {raw_path!r} has an empty part")
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError as exc:
        raise OverrideError(f"--set {raw_path}: the value is not valid YAML: {exc}") from None
    if isinstance(value, str) and EXPONENT_FLOAT.fullmatch(raw_value.strip()):
        value = float(value)
    path = tuple(int(part) if part.isdigit() else part for part in parts)
    return Override(raw_path, path, value)


def apply_overrides(
    document: Mapping[str, Any],
    overrides: Sequence[str],
    keys_at: KeysAt | None = None,
    *,
    grid: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of ``document`` (a spec, or a grid's base when ``grid`` is given) with each
    override applied in turn; OverrideError on the first that cannot apply."""
    changed = copy.deepcopy(dict(document))
    for text in overrides:
        override = parse_override(text)
        if grid is not None:
            _refuse_axes(override, grid)
        _set(changed, override, keys_at or (lambda _: None))
    return changed


def apply_to_file(
    document: Mapping[str, Any], overrides: Sequence[str], keys_at: KeysAt | None = None
) -> dict[str, Any]:
    """A spec file, or a grid file ({base, grid}) whose base takes the overrides."""
    if not overrides:
        return dict(document)
    if "base" in document or "grid" in document:
        grid = document.get("grid")
        base = document.get("base")
        if not isinstance(base, Mapping) or not isinstance(grid, Mapping):
            raise OverrideError("--set on a grid file needs its base and grid mappings")
        return {**document, "base": apply_overrides(base, overrides, keys_at, grid=grid)}
    return apply_overrides(document, overrides, keys_at)


def _refuse_axes(override: Override, grid: Mapping[str, Any]) -> None:
    for axis, values in grid.items():
        if override.text == axis or override.text.startswith(f"{axis}."):
            raise OverrideError(
                f"--set {override.text}: {axis!r} is an axis of the grid (values {values!r}), "
                "which sets it at every point; change the grid's values instead"
            )


def _set(document: dict[str, Any], override: Override, keys_at: KeysAt) -> None:
    node: Any = document
    for depth, part in enumerate(override.path):
        here = override.path[:depth]
        where = ".".join(str(p) for p in here) or "the top level"
        last = depth == len(override.path) - 1
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise OverrideError(
                    f"--set {override.text}: {where} is a list of {len(node)} item(s); "
                    + (f"valid indices: 0 to {len(node) - 1}" if node else "it has none")
                )
            if last:
                node[part] = override.value
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise OverrideError(
                f"--set {override.text}: {where} is {node!r}, not a mapping or a list"
            )
        key = str(part)
        if key not in node:
            valid = keys_at(here)
            if valid is not None and key not in valid:
                keys = ", ".join(sorted(valid | set(node))) or "none"
                raise OverrideError(
                    f"--set {override.text}: {where} has no key {key!r}; valid keys there: {keys}"
                )
            if not last:
                node[key] = {}
        if last:
            node[key] = override.value
        node = node[key]


# --------------------------------------------------------------------------- known keys


def keys_from_document(full: Any) -> KeysAt:
    """Keys from a complete document: a spec validated and dumped with every default."""

    def keys_at(path: tuple[Part, ...]) -> set[str] | None:
        node = full
        for part in path:
            if isinstance(node, dict) and str(part) in node:
                node = node[str(part)]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                return None
        return set(node) if isinstance(node, dict) else None

    return keys_at


def keys_from_schema(schema: Mapping[str, Any], definitions: Mapping[str, Any]) -> KeysAt:
    """Keys from a JSON schema (the server's OpenAPI ``ExperimentSpec``); a level whose
    schema allows any key (a component's params) is not known."""

    def resolve(node: Any) -> list[Mapping[str, Any]]:
        """The object schemas ``node`` may be (``$ref`` followed, ``anyOf`` unfolded)."""
        if not isinstance(node, Mapping):
            return []
        if "$ref" in node:
            return resolve(definitions.get(str(node["$ref"]).rsplit("/", 1)[-1]))
        variants = node.get("anyOf") or node.get("oneOf") or node.get("allOf")
        if variants:
            return [found for variant in variants for found in resolve(variant)]
        return [node]

    def keys_at(path: tuple[Part, ...]) -> set[str] | None:
        nodes = resolve(schema)
        for part in path:
            if isinstance(part, int):
                nodes = [found for n in nodes for found in resolve(n.get("items"))]
            else:
                nodes = [
                    found for n in nodes for found in resolve((n.get("properties") or {}).get(part))
                ]
            if not nodes:
                return None
        objects = [n for n in nodes if "properties" in n]
        if not objects or any(n.get("additionalProperties", False) is not False for n in objects):
            return None
        return {key for n in objects for key in n["properties"]}

    return keys_at
