"""Seeds trained together (regcore.stacked): each member equals its separate run.

Two kinds of equality. In float64 (every registered regularizer, LeNet with dropout)
a stacked member equals ``train()`` of its spec to ~1e-15: the same random draws in the
same order, the same mathematics; only the summation order of grouped convolutions
and batched products differs. In float32 (the regularizers the issue names, on a small
MLP and on LeNet) that rounding (~1e-7 per step) grows with training, and the members
stay within rtol 1e-4, atol 1e-5 after two or three epochs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from regcore.catalog import build_catalog
from regcore.data import DataSplits, Split, load_dataset
from regcore.pipeline import run, run_stacked
from regcore.registries import REGULARIZERS
from regcore.regularizers.l2 import L2
from regcore.spec import ExperimentSpec
from regcore.stacked import StackedMemberDivergedError, stack_key, train_stacked
from regcore.stacking import MemberRandomness, StackingError, stack_models
from regcore.tracking import MemoryTracker
from regcore.train import (
    Callbacks,
    TrainingCancelledError,
    TrainingDivergedError,
    TrainResult,
    load_checkpoint,
    train,
)

LENET_DIGITS = {"name": "digits", "size": 28, "train_size": 32, "val_fraction": 0.05}
LENET = {"name": "lenet", "dropout": 0.25}
LENET_TRAINING = {"epochs": 2, "batch_size": 16, "lr": 0.05}
MLP_DIGITS = {"name": "digits", "size": 8, "train_size": 96, "val_fraction": 0.1}


def make_spec(
    seed: int,
    regularizers: list[dict[str, Any]] | None = None,
    *,
    model: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    **training: Any,
) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": dataset or MLP_DIGITS,
            "model": model or {"name": "mlp", "hidden": [32], "dropout": 0.2},
            "regularizers": regularizers or [],
            "training": {
                "epochs": 3,
                "batch_size": 32,
                "lr": 0.1,
                "seed": seed,
                "device": "cpu",
                **training,
            },
        }
    )


POWER_ITERATION_VECTORS = ("._u", "._v")  # spectral norm's estimates of singular vectors


def assert_same_run(
    stacked: TrainResult, alone: TrainResult, rtol: float, atol: float, probe: torch.Tensor
) -> None:
    """Weights and buffers, the eval-mode logits on ``probe`` inputs, and the per-epoch
    metrics are equal. The power-iteration vectors of spectral norm are compared through
    the logits only: where the top singular values nearly tie, the top vector is ill-
    conditioned (rounding turns it within that space) while sigma, what they serve to
    estimate, is not."""
    stacked_state, alone_state = stacked.model.state_dict(), alone.model.state_dict()
    assert list(stacked_state) == list(alone_state)
    for name, value in alone_state.items():
        if name.endswith(POWER_ITERATION_VECTORS):
            continue
        if value.is_floating_point():
            torch.testing.assert_close(stacked_state[name], value, rtol=rtol, atol=atol, msg=name)
        else:
            assert torch.equal(stacked_state[name], value), name
    with torch.no_grad():
        logits = [model.eval()(probe.to(alone.device)) for model in (stacked.model, alone.model)]
    torch.testing.assert_close(logits[0], logits[1], rtol=rtol, atol=rtol)  # logits are O(1)
    assert len(stacked.history) == len(alone.history)
    for row_stacked, row_alone in zip(stacked.history, alone.history, strict=True):
        assert row_stacked.keys() == row_alone.keys()
        for key, value in row_alone.items():
            if key != "epoch_seconds":
                assert row_stacked[key] == pytest.approx(value, rel=rtol, abs=atol), key
    assert (stacked.epochs_run, stacked.best_epoch, stacked.stopped_early) == (
        alone.epochs_run,
        alone.best_epoch,
        alone.stopped_early,
    )


def probe_inputs(spec: ExperimentSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A few test images of the spec's dataset (the same for every seed)."""
    return load_dataset(spec.dataset, spec.training.seed).test.x[:16].to(dtype)


def member_params(name: str, params: dict[str, Any], member: int) -> dict[str, Any]:
    """Member 1 doubles the regularizer's weight where it has one (members may differ in
    numeric params)."""
    if member and isinstance(params.get("weight"), float):
        return {**params, "weight": 2 * params["weight"]}
    return params


# --------------------------------------------------------------------------- float64, all


@pytest.fixture
def float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def as_float64(data: DataSplits) -> DataSplits:
    def convert(split: Split | None) -> Split | None:
        return None if split is None else Split(split.x.double(), split.y)

    train_split, test = convert(data.train), convert(data.test)
    assert train_split is not None and test is not None
    return DataSplits(train=train_split, val=convert(data.val), test=test, info=data.info)


def test_every_regularizer_stacks_or_says_why() -> None:
    for entry in REGULARIZERS:
        target = entry.target
        spec = make_spec(0, [{"name": entry.name}])
        if target.stackable:
            assert stack_key(spec) is not None, entry.name
        else:
            assert target.stack_note, f"{entry.name} cannot stack but does not say why"
            assert stack_key(spec) is None


CHEAPER = {  # fewer Lanczos and PGD steps than the defaults: the same code, less time
    "spectral_norm": {"eval_iterations": 5},
    "lcnn": {"eval_iterations": 5},
    "adversarial_training": {"steps": 2},
}


@pytest.mark.parametrize("name", ["none", *REGULARIZERS.names()])
def test_stacked_members_equal_separate_runs_in_float64(name: str, float64: None) -> None:
    if name != "none" and not REGULARIZERS.get(name).target.stackable:
        pytest.fail(f"{name} is not stackable: test_every_regularizer_stacks_or_says_why")
    defaults = {} if name == "none" else {"name": name, **CHEAPER.get(name, {})}
    specs = [
        make_spec(
            seed,
            [member_params(name, defaults, member)] if defaults else [],
            model=LENET,
            dataset=LENET_DIGITS,
            **LENET_TRAINING,
        )
        for member, seed in enumerate((0, 1))
    ]
    datas = [as_float64(load_dataset(s.dataset, s.training.seed)) for s in specs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # beta_penalty: nothing to penalize
        stacked = train_stacked(specs, datas)
        for spec, data, result in zip(specs, datas, stacked, strict=True):
            assert_same_run(result, train(spec, data), rtol=1e-7, atol=1e-9, probe=data.test.x[:16])


# --------------------------------------------------------------------------- float32

REQUIRED = {
    "none": [],
    "l2": [{"name": "l2", "weight": 1e-3}],
    "label_smoothing": [{"name": "label_smoothing", "eps": 0.1}],
    "jacobian": [{"name": "jacobian", "weight": 0.01}],
    "svb_hard": [{"name": "svb_hard", "every_steps": 2}],
    "spectral_norm": [{"name": "spectral_norm", "eval_iterations": 10}],
}


@pytest.mark.parametrize("family", list(REQUIRED))
def test_stacked_members_equal_separate_runs_in_float32(family: str) -> None:
    """Three seeds of the MLP with dropout, the weights differing per member."""
    specs = [
        make_spec(seed, [member_params(family, r, member) for r in REQUIRED[family]])
        for member, seed in enumerate((0, 1, 2))
    ]
    for spec, result in zip(specs, train_stacked(specs), strict=True):
        assert_same_run(result, train(spec), rtol=1e-4, atol=1e-5, probe=probe_inputs(spec))


@pytest.mark.parametrize("family", ["none", "svb_hard", "spectral_norm", "jacobian"])
def test_stacked_lenet_equals_separate_runs_in_float32(family: str) -> None:
    """The convolution path with dropout, in float32: grouped channels-last convolutions,
    or under jacobian each member's own (NCHW, see ``StackedModel``). jacobian within
    rtol 1e-3: its penalty differentiates through max pooling, where rounding in the
    weights moves near-ties (a single run in channels-last differs from one in NCHW as
    much); the MLP above holds it to 1e-4."""
    rtol, atol = (1e-3, 1e-4) if family == "jacobian" else (1e-4, 1e-5)
    specs = [
        make_spec(
            seed,
            REQUIRED[family],
            model=LENET,
            dataset=LENET_DIGITS,
            **LENET_TRAINING,
        )
        for seed in (0, 1)
    ]
    for spec, result in zip(specs, train_stacked(specs), strict=True):
        assert_same_run(result, train(spec), rtol=rtol, atol=atol, probe=probe_inputs(spec))


def test_members_may_differ_in_dropout() -> None:
    specs = [
        make_spec(seed, model={"name": "mlp", "hidden": [32], "dropout": dropout})
        for seed, dropout in ((0, 0.0), (1, 0.3), (2, 0.6))
    ]
    assert len({stack_key(spec) for spec in specs}) == 1
    for spec, result in zip(specs, train_stacked(specs), strict=True):
        assert_same_run(result, train(spec), rtol=1e-4, atol=1e-5, probe=probe_inputs(spec))


def small_bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).double()


def test_members_may_differ_in_their_jacobian_projections() -> None:
    """1 and 3 random projections and the exact Jacobian (C products) in one stack: the
    k-th products of the members that ask for one are taken together."""
    specs = [
        make_spec(seed, [{"name": "jacobian", "weight": weight, "n_proj": n_proj}])
        for seed, weight, n_proj in ((0, 0.01, 1), (1, 0.02, 3), (2, 0.01, -1))
    ]
    assert len({stack_key(spec) for spec in specs}) == 1
    for spec, result in zip(specs, train_stacked(specs), strict=True):
        assert_same_run(result, train(spec), rtol=1e-4, atol=1e-5, probe=probe_inputs(spec))


def test_batch_norm_members_keep_their_own_statistics() -> None:
    """Each member's batch norm normalizes with its own batch's statistics and updates
    its own running statistics: two training steps' gradients and statistics, and the
    eval-mode logits, equal the members' own (float64; a full ResNet-18 run agrees to
    1e-14 too, but takes seconds)."""
    stacked_members = [small_bn_net(seed) for seed in (0, 1)]
    alone_members = [small_bn_net(seed) for seed in (0, 1)]
    randomness = [MemberRandomness(torch.device("cpu")) for _ in stacked_members]
    stacked = stack_models(stacked_members, randomness, (1, 8, 8)).train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        xs = [torch.rand(5, 1, 8, 8, generator=generator, dtype=torch.float64) for _ in range(2)]
        stacked(xs).square().sum().backward()
        for model, x in zip(alone_members, xs, strict=True):
            model.train()(x).square().sum().backward()
    for together, alone in zip(stacked_members, alone_members, strict=True):
        pairs = zip(together.named_parameters(), alone.named_parameters(), strict=True)
        for (name, a), (_, b) in pairs:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=name)
        buffers = zip(together.named_buffers(), alone.named_buffers(), strict=True)
        for (name, a), (_, b) in buffers:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    probe = torch.rand(3, 1, 8, 8, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        logits = stacked.eval()([probe, probe])  # (3, 2, 3)
        for index, alone in enumerate(alone_members):
            torch.testing.assert_close(logits[:, index], alone.eval()(probe))


# --------------------------------------------------------------------------- checkpoints and resume


def cancel_after(epoch: int) -> Callbacks:
    done: list[int] = []
    return Callbacks(on_epoch=lambda e, _: done.append(e), should_cancel=lambda: epoch in done)


def test_each_member_checkpoints_in_train_format(tmp_path: Path) -> None:
    specs = [make_spec(seed, REQUIRED["l2"], epochs=2) for seed in (0, 1)]
    train_stacked(specs, workdirs=[tmp_path / "s0", tmp_path / "s1"])
    train(specs[0], workdir=tmp_path / "alone")
    stacked = load_checkpoint(tmp_path / "s0" / "last.pt")
    alone = load_checkpoint(tmp_path / "alone" / "last.pt")
    assert stacked.keys() == alone.keys()
    assert stacked["spec_hash"] == specs[0].spec_hash()
    assert stacked["rng"].keys() == alone["rng"].keys()
    assert stacked["optimizer"]["param_groups"] == alone["optimizer"]["param_groups"]
    assert stacked["optimizer"]["state"].keys() == alone["optimizer"]["state"].keys()
    assert stacked["scheduler"] == alone["scheduler"]
    for key in ("torch", "shuffle"):
        assert torch.equal(stacked["rng"][key], alone["rng"][key]), key


def test_a_stacked_run_resumes_stacked_or_alone(tmp_path: Path) -> None:
    """Adam with a step schedule: each member's moments and the lr come back."""
    schedule = {"kind": "step", "milestones": [0.5], "gamma": 0.1}
    specs = [
        make_spec(seed, REQUIRED["l2"], optimizer="adam", lr=0.01, schedule=schedule)
        for seed in (0, 1)
    ]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    with pytest.raises(TrainingCancelledError):
        train_stacked(specs, workdirs=dirs, callbacks=[cancel_after(1), None])
    assert all(load_checkpoint(d / "last.pt")["epoch"] == 1 for d in dirs)

    alone = train(specs[1], workdir=dirs[1])  # member 1 goes on by itself
    assert alone.resumed_from_epoch == 1
    assert_same_run(alone, train(specs[1]), rtol=1e-4, atol=1e-5, probe=probe_inputs(specs[1]))

    (resumed,) = train_stacked(specs[:1], workdirs=dirs[:1])  # a stack of one
    assert resumed.resumed_from_epoch == 1
    assert_same_run(resumed, train(specs[0]), rtol=1e-4, atol=1e-5, probe=probe_inputs(specs[0]))


def test_separate_checkpoints_resume_stacked(tmp_path: Path) -> None:
    specs = [make_spec(seed, [{"name": "input_noise"}]) for seed in (0, 1)]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    for spec, workdir in zip(specs, dirs, strict=True):
        with pytest.raises(TrainingCancelledError):
            train(spec, workdir=workdir, callbacks=cancel_after(2))
    results = train_stacked(specs, workdirs=dirs)
    for spec, result in zip(specs, results, strict=True):
        assert result.resumed_from_epoch == 2
        assert_same_run(result, train(spec), rtol=1e-4, atol=1e-5, probe=probe_inputs(spec))


def test_members_at_different_epochs_train_one_by_one(tmp_path: Path) -> None:
    specs = [make_spec(seed, REQUIRED["l2"]) for seed in (0, 1)]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    with pytest.raises(TrainingCancelledError):
        train(specs[0], workdir=dirs[0], callbacks=cancel_after(1))
    with pytest.warns(UserWarning, match="different epochs"):
        results = train_stacked(specs, workdirs=dirs)
    assert [r.resumed_from_epoch for r in results] == [1, 0]
    for spec, result in zip(specs, results, strict=True):
        assert_same_run(result, train(spec), rtol=1e-4, atol=1e-5, probe=probe_inputs(spec))


def test_early_stopping_is_per_member() -> None:
    early = {"metric": "val_accuracy", "patience": 1, "min_delta": 0.2}
    specs = [
        make_spec(seed, REQUIRED["l2"], epochs=5, early_stopping=early, lr=lr_scale)
        for seed, lr_scale in ((0, 0.1), (3, 0.1), (5, 0.1))
    ]
    results = train_stacked(specs)
    assert len({r.epochs_run for r in results}) > 1  # they stopped at different epochs
    for spec, result in zip(specs, results, strict=True):
        assert_same_run(result, train(spec), rtol=1e-4, atol=1e-5, probe=probe_inputs(spec))


def test_a_diverging_member_stops_the_stack_naming_it() -> None:
    specs = [
        make_spec(0, [{"name": "l2", "weight": 1e-3}], epochs=2),
        make_spec(1, [{"name": "l2", "weight": 1e8}], epochs=2),
    ]
    with pytest.raises(TrainingDivergedError, match="stacked member 1, seed 1") as caught:
        train_stacked(specs)
    assert isinstance(caught.value, StackedMemberDivergedError) and caught.value.member == 1


# --------------------------------------------------------------------------- what stacks


def test_stack_key_ignores_seeds_and_numeric_params_only() -> None:
    base = stack_key(make_spec(0, [{"name": "jacobian", "weight": 0.01}]))
    assert base is not None
    assert stack_key(make_spec(5, [{"name": "jacobian", "weight": 0.1, "n_proj": 3}])) == base
    assert (
        stack_key(
            make_spec(
                1, [{"name": "jacobian"}], model={"name": "mlp", "hidden": [32], "dropout": 0}
            )
        )
        == base
    )
    for other in (
        make_spec(0, [{"name": "l2"}]),
        make_spec(0, [{"name": "jacobian"}], lr=0.05),
        make_spec(0, [{"name": "jacobian"}], model={"name": "mlp", "hidden": [64]}),
        make_spec(0, [{"name": "jacobian"}, {"name": "l2"}]),
    ):
        assert stack_key(other) != base


def test_a_regularizer_that_cannot_stack_gets_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L2, "stackable", False)
    monkeypatch.setattr(L2, "stack_note", "a test says so")
    spec = make_spec(0, [{"name": "l2"}])
    assert stack_key(spec) is None
    with pytest.raises(ValueError, match="a test says so"):
        train_stacked([spec, make_spec(1, [{"name": "l2"}])])
    entry = next(e for e in build_catalog()["regularizers"] if e["name"] == "l2")
    assert entry["stacking"] == {"stackable": False, "note": "a test says so"}


def test_the_catalog_says_which_regularizers_stack() -> None:
    for entry in build_catalog()["regularizers"]:
        assert set(entry["stacking"]) == {"stackable", "note"}


class _MixesMembers(nn.Module):
    """Concatenates two branches along dim 1: in a stacked layout that interleaves
    members' features wrongly, which the probe must catch."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Linear(4, 3), nn.Linear(4, 3)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.left(x), self.right(x)], dim=1))


def test_a_model_whose_forward_mixes_members_cannot_stack() -> None:
    models = [_MixesMembers() for _ in range(2)]
    randomness = [MemberRandomness(torch.device("cpu")) for _ in models]
    with pytest.raises(StackingError, match="differs from its own forward"):
        stack_models(models, randomness, (4,))


def test_member_randomness_continues_its_own_stream() -> None:
    torch.manual_seed(0)
    own = MemberRandomness(torch.device("cpu"))
    expected = torch.rand(3), torch.rand(3)
    torch.manual_seed(0)
    member = MemberRandomness(torch.device("cpu"))
    torch.manual_seed(123)
    outer_next = torch.rand(3)
    torch.manual_seed(123)
    with member:
        first = torch.rand(3)
    assert torch.equal(torch.rand(3), outer_next)  # the outer stream did not move
    with member, member:  # nested scopes of one member change nothing
        second = torch.rand(3)
    assert torch.equal(first, expected[0]) and torch.equal(second, expected[1])
    del own


# --------------------------------------------------------------------------- the pipeline


def logged(tracker: MemoryTracker) -> tuple[list[Any], list[Any]]:
    """What a tracker received, without values and places: metric names per step and
    artifact names."""
    return (
        [(step, sorted(metrics)) for step, metrics in tracker.metrics],
        sorted((path.name, folder) for path, folder in tracker.artifacts),
    )


def test_run_stacked_gives_each_member_its_own_run(tmp_path: Path) -> None:
    specs = [make_spec(seed, REQUIRED["l2"], epochs=2) for seed in (0, 1)]
    trackers = [MemoryTracker(), MemoryTracker()]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    results = run_stacked(specs, trackers, workdirs=dirs)
    for spec, tracker, workdir, result in zip(specs, trackers, dirs, results, strict=True):
        for name in ("spec.yaml", "model.pt", "last.pt", "metrics.json", "history.json"):
            assert (workdir / name).exists(), name
        assert tracker.tags["spec_hash"] == spec.spec_hash()
        alone_tracker = MemoryTracker()
        alone = run(spec, alone_tracker, workdir=tmp_path / f"alone{spec.training.seed}")
        assert logged(tracker) == logged(alone_tracker)
        for key, value in alone.metrics.items():
            if isinstance(value, float) and key != "train_seconds":
                assert result.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
