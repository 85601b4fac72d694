"""``--set PATH=VALUE``: parsing, applying to a spec and a grid's base, and the errors."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest

from client.overrides import (
    OverrideError,
    apply_overrides,
    apply_to_file,
    keys_from_document,
    keys_from_schema,
    parse_override,
)

SPEC: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"name": "lenet"},
    "regularizers": [{"name": "l2", "weight": 0.0005}],
    "training": {"epochs": 10},
}
# What `regbench run` knows: the spec validated, every default written.
FULL = {
    **SPEC,
    "name": "experiment",
    "training": {"epochs": 10, "lr": 0.1, "seed": 0, "early_stopping": None},
    "resources": {"queue": "auto"},
}


def test_values_are_yaml_and_digit_parts_are_indices() -> None:
    assert parse_override("training.epochs=2").value == 2
    assert parse_override("training.lr=1e-3").value == pytest.approx(0.001)
    assert parse_override("training.schedule={kind: cosine}").value == {"kind": "cosine"}
    assert parse_override("name='2'").value == "2"
    assert parse_override("regularizers.0.weight=0.1").path == ("regularizers", 0, "weight")
    assert parse_override("description=a=b").value == "a=b"  # the first = splits


@pytest.mark.parametrize("text", ["training.epochs", "=2", "training..epochs=2"])
def test_malformed_overrides_say_what_is_expected(text: str) -> None:
    with pytest.raises(OverrideError, match="--set"):
        parse_override(text)


def test_overrides_change_a_copy_of_the_spec() -> None:
    changed = apply_overrides(
        SPEC,
        ["training.epochs=2", "regularizers.0.weight=0.1", "training.lr=0.05"],
        keys_from_document(FULL),
    )
    assert changed["training"] == {"epochs": 2, "lr": 0.05}  # lr: a default, now written
    assert changed["regularizers"] == [{"name": "l2", "weight": 0.1}]
    assert SPEC["training"] == {"epochs": 10}  # the original is untouched
    # A level the file does not write at all is created.
    bare = {"dataset": {"name": "digits"}, "model": {"name": "lenet"}}
    assert apply_overrides(bare, ["training.seed=3"], keys_from_document(FULL))["training"] == {
        "seed": 3
    }


def test_an_unknown_key_names_the_path_and_the_valid_keys() -> None:
    with pytest.raises(OverrideError) as raised:
        apply_overrides(SPEC, ["training.epoch=2"], keys_from_document(FULL))
    message = str(raised.value)
    assert "--set training.epoch" in message and "training has no key 'epoch'" in message
    assert "valid keys there: early_stopping, epochs, lr, seed" in message
    with pytest.raises(OverrideError, match="the top level has no key 'trainig'"):
        apply_overrides(SPEC, ["trainig.epochs=2"], keys_from_document(FULL))


def test_a_bad_index_names_the_valid_ones() -> None:
    with pytest.raises(
        OverrideError, match=r"regularizers is a list of 1 item\(s\); valid indices: 0 to 0"
    ):
        apply_overrides(SPEC, ["regularizers.3.weight=0.1"])
    with pytest.raises(OverrideError, match="regularizers is a list"):
        apply_overrides(SPEC, ["regularizers.weight=0.1"])
    with pytest.raises(OverrideError, match=r"training.epochs is 10, not a mapping or a list"):
        apply_overrides(SPEC, ["training.epochs.max=3"])


def test_a_grid_takes_overrides_in_its_base_but_never_on_its_axes() -> None:
    grid_file = {
        "name": "g",
        "base": SPEC,
        "grid": {"regularizers": [[], [{"name": "l2"}]], "training.seed": [0, 1]},
    }
    changed = apply_to_file(grid_file, ["training.epochs=1"])
    assert changed["base"]["training"]["epochs"] == 1 and changed["grid"] == grid_file["grid"]
    for path in ("training.seed=3", "regularizers.0.weight=0.1", "regularizers=[]"):
        with pytest.raises(OverrideError, match="is an axis of the grid"):
            apply_to_file(grid_file, [path])


def test_the_servers_openapi_schema_gives_the_valid_keys() -> None:
    from api.app import create_app
    from service.settings import Settings

    schemas = create_app(Settings(data_dir=tempfile.mkdtemp())).openapi()["components"]["schemas"]
    keys_at = keys_from_schema({"$ref": "#/components/schemas/ExperimentSpec"}, schemas)
    assert {"epochs", "lr", "seed", "schedule"} <= (keys_at(("training",)) or set())
    assert keys_at(("regularizers", 0)) is None  # a component's params: the server checks
    with pytest.raises(OverrideError, match=r"valid keys there: .*epochs"):
        apply_overrides(SPEC, ["training.epoch=2"], keys_at)
    changed = apply_overrides(SPEC, ["regularizers.0.mode=decoupled"], keys_at)
    assert changed["regularizers"][0]["mode"] == "decoupled"
