from __future__ import annotations

import pytest

from regcore.registries import ANALYSES, DATASETS, MODELS, REGULARIZERS
from regcore.registry import ComponentParams, Registry, UnknownComponentError


class EmptyParams(ComponentParams):
    pass


def test_register_and_get() -> None:
    registry: Registry = Registry("widget")

    @registry.register("a", params=EmptyParams)
    def make_a(params: EmptyParams) -> str:
        """Makes an a."""
        return "a"

    entry = registry.get("a")
    assert entry.target is make_a
    assert entry.params is EmptyParams
    assert entry.summary == "Makes an a."
    assert registry.build("a", {}) == "a"
    assert "a" in registry and len(registry) == 1


def test_duplicate_name_fails() -> None:
    registry: Registry = Registry("widget")
    registry.register("a", params=EmptyParams)(lambda p: p)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.register("a", params=EmptyParams)(lambda p: p)


def test_unknown_name_lists_valid_choices() -> None:
    registry: Registry = Registry("widget")
    for name in ("b", "a"):
        registry.register(name, params=EmptyParams)(lambda p: p)
    with pytest.raises(UnknownComponentError) as info:
        registry.get("c")
    assert str(info.value) == "unknown widget 'c'; valid choices: a, b"
    assert info.value.valid == ["a", "b"]


def test_params_model_is_required() -> None:
    registry: Registry = Registry("widget")
    with pytest.raises(TypeError, match="params model"):
        registry.register("a")(lambda p: p)


def test_params_reject_unknown_keys() -> None:
    class Params(ComponentParams):
        weight: float = 1.0

    with pytest.raises(ValueError, match="Extra inputs"):
        Params.model_validate({"wieght": 2.0})


@pytest.mark.parametrize("registry", [DATASETS, MODELS, REGULARIZERS])
def test_project_registries_load_their_packages(registry: Registry) -> None:
    assert len(registry) > 0
    for entry in registry:
        assert entry.summary, f"{registry.kind} {entry.name} needs a docstring"
        entry.params()  # every component has usable defaults


def test_analyses_registry_is_importable() -> None:
    ANALYSES.names()


def test_every_analysis_has_a_summary_defaults_and_a_kind_the_job_table_holds() -> None:
    from service.tables import Job  # an analysis job's kind is the analysis' name

    column = Job.__table__.c.kind.type.length
    for entry in ANALYSES:
        assert entry.summary, f"analysis {entry.name} needs a docstring"
        entry.params()  # every analysis has usable defaults
        assert len(entry.name) <= column, f"analysis kind {entry.name!r} > String({column})"
