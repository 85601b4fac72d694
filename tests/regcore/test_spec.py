from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from regcore.registries import REGULARIZERS
from regcore.spec import ExperimentSpec, SpecError, format_validation_error

BASE = {
    "name": "t",
    "dataset": {"name": "digits"},
    "model": {"name": "lenet", "activation": "tanh"},
    "regularizers": [{"name": "l2", "weight": 0.0005}],
    "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 3},
}


def errors_of(data: dict) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        ExperimentSpec.model_validate(data)
    return info.value.errors(include_url=False)


def test_valid_spec_fills_component_defaults() -> None:
    spec = ExperimentSpec.model_validate(BASE)
    l2 = spec.regularizers[0]
    assert l2.name == "l2"
    assert l2.params.weight == 0.0005
    assert l2.params.mode == "penalty"  # default written in
    assert spec.model_dump(mode="json")["regularizers"][0] == {
        "name": "l2",
        "weight": 0.0005,
        "mode": "penalty",
        "exclude_bias_and_norm": False,
    }


def test_round_trip_through_dump() -> None:
    spec = ExperimentSpec.model_validate(BASE)
    again = ExperimentSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec
    assert ExperimentSpec.from_text(spec.to_yaml()) == spec


def test_unknown_regularizer_names_field_and_choices() -> None:
    data = {**BASE, "regularizers": [{"name": "l3"}]}
    (error,) = errors_of(data)
    assert error["loc"] == ("regularizers", 0, "name")
    assert "unknown regularizer 'l3'" in error["msg"]
    for name in REGULARIZERS.names():
        assert name in error["msg"]


def test_negative_weight_names_the_field() -> None:
    data = {**BASE, "regularizers": [{"name": "l2", "weight": -1}]}
    (error,) = errors_of(data)
    assert error["loc"] == ("regularizers", 0, "weight")
    assert "greater than or equal to 0" in error["msg"]


def test_unknown_param_lists_valid_params() -> None:
    data = {**BASE, "regularizers": [{"name": "l2", "wieght": 0.1}]}
    (error,) = errors_of(data)
    assert error["loc"] == ("regularizers", 0, "wieght")
    assert "valid parameters: weight, mode, exclude_bias_and_norm" in error["msg"]


def test_unknown_dataset_model_and_missing_name() -> None:
    (error,) = errors_of({**BASE, "dataset": {"name": "imagenet"}})
    assert error["loc"] == ("dataset", "name") and "digits" in error["msg"]
    (error,) = errors_of({**BASE, "model": {"name": "vgg"}})
    assert error["loc"] == ("model", "name") and "lenet" in error["msg"]
    (error,) = errors_of({**BASE, "model": {"activation": "tanh"}})
    assert error["loc"] == ("model", "name") and "valid choices" in error["msg"]


def test_unknown_analysis_is_rejected_with_path() -> None:
    (error,) = errors_of({**BASE, "analyses": [{"kind": "astrology"}]})
    assert error["loc"] == ("analyses", 0, "kind")
    assert "unknown analysis 'astrology'" in error["msg"]


def test_training_errors() -> None:
    (error,) = errors_of({**BASE, "training": {"optimizer": "lbfgs"}})
    assert error["loc"] == ("training", "optimizer")
    assert "'sgd', 'adam' or 'adamw'" in error["msg"]
    (error,) = errors_of({**BASE, "training": {"schedule": {"kind": "step", "milestones": [2]}}})
    assert error["loc"][:3] == ("training", "schedule", "step")
    (error,) = errors_of({**BASE, "training": {"device": "tpu"}})
    assert error["loc"] == ("training", "device")
    (error,) = errors_of({**BASE, "trainig": {}})
    assert error["loc"] == ("trainig",) and error["type"] == "extra_forbidden"


def test_a_mistyped_field_error_lists_the_valid_names_and_the_closest() -> None:
    (error,) = errors_of({**BASE, "trainig": {}})
    assert error["msg"].startswith("unknown field 'trainig'; valid: name, description, dataset")
    assert error["msg"].endswith("did you mean 'training'?")
    # A nested model names its own fields; the other errors keep their messages.
    typo, bad_lr = sorted(
        errors_of({**BASE, "training": {"epoch": 3, "lr": -1}}), key=lambda e: e["type"]
    )
    assert typo["loc"] == ("training", "epoch") and typo["type"] == "extra_forbidden"
    assert "valid: epochs, batch_size, optimizer" in typo["msg"]
    assert typo["msg"].endswith("did you mean 'epochs'?")
    assert bad_lr["loc"] == ("training", "lr") and "greater than 0" in bad_lr["msg"]
    (error,) = errors_of({**BASE, "training": {"schedule": {"kind": "step", "gama": 0.5}}})
    assert "valid: kind, milestones, gamma; did you mean 'gamma'?" in error["msg"]
    (error,) = errors_of({**BASE, "regularizers": [{"name": "l2", "wieght": 1}]})
    assert error["msg"].endswith("valid parameters: weight, mode, exclude_bias_and_norm; "
                                 "did you mean 'weight'?")  # fmt: skip
    (error,) = errors_of({**BASE, "training": {"zzz": 1}})
    assert "did you mean" not in error["msg"]  # nothing close: no guess


def test_early_stopping_needs_a_validation_split() -> None:
    data = {
        **BASE,
        "dataset": {"name": "digits", "val_fraction": 0},
        "training": {"early_stopping": {"patience": 2}},
    }
    (error,) = errors_of(data)
    assert "val_fraction" in error["msg"]


def test_shorthand_component_name() -> None:
    spec = ExperimentSpec.model_validate({**BASE, "regularizers": ["confidence_penalty"]})
    assert spec.regularizers[0].params.beta == 0.1


def test_hash_is_stable_across_key_order_and_defaults() -> None:
    spec = ExperimentSpec.model_validate(BASE)
    reordered = json.loads(json.dumps(BASE))
    reordered = {key: reordered[key] for key in reversed(list(reordered))}
    reordered["training"] = dict(reversed(list(reordered["training"].items())))
    explicit = spec.model_dump(mode="json")  # every default written out
    assert ExperimentSpec.model_validate(reordered).spec_hash() == spec.spec_hash()
    assert ExperimentSpec.model_validate(explicit).spec_hash() == spec.spec_hash()
    assert len(spec.spec_hash()) == 64


def test_hash_ignores_labels_locations_and_resources_but_not_science() -> None:
    spec = ExperimentSpec.model_validate(BASE)
    same = {
        **BASE,
        "name": "other",
        "resources": {"queue": "gpu"},
        "training": {**BASE["training"], "device": "cuda:1", "eval_batch_size": 7},
    }
    assert ExperimentSpec.model_validate(same).spec_hash() == spec.spec_hash()
    different = {**BASE, "regularizers": [{"name": "l2", "weight": 0.001}]}
    assert ExperimentSpec.model_validate(different).spec_hash() != spec.spec_hash()
    seed = {**BASE, "training": {**BASE["training"], "seed": 4}}
    assert ExperimentSpec.model_validate(seed).spec_hash() != spec.spec_hash()


def test_load_yaml_and_json(tmp_path: Path) -> None:
    spec = ExperimentSpec.model_validate(BASE)
    (tmp_path / "s.json").write_text(json.dumps(BASE))
    (tmp_path / "s.yaml").write_text(spec.to_yaml())
    assert ExperimentSpec.from_file(tmp_path / "s.json") == spec
    assert ExperimentSpec.from_file(tmp_path / "s.yaml") == spec
    with pytest.raises(SpecError, match="cannot read"):
        ExperimentSpec.from_file(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="mapping"):
        ExperimentSpec.from_text("- a list")


def test_flat_params_and_error_formatting() -> None:
    spec = ExperimentSpec.model_validate(BASE)
    flat = spec.flat_params()
    assert flat["regularizers.0.name"] == "l2"
    assert flat["regularizers.0.weight"] == "0.0005"
    assert flat["training.lr"] == "0.05"
    with pytest.raises(ValidationError) as info:
        ExperimentSpec.model_validate({**BASE, "regularizers": [{"name": "l2", "weight": -1}]})
    assert format_validation_error(info.value).startswith("regularizers.0.weight: ")
