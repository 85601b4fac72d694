"""The training loop: seeded, checkpointed every epoch, exactly resumable.

``train(spec, data, workdir=...)`` builds the model and the regularizers, trains with
SGD or Adam, evaluates on the validation split each epoch, checkpoints (model,
optimizer, scheduler, every RNG state, epoch, early-stopping state, history) to
``workdir/last.pt``, and resumes from it when it exists: a run stopped after epoch k
and resumed ends with the same weights as one never stopped.

Per epoch it reports ``train/loss`` (the whole objective), ``train/data_loss``,
``train/accuracy``, one ``reg/<name>`` per regularizer with a penalty, ``val/loss``,
``val/accuracy``, ``lr`` and ``epoch_seconds``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from regcore.data import DataInfo, DataSplits, Split, load_dataset
from regcore.models import create_model
from regcore.regularizers import Regularizer, StepContext, build_regularizers
from regcore.regularizers.base import InputGradient, take_input_gradients
from regcore.runtime import Runtime, resolve_device
from regcore.spec import ExperimentSpec, TrainingSpec

CHECKPOINT_FORMAT = 1
NONFINITE_CHECK_EVERY = 20  # steps between host syncs that look for a nan/inf loss


class TrainingDivergedError(RuntimeError):
    """The loss became nan or inf; the message names the epoch and the step."""


class TrainingCancelledError(RuntimeError):
    """The cancel callback asked to stop; the last epoch's checkpoint is kept."""


@dataclass
class Callbacks:
    """Hooks for whoever supervises training (the CLI's progress bar, a worker)."""

    on_step: Callable[[int, int, int], None] | None = None  # (epoch, step in epoch, steps/epoch)
    on_epoch: Callable[[int, dict[str, float]], None] | None = None  # (epoch, metrics)
    should_cancel: Callable[[], bool] | None = None


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]]  # one row per epoch, with "epoch"
    epochs_run: int
    best_epoch: int | None  # with early stopping: the epoch whose weights were kept
    stopped_early: bool
    resumed_from_epoch: int  # 0 for a fresh run
    device: torch.device


@dataclass
class _EarlyStoppingState:
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0


@dataclass
class _Progress:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    early: _EarlyStoppingState = field(default_factory=_EarlyStoppingState)


# --------------------------------------------------------------------------- setup helpers


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # Set either way: a warm worker process runs many jobs, and the last one's choice
    # must not carry over into the next.
    torch.use_deterministic_algorithms(deterministic)


def build_model(spec: ExperimentSpec, info: DataInfo) -> tuple[nn.Module, dict[str, Regularizer]]:
    """The spec's model after its regularizers' model transforms (spectral norms, activation
    swaps), on the CPU: the structure a checkpoint's state dict loads into."""
    model = create_model(spec.model, info)
    regularizers = build_regularizers(spec.regularizers)
    for regularizer in regularizers.values():
        model = regularizer.setup(model, info)
    return model, regularizers


def build_optimizer(model: nn.Module, training: TrainingSpec) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    if training.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=training.lr,
            momentum=training.momentum,
            nesterov=training.nesterov,
            weight_decay=training.weight_decay,
        )
    optimizer_class = torch.optim.Adam if training.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(
        parameters, lr=training.lr, betas=training.betas, weight_decay=training.weight_decay
    )


def lr_factor(training: TrainingSpec, total_steps: int) -> Callable[[int], float]:
    """The schedule as a multiplier of the base lr, per optimizer step."""
    schedule = training.schedule
    if schedule.kind == "step":
        boundaries = [round(f * total_steps) for f in schedule.milestones]
        gamma = schedule.gamma
        return lambda step: gamma ** sum(step >= b for b in boundaries)
    if schedule.kind == "cosine":
        floor = schedule.min_lr_fraction
        return lambda step: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return lambda step: 1.0


def batch_order(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """A fresh shuffle of range(n) cut into batches (the last may be smaller). Drawn by the
    CPU ``generator`` (the same order on every device) and moved to ``device`` once per
    epoch, so no batch pays a host-to-device copy for its indices."""
    order = torch.randperm(n, generator=generator)  # (n,)
    if device is not None:
        order = order.to(device)
    return list(order.split(batch_size))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    batch_size: int = 1000,
    predictions: list[torch.Tensor] | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode; the model's mode is restored. Given
    ``predictions``, each batch's top-1 labels are appended to it: one pass serves both."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device, dtype=torch.long)
    for start in range(0, len(split), batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        logits = model(x)  # (B, C)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        predicted = logits.argmax(dim=1)  # (B,)
        correct += (predicted == y).sum()
        if predictions is not None:
            predictions.append(predicted)
    model.train(was_training)
    return loss_sum.item() / len(split), correct.item() / len(split)


# --------------------------------------------------------------------------- checkpoints


def _rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": shuffle.get_state(),
    }


def _restore_rng(state: Mapping[str, Any], shuffle: torch.Generator) -> None:
    # Generator states are CPU byte tensors, whatever device the checkpoint was loaded to.
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["key"].cpu().numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cuda_state.cpu() for cuda_state in state["cuda"]])
    shuffle.set_state(state["shuffle"].cpu())


def _save_atomically(payload: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain data only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# --------------------------------------------------------------------------- the loop


@dataclass
class RunState:
    """One run between epochs: what ``train()`` holds, and ``regcore.stacked`` per member."""

    spec: ExperimentSpec
    data: DataSplits  # on the device, as the steps want it
    model: nn.Module
    regularizers: dict[str, Regularizer]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator
    runtime: Runtime
    device: torch.device
    workdir: Path | None
    total_steps: int
    progress: _Progress
    resumed_from: int  # the epoch the checkpoint had reached, 0 for a fresh run
    best_state: dict[str, torch.Tensor] | None  # with early stopping: the best weights


def open_run(
    spec: ExperimentSpec,
    data: DataSplits | None = None,
    *,
    workdir: Path | None = None,
    resume: bool = True,
) -> RunState:
    """Seed, build the model, regularizers, optimizer and schedule, and resume from
    ``workdir/last.pt`` when it exists (every RNG state included)."""
    training = spec.training
    device = resolve_device(training.device)
    seed_everything(training.seed, training.deterministic)

    data = (data or load_dataset(spec.dataset, training.seed)).to(device)
    model, regularizers = build_model(spec, data.info)
    model.to(device)
    runtime = Runtime.build(training, model, regularizers, device)  # before the optimizer
    data = runtime.prepare_data(data)

    optimizer = build_optimizer(model, training)
    steps_per_epoch = math.ceil(len(data.train) / training.batch_size)
    total_steps = steps_per_epoch * training.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(training, total_steps))
    shuffle = torch.Generator().manual_seed(training.seed)
    progress = _Progress()

    checkpoint_path = workdir / "last.pt" if workdir is not None else None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path, device)
        if checkpoint.get("spec_hash") != spec.spec_hash():
            raise ValueError(f"{checkpoint_path} belongs to another spec; use a fresh workdir")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        for key, state in checkpoint["regularizers"].items():
            regularizers[key].load_state_dict(state)
        progress = _Progress(
            epoch=checkpoint["epoch"],
            global_step=checkpoint["global_step"],
            history=list(checkpoint["history"]),
            early=_EarlyStoppingState(**checkpoint["early_stopping"]),
        )
        _restore_rng(checkpoint["rng"], shuffle)
    best_state = _load_best(workdir, device) if progress.early.best_epoch else None
    return RunState(
        spec=spec, data=data, model=model, regularizers=regularizers, optimizer=optimizer,
        scheduler=scheduler, shuffle=shuffle, runtime=runtime, device=device,
        workdir=workdir, total_steps=total_steps, progress=progress,
        resumed_from=progress.epoch, best_state=best_state,
    )  # fmt: skip


def train(
    spec: ExperimentSpec,
    data: DataSplits | None = None,
    *,
    workdir: Path | None = None,
    callbacks: Callbacks | None = None,
    resume: bool = True,
) -> TrainResult:
    run = open_run(spec, data, workdir=workdir, resume=resume)
    run_epochs(run, callbacks or Callbacks())
    return finish_run(run)


def run_epochs(run: RunState, callbacks: Callbacks) -> None:
    """The epochs left of an opened run (``open_run``), each ended by ``end_epoch``. A
    caller that holds ``run`` sees ``run.model`` at every ``on_step`` (the
    ``training_animation`` analysis replays a run this way)."""
    training = run.spec.training
    for epoch in range(run.progress.epoch + 1, training.epochs + 1):
        if _is_finished(run.progress, training):  # patience ran out (possibly before a resume)
            break
        started = time.perf_counter()
        metrics = _train_one_epoch(
            run.model, run.data.train, run.regularizers, run.optimizer, run.scheduler,
            training, epoch, run.progress, run.shuffle, run.total_steps, callbacks, run.runtime,
        )  # fmt: skip
        if run.data.val is not None:
            metrics["val/loss"], metrics["val/accuracy"] = evaluate(
                run.model, run.data.val, training.eval_batch_size
            )
        metrics["epoch_seconds"] = time.perf_counter() - started
        end_epoch(run, epoch, metrics, callbacks)
        if callbacks.should_cancel is not None and callbacks.should_cancel():
            raise TrainingCancelledError(f"cancelled after epoch {epoch}")


def end_epoch(run: RunState, epoch: int, metrics: dict[str, float], callbacks: Callbacks) -> None:
    """After an epoch's steps and validation: the epoch-end hooks, the history, early
    stopping (``best.pt``), the checkpoint ``last.pt`` and the ``on_epoch`` callback."""
    for regularizer in run.regularizers.values():
        regularizer.on_epoch_end(epoch)
    progress = run.progress
    progress.epoch = epoch
    progress.history.append({"epoch": float(epoch), **metrics})
    if _update_early_stopping(progress.early, run.spec.training, epoch, metrics):
        run.best_state = copy.deepcopy(run.model.state_dict())
        if run.workdir is not None:
            _save_atomically({"epoch": epoch, "model": run.best_state}, run.workdir / "best.pt")
    if run.workdir is not None:
        _save_atomically(
            _checkpoint(
                run.spec, run.model, run.optimizer, run.scheduler, run.regularizers,
                progress, run.shuffle,
            ),
            run.workdir / "last.pt",
        )  # fmt: skip
    if callbacks.on_epoch is not None:
        callbacks.on_epoch(epoch, metrics)


def is_finished(run: RunState) -> bool:
    """All epochs done, or early stopping's patience ran out."""
    return run.progress.epoch >= run.spec.training.epochs or _is_finished(
        run.progress, run.spec.training
    )


def finish_run(run: RunState) -> TrainResult:
    """The result, with the best weights restored if early stopping asks for them."""
    training = run.spec.training
    early = training.early_stopping
    if early is not None and early.restore_best and run.best_state is not None:
        run.model.load_state_dict(run.best_state)
    progress = run.progress
    return TrainResult(
        model=run.model,
        history=progress.history,
        epochs_run=progress.epoch,
        best_epoch=progress.early.best_epoch,
        stopped_early=_is_finished(progress, training) and progress.epoch < training.epochs,
        resumed_from_epoch=run.resumed_from,
        device=run.device,
    )


@dataclass
class StepResult:
    """What one optimizer step leaves for the epoch's metrics (all detached)."""

    loss: torch.Tensor  # () the whole objective
    data_loss: torch.Tensor  # () mean cross-entropy
    logits: torch.Tensor  # (B, C)
    targets: torch.Tensor  # (B,) after the batch transforms
    terms: dict[str, torch.Tensor]  # () per regularizer that returned a penalty


def train_step(
    model: nn.Module,
    regularizers: Mapping[str, Regularizer],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epoch: int,
    step: int,
    steps_per_epoch: int,
    total_steps: int,
    needs_input_grad: bool | None = None,
    runtime: Runtime | None = None,
) -> StepResult:
    """One training step with every regularizer hook, in the order of
    ``regcore.regularizers.base``; ``step`` counts optimizer steps taken before this one.
    The epoch-end hooks are the caller's (the loop, or ``bench/`` timing a window).
    ``runtime`` (bf16 autocast, torch.compile; ``regcore.runtime``) defaults to plain fp32.
    Its phases (``prepare_batch``, ``penalty_terms``, ``before_optimizer_step``,
    ``after_optimizer_step``) are what a stacked step (``regcore.stacked``) runs per member."""
    runtime = runtime or Runtime(device=x.device)
    if needs_input_grad is None:
        needs_input_grad = any(r.needs_input_grad for r in regularizers.values())
    x, y = prepare_batch(model, regularizers, x, y, needs_input_grad)

    logits = runtime.forward(model, x)  # (B, C) fp32, whatever the forward ran in
    data_loss = F.cross_entropy(logits, y)
    ctx = StepContext(
        model=model, inputs=x, targets=y, logits=logits, data_loss=data_loss,
        epoch=epoch, step=step, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, lr=optimizer.param_groups[0]["lr"],
    )  # fmt: skip
    (terms,) = penalty_terms([(regularizers, ctx)], runtime)
    loss = data_loss + sum(terms.values()) if terms else data_loss

    optimizer.zero_grad(set_to_none=True)
    # Gradients of the optimizer's parameters only: an input that requires grad (input-
    # gradient penalties) would otherwise get a .grad nobody reads, at ~0.3x a LeNet step.
    loss.backward(inputs=[p for group in optimizer.param_groups for p in group["params"]])
    before_optimizer_step(model, regularizers, optimizer)
    optimizer.step()
    scheduler.step()
    after_optimizer_step(regularizers, ctx)
    return StepResult(
        loss=loss.detach(),
        data_loss=data_loss.detach(),
        logits=logits.detach(),
        targets=y,
        terms={name: term.detach() for name, term in terms.items()},
    )


def prepare_batch(
    model: nn.Module,
    regularizers: Mapping[str, Regularizer],
    x: torch.Tensor,
    y: torch.Tensor,
    needs_input_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Before the forward pass: the batch transforms, inputs that require grad when a
    penalty differentiates them, the ``before_forward`` hooks."""
    for regularizer in regularizers.values():
        x, y = regularizer.transform_batch(x, y)
    if needs_input_grad:
        x.requires_grad_(True)
    for regularizer in regularizers.values():
        regularizer.before_forward(model)
    return x, y


def penalty_terms(
    members: Sequence[tuple[Mapping[str, Regularizer], StepContext]],
    runtime: Runtime,
    scopes: Sequence[AbstractContextManager[Any]] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Each member's penalty terms (one member in ``train_step``; the members of a stacked
    step, each with the same regularizer keys, each inside its ``scopes`` entry, e.g. its
    own randomness). Regularizer by regularizer in spec order; the vector-Jacobian
    products that input-gradient penalties ask for (``Regularizer.input_gradient_requests``)
    are taken for all members at once, one backward pass per request."""
    scopes = scopes if scopes is not None else [contextlib.nullcontext()] * len(members)
    terms: list[dict[str, torch.Tensor]] = [{} for _ in members]
    for name in members[0][0]:
        autocast = name in runtime.autocast_penalties
        pending: list[tuple[int, Regularizer, StepContext, list[InputGradient]]] = []
        for index, (regularizers, ctx) in enumerate(members):
            regularizer = regularizers[name]
            with scopes[index], runtime.autocast(autocast):
                requests = regularizer.input_gradient_requests(ctx)
                term = regularizer.penalty(ctx) if requests is None else None
            if requests is not None:
                pending.append((index, regularizer, ctx, requests))
            elif term is not None:
                terms[index][name] = term.float()  # () a bf16 penalty joins an fp32 loss
        gradients: dict[int, list[torch.Tensor]] = {index: [] for index, *_ in pending}
        for k in range(max((len(requests) for *_, requests in pending), default=0)):
            asking = [
                (index, requests[k]) for index, _, _, requests in pending if k < len(requests)
            ]
            products = take_input_gradients([request for _, request in asking])
            for (index, _), product in zip(asking, products, strict=True):
                gradients[index].append(product)
        for index, regularizer, ctx, _ in pending:
            with scopes[index], runtime.autocast(autocast):
                term = regularizer.penalty_from_gradients(ctx, gradients[index])
            if term is not None:
                terms[index][name] = term.float()
    return terms


def before_optimizer_step(
    model: nn.Module, regularizers: Mapping[str, Regularizer], optimizer: torch.optim.Optimizer
) -> None:
    """After the backward pass: the ``after_backward`` hooks, then the ``before_step`` ones."""
    for regularizer in regularizers.values():
        regularizer.after_backward(model)
    for regularizer in regularizers.values():
        regularizer.before_step(model, optimizer)


def after_optimizer_step(regularizers: Mapping[str, Regularizer], ctx: StepContext) -> None:
    """After the optimizer and scheduler steps: the ``after_step`` hooks."""
    for regularizer in regularizers.values():
        regularizer.after_step(ctx)


def _train_one_epoch(
    model: nn.Module,
    train_split: Split,
    regularizers: dict[str, Regularizer],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    training: TrainingSpec,
    epoch: int,
    progress: _Progress,
    shuffle: torch.Generator,
    total_steps: int,
    callbacks: Callbacks,
    runtime: Runtime,
) -> dict[str, float]:
    model.train()
    device = train_split.x.device
    needs_input_grad = any(r.needs_input_grad for r in regularizers.values())
    lr_at_start = optimizer.param_groups[0]["lr"]
    # Sums stay on the device; the host syncs only every NONFINITE_CHECK_EVERY steps.
    sums = {name: torch.zeros((), device=device) for name in ("loss", "data_loss", "correct")}
    term_sums: dict[str, torch.Tensor] = {}  # only regularizers that return a penalty
    window: list[torch.Tensor] = []
    seen = 0

    batches = batch_order(len(train_split), training.batch_size, shuffle, device)
    steps_per_epoch = len(batches)
    for step_in_epoch, index in enumerate(batches):
        if callbacks.should_cancel is not None and callbacks.should_cancel():
            raise TrainingCancelledError(f"cancelled during epoch {epoch}, step {step_in_epoch}")
        x, y = train_split.x[index], train_split.y[index]  # (B, ...), (B,)
        result = train_step(
            model, regularizers, optimizer, scheduler, x, y,
            epoch=epoch, step=progress.global_step, steps_per_epoch=steps_per_epoch,
            total_steps=total_steps, needs_input_grad=needs_input_grad, runtime=runtime,
        )  # fmt: skip
        progress.global_step += 1

        batch = result.targets.shape[0]
        seen += batch
        sums["loss"] += result.loss * batch
        sums["data_loss"] += result.data_loss * batch
        sums["correct"] += (result.logits.argmax(dim=1) == result.targets).sum()
        for name, term in result.terms.items():
            term_sums[name] = term_sums.get(name, 0) + term * batch
        window.append(result.loss)
        if len(window) == NONFINITE_CHECK_EVERY or step_in_epoch == len(batches) - 1:
            _check_finite(window, epoch, step_in_epoch, result.terms, result.data_loss)
            window = []
        if callbacks.on_step is not None:
            callbacks.on_step(epoch, step_in_epoch + 1, steps_per_epoch)

    metrics = {
        "train/loss": sums["loss"].item() / seen,
        "train/data_loss": sums["data_loss"].item() / seen,
        "train/accuracy": sums["correct"].item() / seen,
        "lr": lr_at_start,
    }
    for name, term_sum in term_sums.items():
        metrics[f"reg/{name}"] = term_sum.item() / seen
    return metrics


def _check_finite(
    window: list[torch.Tensor],
    epoch: int,
    last_step: int,
    terms: Mapping[str, torch.Tensor],
    data_loss: torch.Tensor,
) -> None:
    finite = torch.isfinite(torch.stack(window))  # (W,)
    if bool(finite.all()):
        return
    offset = int((~finite).nonzero()[0, 0])
    first, value = last_step - len(window) + 1 + offset, float(window[offset])
    parts = ", ".join(
        [f"data_loss={float(data_loss.detach()):.4g}"]
        + [f"reg/{name}={float(term.detach()):.4g}" for name, term in terms.items()]
    )
    raise TrainingDivergedError(
        f"training diverged: loss is {value} at epoch {epoch}, step {first} "
        f"(last step checked: {parts}); lower the learning rate or the regularizer weights"
    )


def _update_early_stopping(
    state: _EarlyStoppingState, training: TrainingSpec, epoch: int, metrics: dict[str, float]
) -> bool:
    """Track the monitored metric; True when this epoch is the new best."""
    early = training.early_stopping
    if early is None:
        return False
    value = metrics["val/loss"] if early.metric == "val_loss" else -metrics["val/accuracy"]
    if state.best_value is None or value < state.best_value - early.min_delta:
        state.best_value, state.best_epoch, state.bad_epochs = value, epoch, 0
        return True
    state.bad_epochs += 1
    return False


def best_epoch_of(training: TrainingSpec, history: Sequence[Mapping[str, float]]) -> int | None:
    """The epoch early stopping picked, replayed from the per-epoch history (which records
    the validation metrics it monitors); None without early stopping."""
    if training.early_stopping is None:
        return None
    state = _EarlyStoppingState()
    for row in history:
        if "val/loss" in row and "val/accuracy" in row:
            _update_early_stopping(state, training, int(row["epoch"]), dict(row))
    return state.best_epoch


def _is_finished(progress: _Progress, training: TrainingSpec) -> bool:
    early = training.early_stopping
    return early is not None and progress.early.bad_epochs >= early.patience


def _load_best(workdir: Path | None, device: torch.device) -> dict[str, torch.Tensor] | None:
    path = workdir / "best.pt" if workdir is not None else None
    return load_checkpoint(path, device)["model"] if path is not None and path.exists() else None


def _checkpoint(
    spec: ExperimentSpec,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    regularizers: dict[str, Regularizer],
    progress: _Progress,
    shuffle: torch.Generator,
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "spec_hash": spec.spec_hash(),
        "epoch": progress.epoch,
        "global_step": progress.global_step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "regularizers": {name: r.state_dict() for name, r in regularizers.items()},
        "history": progress.history,
        "early_stopping": vars(progress.early),
        "rng": _rng_state(shuffle),
    }
