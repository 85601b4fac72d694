"""Every number a spec holds is finite and within a stated range: the spec's own sections
and every registered component's params, read from YAML as from JSON."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from regcore.catalog import CATALOG
from regcore.registry import MAX_SEED
from regcore.spec import ExperimentSpec, ResourcesSpec, TrainingSpec

SPEC: dict[str, Any] = {"dataset": {"name": "digits"}, "model": {"name": "mlp"}}


def locs(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[Any, ...]]:
    return [tuple(error["loc"]) for error in exc.value.errors()]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e400"])
def test_yaml_non_finite_numbers_are_refused_with_the_path(value: str) -> None:
    text = f"dataset: digits\nmodel: mlp\ntraining: {{weight_decay: {value}}}\n"
    with pytest.raises(ValidationError) as exc:
        ExperimentSpec.from_text(text)
    assert locs(exc) == [("training", "weight_decay")]


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("training", "seed", MAX_SEED + 1),
        ("training", "epochs", 10**6),
        ("training", "batch_size", 2**21),
        ("training", "lr", 1e16),
        ("training", "betas", [0.9, 1.5]),
        ("resources", "time_limit_minutes", 10**7),
        ("resources", "memory_gb", 1e9),
    ],
)
def test_out_of_range_spec_numbers_are_refused(section: str, field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        ExperimentSpec.model_validate({**SPEC, section: {field: value}})
    assert locs(exc)[0][:2] == (section, field)


def test_the_largest_seed_and_a_diverging_learning_rate_are_accepted() -> None:
    spec = ExperimentSpec.model_validate({**SPEC, "training": {"seed": MAX_SEED, "lr": 1e12}})
    assert (spec.training.seed, spec.training.lr) == (MAX_SEED, 1e12)


def test_lists_have_a_ceiling() -> None:
    with pytest.raises(ValidationError) as exc:
        ExperimentSpec.model_validate({**SPEC, "analyses": ["plots"] * 65})
    assert locs(exc) == [("analyses",)]


ENTRIES = [(kind, entry) for kind, registry in CATALOG.items() for entry in registry]


@pytest.mark.parametrize(
    ("kind", "entry"), ENTRIES, ids=[f"{kind}-{entry.name}" for kind, entry in ENTRIES]
)
def test_every_component_refuses_non_finite_and_huge_numbers(kind: str, entry: Any) -> None:
    """Each numeric param: NaN, infinity and 1e300 are refused naming the param; its
    default still validates."""
    params: type[BaseModel] = entry.params
    entry.params.model_validate({})
    for name in params.model_fields:
        schema = params.model_json_schema()["properties"][name]
        options = schema.get("anyOf", [schema])
        types = {option.get("type") for option in options}
        if "number" in types or "integer" in types:
            for bad in (math.nan, math.inf, 1e300):
                with pytest.raises(ValidationError) as exc:
                    params.model_validate({name: bad})
                assert (name,) in [loc[:1] for loc in locs(exc)], (name, bad)


def test_grad_clip_takes_inf_as_text() -> None:
    from regcore.registries import REGULARIZERS

    params = REGULARIZERS.get("grad_clip").params
    assert params.model_validate({"norm_type": "inf"}).norm_type == "inf"  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        params.model_validate({"norm_type": math.inf})


def test_sections_are_finite_by_config() -> None:
    for model in (TrainingSpec, ResourcesSpec):
        assert model.model_config.get("allow_inf_nan") is False
