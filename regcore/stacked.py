"""Seeds trained together: N experiments of one configuration as one stacked model.

``train_stacked(specs, datas, workdirs=..., callbacks=...)`` trains N members, specs that
differ only in ``training.seed`` and in numeric params (regularizer weights, the model's
dropout), in one loop over one ``regcore.stacking.StackedModel``: a step runs one
forward and one backward pass for all members. It shares ``regcore.train``'s run
(``open_run``, ``end_epoch``, ``finish_run``) and its step's phases (``prepare_batch``,
``penalty_terms``, ``before_optimizer_step``, ``after_optimizer_step``). To each member
it is its own run:

- its model is built exactly as ``train()`` builds it for its seed (same initialization,
  same regularizer setup), and stays an ordinary model whose weights the stacked forward
  reads;
- its data: its own splits (they follow its seed), its own shuffle generator;
- its randomness: its own states of torch's generators (``MemberRandomness``), swapped in
  around everything it may draw (batch transforms, weight noise, dropout masks inside
  the stacked forward, penalties' projections, hooks), so its draws come in the same
  order from the same stream as in a run of its own. Python's and NumPy's states are
  kept per member for its checkpoint only: swapping them costs ~0.3 ms, so a step does
  not, and an epoch in which anything drew from them fails loudly;
- its regularizers (own instances and params), hooks called on its own model;
- its optimizer state: one optimizer steps all members' parameters at once (SGD and Adam
  are elementwise, so each member's update is its own), and each member's state is
  written as an ordinary single-model optimizer's ``state_dict``; the lr schedule is
  the members' common one;
- its history, early stopping (a member whose patience runs out leaves the stack) and
  checkpoint: ``workdir/last.pt`` every epoch in ``train()``'s format, so a member
  resumes stacked or alone with ``train()``.

Members therefore equal separate ``train()`` runs up to float rounding (grouped
convolutions and batched products sum in another order): in float64 to ~1e-15 for
every regularizer, in float32 within rtol 1e-4 after a few epochs
(``tests/regcore/test_stacked.py``). Penalties on input gradients of the training
forward (jacobian, grad_reg) declare their vector-Jacobian products
(``Regularizer.input_gradient_requests``) and get them for all members from one
backward pass; penalties with forward passes of their own (cure, jacobian_det,
adversarial_training, jacobian's subsample mode) run member by member on the member's
model, exact but without a speed-up. ``training.compile`` is ignored (the stacked
forward runs eagerly); ``precision`` and ``channels_last`` apply as in ``train()``.

``epoch_seconds`` of a member is its share of the stacked epoch (the wall time divided by
the members trained in it). A stacked run resumes when every unfinished member's
checkpoint is at the same epoch; otherwise (or when the model cannot stack) the members
train one after another with ``train()``, each resuming from its own checkpoint. A
member that diverges stops the whole stack (``StackedMemberDivergedError``, a
``TrainingDivergedError`` naming it) with every member's last epoch checkpointed, and a
cancel of any member stops it too: the caller can train the others again, stacked or
alone, from those checkpoints.

``stack_key(spec)`` says which specs may train together: equal keys stack; None when the
spec cannot (a regularizer that declares ``stackable = False``, see the catalog).

Speed (``bench/stacked.py``; CPU time, one thread): a LeNet step at batch 100 is
compute-bound on the CPU, so stacking saves only per-step overhead there; it pays where
fixed per-step costs dominate (small models and batches) and, by design, on GPUs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from regcore.data import DataSplits, Split
from regcore.registries import REGULARIZERS
from regcore.regularizers import Regularizer, StepContext
from regcore.runtime import Runtime
from regcore.spec import ExperimentSpec, TrainingSpec
from regcore.stacking import MemberRandomness, StackedModel, StackingError, stack_models
from regcore.train import (
    NONFINITE_CHECK_EVERY,
    Callbacks,
    RunState,
    TrainingCancelledError,
    TrainingDivergedError,
    TrainResult,
    after_optimizer_step,
    batch_order,
    before_optimizer_step,
    build_optimizer,
    end_epoch,
    finish_run,
    is_finished,
    lr_factor,
    open_run,
    penalty_terms,
    prepare_batch,
    train,
)


class StackedMemberDivergedError(TrainingDivergedError):
    """A member's loss became nan or inf; ``member`` is its index among the specs (the
    caller fails that one and may train the others again, from their checkpoints)."""

    def __init__(self, message: str, member: int) -> None:
        super().__init__(message)
        self.member = member


# --------------------------------------------------------------------------- which specs stack

MEMBER_MODEL_PARAMS = frozenset({"dropout"})  # model params members may differ in


def stacking_obstacle(spec: ExperimentSpec) -> str | None:
    """Why the spec cannot train stacked, or None when it can."""
    for regularizer in spec.regularizers:
        target = REGULARIZERS.get(regularizer.name).target
        if not getattr(target, "stackable", True):
            reason = getattr(target, "stack_note", "") or "it declares stackable = False"
            return f"regularizer {regularizer.name!r} cannot train stacked: {reason}"
    return None


def stack_key(spec: ExperimentSpec) -> str | None:
    """Specs with equal keys may train stacked; None when the spec cannot stack.

    The key is the whole spec (including its device and other run settings) without what
    members may differ in: the name, description and analyses, ``training.seed``, the
    model's dropout and every numeric regularizer param (weights, eps, n_proj, ...): the
    sha256 of that as JSON with sorted keys and no spaces."""
    return StackKeys()(spec)


_NOT_IN_KEY = frozenset({"name", "description", "analyses"})  # spec fields members differ in
_KEY_FIELDS = tuple(sorted(set(ExperimentSpec.model_fields) - _NOT_IN_KEY))  # as sort_keys


class StackKeys:
    """``stack_key`` of many specs (a batch being recorded), each shared part dumped once.

    The points of a grid share their part objects (``service.sweeps.plan``), and a key is
    made of parts: each part's JSON, without what members may differ in, is kept by the
    part object itself (parts are frozen), and a spec's key joins its parts' pieces as
    ``json.dumps(..., sort_keys=True)`` joins them: the same keys as ``stack_key`` at a
    few microseconds a spec instead of a whole ``model_dump``."""

    def __init__(self) -> None:
        self._pieces: dict[tuple[str, int], tuple[Any, str]] = {}  # -> (part, its JSON)

    def __call__(self, spec: ExperimentSpec) -> str | None:
        if stacking_obstacle(spec) is not None:
            return None
        fields = ",".join(
            f'"{name}":{self._piece(name, getattr(spec, name))}' for name in _KEY_FIELDS
        )
        return hashlib.sha256(f"{{{fields}}}".encode()).hexdigest()

    def _piece(self, field: str, part: Any) -> str:
        if isinstance(part, list):
            return f"[{','.join(self._piece(field, item) for item in part)}]"
        key = (field, id(part))
        known = self._pieces.get(key)
        if known is None or known[0] is not part:
            dumped = part.model_dump(mode="json") if isinstance(part, BaseModel) else part
            known = self._pieces[key] = (part, _canonical(_member_free(field, dumped)))
        return known[1]


# What members may differ in, per spec field: (key, value) -> left out of the key. For
# ``regularizers``, applied to each entry of the list.
_MEMBER_PARAMS: dict[str, Callable[[str, Any], bool]] = {
    "training": lambda key, _: key == "seed",
    "model": lambda key, _: key in MEMBER_MODEL_PARAMS,
    "regularizers": lambda _, value: _is_numeric(value),
}


def _member_free(field: str, dumped: Any) -> Any:
    """A dumped part of a spec (its field's name) without what members may differ in."""
    differs = _MEMBER_PARAMS.get(field)
    if differs is None:
        return dumped
    return {key: value for key, value in dumped.items() if not differs(key, value)}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _is_numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------- members


@dataclass
class _Member:
    """One experiment of the stack: the run ``train()`` would hold, and its randomness."""

    index: int
    run: RunState
    callbacks: Callbacks
    randomness: MemberRandomness  # its states of torch's generators
    host_rng: tuple[Any, Any]  # its states of Python's and NumPy's generators

    @property
    def regularizers(self) -> dict[str, Regularizer]:
        return self.run.regularizers

    def uses(self, *hooks: str) -> bool:
        """Does any of its regularizers override one of these hooks (and so may draw)?"""
        return any(
            getattr(type(r), hook) is not getattr(Regularizer, hook)
            for r in self.regularizers.values()
            for hook in hooks
        )


def _open_member(
    index: int,
    spec: ExperimentSpec,
    data: DataSplits | None,
    workdir: Path | None,
    callbacks: Callbacks,
    resume: bool,
) -> _Member:
    """The member's run exactly as ``train()`` opens it (seeded, built, resumed); its
    generators' states are then the ones its own run would continue from."""
    run = open_run(spec, data, workdir=workdir, resume=resume)
    return _Member(
        index=index,
        run=run,
        callbacks=callbacks,
        randomness=MemberRandomness(run.device),
        host_rng=(random.getstate(), np.random.get_state()),
    )


@contextmanager
def _host_rng(member: _Member) -> Iterator[None]:
    """Python's and NumPy's generators set to the member's states for the duration (for
    its checkpoint; they cost ~0.3 ms to swap, so steps do not, and never draw from them)."""
    outer = (random.getstate(), np.random.get_state())
    random.setstate(member.host_rng[0])
    np.random.set_state(member.host_rng[1])
    try:
        yield
    finally:
        member.host_rng = (random.getstate(), np.random.get_state())
        random.setstate(outer[0])
        np.random.set_state(outer[1])


# --------------------------------------------------------------------------- the stack


class _Stack:
    """The members that still train: their stacked model, one optimizer over all their
    parameters (each member's state its own) and their common lr schedule."""

    def __init__(self, members: list[_Member], training: TrainingSpec) -> None:
        self.members = members
        first = members[0].run
        # channels-last where it is faster and cannot change the result (StackedModel)
        differentiates_forward = any(
            r.needs_input_grad for m in members for r in m.regularizers.values()
        )
        self.model = stack_models(
            [m.run.model for m in members],
            [m.randomness for m in members],
            first.data.info.input_shape,
            channels_last=first.device.type == "cpu" and not differentiates_forward,
            member_memory_format=(
                torch.channels_last if training.channels_last else torch.contiguous_format
            ),
        )
        self.optimizer = build_optimizer(nn.ModuleList([m.run.model for m in members]), training)
        self.optimizer.param_groups[0]["foreach"] = True  # one call for all members' tensors
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(training, first.total_steps)
        )
        # Continue where the members are (from their checkpoints, or a previous stack): the
        # lr and the schedule are common, the per-parameter state is each member's own.
        self.optimizer.param_groups[0].update(_schedule_settings(first.optimizer))
        self.scheduler.load_state_dict(first.scheduler.state_dict())
        for member in members:
            _adopt_state(self.optimizer, member.run.optimizer)
            member.run.scheduler = self.scheduler  # its checkpoint's schedule

    def release(self) -> None:
        """Hand every member its optimizer state back (before a smaller stack forms)."""
        for member in self.members:
            _lend_state(self.optimizer, member.run.optimizer)


SCHEDULE_KEYS = ("lr", "initial_lr")  # what the lr schedule changes in a param group


def _schedule_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    group = optimizer.param_groups[0]
    return {key: group[key] for key in SCHEDULE_KEYS if key in group}


def _adopt_state(stacked: torch.optim.Optimizer, single: torch.optim.Optimizer) -> None:
    """A member's per-parameter optimizer state into the stacked optimizer (no copies)."""
    for group in single.param_groups:
        for parameter in group["params"]:
            if parameter in single.state:
                stacked.state[parameter] = single.state[parameter]


def _lend_state(stacked: torch.optim.Optimizer, single: torch.optim.Optimizer) -> None:
    """The stacked optimizer's state of a member's parameters and the schedule's lr into
    the member's single-model optimizer (the same tensors, no copies), whose
    ``state_dict`` is then what ``train()`` would checkpoint."""
    settings = _schedule_settings(stacked)
    for group in single.param_groups:
        group.update(settings)
        for parameter in group["params"]:
            if parameter in stacked.state:
                single.state[parameter] = stacked.state[parameter]


# --------------------------------------------------------------------------- training


def train_stacked(
    specs: Sequence[ExperimentSpec],
    datas: Sequence[DataSplits | None] | None = None,
    *,
    workdirs: Sequence[Path | None] | None = None,
    callbacks: Sequence[Callbacks | None] | None = None,
    resume: bool = True,
) -> list[TrainResult]:
    """Train the specs together (see the module notes); one ``TrainResult`` per spec, in
    order, each as ``train(spec, data, workdir=..., callbacks=...)`` would return it.
    The specs must share one ``stack_key``."""
    specs = list(specs)
    n = len(specs)
    if n == 0:
        return []
    datas = list(datas) if datas is not None else [None] * n
    dirs = list(workdirs) if workdirs is not None else [None] * n
    hooks = [c or Callbacks() for c in (callbacks if callbacks is not None else [None] * n)]
    if not len(datas) == len(dirs) == len(hooks) == n:
        raise ValueError("train_stacked needs one data, workdir and callbacks entry per spec")
    keys = {stack_key(spec) for spec in specs}
    if None in keys or len(keys) > 1:
        obstacles = [o for o in map(stacking_obstacle, specs) if o is not None]
        raise ValueError(
            obstacles[0] if obstacles else "the specs differ in more than seeds and numeric params"
        )

    members = [
        _open_member(i, spec, data, workdir, cb, resume)
        for i, (spec, data, workdir, cb) in enumerate(zip(specs, datas, dirs, hooks, strict=True))
    ]
    training = specs[0].training
    active = [m for m in members if not is_finished(m.run)]
    if len({m.run.progress.epoch for m in active}) > 1:
        warnings.warn(
            "stacked members' checkpoints are at different epochs: they train one by one",
            stacklevel=2,
        )
        return _train_separately(members, resume)
    if active:
        try:
            stack = _Stack(active, training)
        except StackingError as exc:
            warnings.warn(f"{exc}: the members train one by one", stacklevel=2)
            return _train_separately(members, resume)
        _train_together(stack, training)
    return [finish_run(m.run) for m in members]


def _train_separately(members: list[_Member], resume: bool) -> list[TrainResult]:
    """Each member on its own with ``train()``, from its checkpoint if it has one."""
    return [
        train(m.run.spec, m.run.data, workdir=m.run.workdir, callbacks=m.callbacks, resume=resume)
        for m in members
    ]


def _train_together(stack: _Stack, training: TrainingSpec) -> None:
    runtime = replace(stack.members[0].run.runtime, compiled=None)  # eager, see notes
    for epoch in range(stack.members[0].run.progress.epoch + 1, training.epochs + 1):
        still = [m for m in stack.members if not is_finished(m.run)]
        if not still:
            break
        if len(still) < len(stack.members):  # early stopping: the others go on without them
            stack.release()
            stack = _Stack(still, training)
        host_before = _host_fingerprint()
        started = time.perf_counter()
        metrics = _train_one_epoch(stack, training, epoch, runtime)
        _evaluate_validation(stack, metrics, training.eval_batch_size)
        seconds = (time.perf_counter() - started) / len(stack.members)
        if _host_fingerprint() != host_before:
            raise RuntimeError(
                "a step drew from Python's or NumPy's global generator, which stacked "
                "members share; regularizers must draw from torch's (see regcore.stacked)"
            )
        stack.release()
        for member, values in zip(stack.members, metrics, strict=True):
            values["epoch_seconds"] = seconds
            with member.randomness, _host_rng(member):
                end_epoch(member.run, epoch, values, member.callbacks)
        _check_cancel(stack.members, f"after epoch {epoch}")


def _host_fingerprint() -> tuple[Any, ...]:
    numpy_state = np.random.get_state()
    return random.getstate(), numpy_state[2], numpy_state[1][:8].tobytes()


# --------------------------------------------------------------------------- one epoch


def _train_one_epoch(
    stack: _Stack, training: TrainingSpec, epoch: int, runtime: Runtime
) -> list[dict[str, float]]:
    """One epoch of stacked steps: per member what ``regcore.train.train_step`` does, in
    its order, with one forward and one backward pass for all."""
    members = stack.members
    runs = [m.run for m in members]
    stack.model.train()
    device = runs[0].device
    lr_at_start = stack.optimizer.param_groups[0]["lr"]
    n = len(members)
    sums = {name: torch.zeros(n, device=device) for name in ("loss", "data_loss", "correct")}
    term_sums: list[dict[str, torch.Tensor]] = [{} for _ in members]
    window: list[torch.Tensor] = []
    seen = 0
    orders = [batch_order(len(r.data.train), training.batch_size, r.shuffle, device) for r in runs]
    steps_per_epoch = len(orders[0])
    parameters = [p for group in stack.optimizer.param_groups for p in group["params"]]
    needs_input_grad = [any(r.needs_input_grad for r in m.regularizers.values()) for m in members]
    draw_before = [m.uses("transform_batch", "before_forward") for m in members]
    hook_after = [m.uses("after_backward", "before_step") for m in members]
    hook_step = [m.uses("after_step") for m in members]
    scopes = [m.randomness for m in members]
    for step_in_epoch in range(steps_per_epoch):
        _check_cancel(members, f"during epoch {epoch}, step {step_in_epoch}")
        step = runs[0].progress.global_step
        xs, ys = [], []
        for i, (run, order) in enumerate(zip(runs, orders, strict=True)):
            index = order[step_in_epoch]
            x, y = run.data.train.x[index], run.data.train.y[index]  # (B, ...), (B,)
            with scopes[i] if draw_before[i] else contextlib.nullcontext():
                x, y = prepare_batch(run.model, run.regularizers, x, y, needs_input_grad[i])
            xs.append(x)
            ys.append(y)
        targets = torch.stack(ys, dim=1)  # (B, N)

        logits = runtime.forward(stack.model, xs)  # (B, N, C)
        # each member's own mean cross-entropy, computed as train_step computes it
        data_losses = torch.stack([F.cross_entropy(logits[:, i], ys[i]) for i in range(n)])
        lr = stack.optimizer.param_groups[0]["lr"]
        contexts = [
            StepContext(
                model=run.model, inputs=xs[i], targets=ys[i], logits=logits[:, i],
                data_loss=data_losses[i], epoch=epoch, step=step,
                steps_per_epoch=steps_per_epoch, total_steps=run.total_steps, lr=lr,
            )
            for i, run in enumerate(runs)
        ]  # fmt: skip
        terms = penalty_terms(
            [(run.regularizers, ctx) for run, ctx in zip(runs, contexts, strict=True)],
            runtime,
            scopes,
        )
        if any(terms):
            losses = torch.stack(
                [
                    data_losses[i] + sum(t.values()) if t else data_losses[i]
                    for i, t in enumerate(terms)
                ]
            )  # (N,)
        else:
            losses = data_losses

        stack.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward(inputs=parameters)  # members are independent: each its own
        for i, run in enumerate(runs):
            if hook_after[i]:
                with scopes[i]:
                    before_optimizer_step(run.model, run.regularizers, stack.optimizer)
        stack.optimizer.step()
        stack.scheduler.step()
        for i, (run, ctx) in enumerate(zip(runs, contexts, strict=True)):
            if hook_step[i]:
                with scopes[i]:
                    after_optimizer_step(run.regularizers, ctx)
            run.progress.global_step += 1

        batch = targets.shape[0]
        seen += batch
        detached = losses.detach()  # (N,)
        sums["loss"] += detached * batch
        sums["data_loss"] += data_losses.detach() * batch
        sums["correct"] += (logits.detach().argmax(dim=2) == targets).sum(dim=0)
        for i, member_terms in enumerate(terms):
            for name, term in member_terms.items():
                term_sums[i][name] = term_sums[i].get(name, 0) + term.detach() * batch
        window.append(detached)
        if len(window) == NONFINITE_CHECK_EVERY or step_in_epoch == steps_per_epoch - 1:
            _check_finite(window, members, epoch, step_in_epoch)
            window = []
        for member in members:
            if member.callbacks.on_step is not None:
                member.callbacks.on_step(epoch, step_in_epoch + 1, steps_per_epoch)

    loss, data_loss, correct = (sums[k].tolist() for k in ("loss", "data_loss", "correct"))
    metrics = []
    for i in range(n):
        row = {
            "train/loss": loss[i] / seen,
            "train/data_loss": data_loss[i] / seen,
            "train/accuracy": correct[i] / seen,
            "lr": lr_at_start,
        }
        for name, term_sum in term_sums[i].items():
            row[f"reg/{name}"] = float(term_sum) / seen
        metrics.append(row)
    return metrics


def _check_cancel(members: list[_Member], when: str) -> None:
    for member in members:
        cancel = member.callbacks.should_cancel
        if cancel is not None and cancel():
            raise TrainingCancelledError(f"cancelled {when} (stacked member {member.index})")


def _check_finite(
    window: list[torch.Tensor], members: list[_Member], epoch: int, last_step: int
) -> None:
    losses = torch.stack(window)  # (W, N)
    finite = torch.isfinite(losses)
    if bool(finite.all()):
        return
    step_offset, at = (int(v) for v in (~finite).nonzero()[0])
    member = members[at]
    raise StackedMemberDivergedError(
        f"training diverged: loss is {float(losses[step_offset, at])} at epoch {epoch}, "
        f"step {last_step - len(window) + 1 + step_offset} (stacked member {member.index}, "
        f"seed {member.run.spec.training.seed}); lower the learning rate or the regularizer "
        "weights",
        member.index,
    )


@torch.no_grad()
def _evaluate_validation(stack: _Stack, metrics: list[dict[str, float]], batch_size: int) -> None:
    """Each member's validation loss and accuracy (``regcore.train.evaluate``'s), all
    members in one stacked forward per batch."""
    splits = [m.run.data.val for m in stack.members]
    present = [split for split in splits if split is not None]
    if len(present) < len(splits):
        return
    # as many samples per forward pass as a run of its own (large batches are slower)
    results = evaluate_stacked(stack.model, present, max(1, batch_size // len(present)))
    for values, (loss, accuracy) in zip(metrics, results, strict=True):
        values["val/loss"], values["val/accuracy"] = loss, accuracy


@torch.no_grad()
def evaluate_stacked(
    model: StackedModel, splits: Sequence[Split], batch_size: int = 1000
) -> list[tuple[float, float]]:
    """(mean cross-entropy, accuracy) of each member on its own split (all of one size),
    in eval mode; the mode is restored."""
    size = len(splits[0])
    if any(len(split) != size for split in splits):
        raise ValueError("stacked evaluation needs splits of one size")
    was_training = model.training
    model.eval()
    device = splits[0].x.device
    n = len(splits)
    loss_sum = torch.zeros(n, device=device)
    correct = torch.zeros(n, device=device, dtype=torch.long)
    for start in range(0, size, batch_size):
        xs = [split.x[start : start + batch_size] for split in splits]
        targets = torch.stack([split.y[start : start + batch_size] for split in splits], dim=1)
        logits = model(xs)  # (B, N, C)
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, N)
        loss_sum += losses.sum(dim=0)
        correct += (logits.argmax(dim=2) == targets).sum(dim=0)
    model.train(was_training)
    return [
        (loss / size, hits / size)
        for loss, hits in zip(loss_sum.tolist(), correct.tolist(), strict=True)
    ]
