"""Step cost: each regularizer's training step relative to no regularization.

LeNet on real MNIST batches (batch 100) and DDNet on random tensors of CIFAR-10's shape
(CIFAR is not on this machine), every registered regularizer with its default params,
plus model dropout. Each configuration has its own model and optimizer, built as
``regcore.train`` builds them, and takes ``regcore.train.train_step``, the training
loop's own step, so every hook runs as in a real run.

Method (one torch thread, CPU time): per round, each configuration trains a window of W
steps that ends on the last step of an epoch of 600 steps (a real MNIST epoch at batch
100), then its ``on_epoch_end`` hooks run. The first W - 1 steps are timed together
(t_plain, ordinary steps); the epoch's last step and the hooks are timed apart (t_end:
hard SVB's projection and the spectral-norm refresh happen there). The amortized step
is ((599 / (W - 1)) t_plain + t_end) / 600, what one step costs over a whole epoch. The
configurations take turns within a round, the order rotated each round, and the ratio
to ``none`` is taken per round; the table shows its median and interquartile range over
the rounds (results.json also the min and max). The W batches are gathered once, before
timing: the loop's per-step gather is the same for every configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from bench.common import (
    WORKLOADS,
    BenchContext,
    Clock,
    SectionResult,
    Spread,
    Workload,
    interleaved,
    ratio_spread,
    single_thread,
    workload_batches,
    workload_info,
)
from regcore.data import DataInfo
from regcore.registries import REGULARIZERS
from regcore.regularizers import Regularizer
from regcore.spec import ExperimentSpec, RegularizerSpec
from regcore.train import build_model, build_optimizer, train_step

STEPS_PER_EPOCH = 600  # MNIST's 60,000 training images at batch 100
BATCH = 100
LR = 0.01  # small enough that no configuration diverges within a benchmark

# Targets of issue 11 (CPU, LeNet): the largest acceptable ratio to `none`.
FIRST_ORDER = (
    "l1", "l2", "elastic_net", "confidence_penalty", "label_smoothing", "input_noise",
    "weight_noise", "mixup", "cutout", "augment", "grad_clip", "dropout",
)  # fmt: skip
CHEAP_JACOBIAN = "jacobian subsample 10"
TARGETS: dict[str, float] = {name: 1.10 for name in FIRST_ORDER} | {
    "svb_soft": 1.3,
    "svb_hard": 1.05,
    "jacobian": 3.1,
    CHEAP_JACOBIAN: 1.5,
    "jacobian_det": 3.0,
}


# Regularizers that only act on a model built for them: the ratio includes that model's cost.
MODEL_CHANGES: dict[str, dict[str, Any]] = {
    "beta_penalty": {"activation": "centered_softplus"},  # penalizes the softplus betas
}
# Modes other than the defaults that have targets of their own.
VARIANTS: dict[str, dict[str, Any]] = {
    CHEAP_JACOBIAN: {"name": "jacobian", "subsample": 10},  # the cheap mode
}
QUICK = ("l2", "svb_hard", "spectral_norm")


def configurations(quick: bool) -> dict[str, dict[str, Any]]:
    """label -> spec changes: none, model dropout, every regularizer at its defaults, and
    the VARIANTS that this tree's regularizers accept."""
    names = QUICK if quick else REGULARIZERS.names()
    found: dict[str, dict[str, Any]] = {"none": {}, "dropout": {"model": {"dropout": 0.5}}}
    for name in names:
        found[name] = {"model": MODEL_CHANGES.get(name, {}), "regularizers": [{"name": name}]}
    for label, regularizer in ({} if quick else VARIANTS).items():
        try:
            RegularizerSpec.model_validate(regularizer)
        except ValidationError:
            continue  # a mode this tree does not have
        found[label] = {"regularizers": [regularizer]}
    return found


@dataclass
class Trainer:
    """One configuration's model, regularizers, optimizer and schedule, and its step count."""

    model: nn.Module
    regularizers: dict[str, Regularizer]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0  # optimizer steps taken

    def train_steps(self, batches: list[tuple[torch.Tensor, torch.Tensor]], count: int) -> None:
        for index in range(count):
            x, y = batches[(self.step + index) % len(batches)]
            train_step(
                self.model, self.regularizers, self.optimizer, self.scheduler, x, y,
                epoch=1 + self.step // STEPS_PER_EPOCH, step=self.step,
                steps_per_epoch=STEPS_PER_EPOCH, total_steps=100 * STEPS_PER_EPOCH,
            )  # fmt: skip
            self.step += 1

    def end_epoch(self) -> None:
        for regularizer in self.regularizers.values():
            regularizer.on_epoch_end(self.step // STEPS_PER_EPOCH)


def build_trainer(
    workload: Workload, changes: dict[str, Any], info: DataInfo, device: torch.device
) -> Trainer:
    """As ``regcore.train.train`` builds it: model, regularizers' setup, optimizer, schedule."""
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": workload.dataset},
            "model": {"name": workload.model, **changes.get("model", {})},
            "regularizers": changes.get("regularizers", []),
            "training": {"lr": LR, "batch_size": BATCH, "device": str(device)},
        }
    )
    torch.manual_seed(0)
    model, regularizers = build_model(spec, info)
    model.to(device).train()
    optimizer = build_optimizer(model, spec.training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return Trainer(model, regularizers, optimizer, scheduler)


def epoch_window_task(
    trainer: Trainer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    window: int,
    clock: Clock,
) -> Callable[[], float]:
    """A task for ``interleaved``: the next window of ``window`` steps ending an epoch,
    then the epoch-end hooks; returns the amortized seconds of one step."""

    def run() -> float:
        # Skip ahead so the window's last step is the last step of an epoch.
        trainer.step += (-trainer.step - window) % STEPS_PER_EPOCH
        started = clock()
        trainer.train_steps(batches, window - 1)
        middle = clock()
        trainer.train_steps(batches, 1)
        trainer.end_epoch()
        ended = clock()
        plain = (middle - started) / (window - 1)
        return ((STEPS_PER_EPOCH - 1) * plain + (ended - middle)) / STEPS_PER_EPOCH

    return run


def measure(
    ctx: BenchContext, model_name: str, device: torch.device, *, window: int, rounds: int
) -> list[dict[str, Any]]:
    workload = WORKLOADS[model_name]
    info = workload_info(ctx, workload)
    batches = workload_batches(ctx, workload, window, BATCH, device)
    clock = Clock(device)
    trainers = {
        label: build_trainer(workload, changes, info, device)
        for label, changes in configurations(ctx.quick).items()
    }
    for trainer in trainers.values():
        trainer.train_steps(batches, 2)  # warm-up: lazy initializations, allocator
    ctx.log(f"step_cost: {model_name} on {device}, {len(trainers)} configurations x {rounds}")
    tasks = {label: epoch_window_task(t, batches, window, clock) for label, t in trainers.items()}
    seconds = interleaved(tasks, rounds)

    rows = []
    for label, values in seconds.items():
        ratio = ratio_spread(values, seconds["none"])
        target = TARGETS.get(label) if model_name == "lenet" and device.type == "cpu" else None
        rows.append(
            {
                "model": model_name,
                "device": device.type,
                "data": workload.data,
                "configuration": label,
                "step_ms": Spread.of(values).scaled(1e3).as_json(),
                "ratio": ratio.as_json(),
                "target": target,
                "meets": None if target is None else ratio.median <= target,
            }
        )
    return rows


def run(ctx: BenchContext) -> SectionResult:
    # (model, window W, rounds): DDNet steps cost ~30x LeNet's on one CPU thread.
    plans = [("lenet", 3, 2)] if ctx.quick else [("lenet", 10, 15), ("ddnet", 4, 3)]
    rows: list[dict[str, Any]] = []
    notes = [
        f"Amortized over a {STEPS_PER_EPOCH}-step epoch: a window of W steps ending the epoch, "
        "then the epoch-end hooks (hard SVB projection, spectral-norm refresh inside it); "
        f"W = {', '.join(f'{m} {w}' for m, w, _ in plans)}; rounds = "
        f"{', '.join(f'{m} {r}' for m, _, r in plans)}; order rotated each round; ratio "
        "per round to `none`, median [IQR]. CPU: CPU time, one thread; CUDA: wall time.",
        "LeNet trains on real MNIST batches; DDNet on random tensors of CIFAR-10 shape "
        "(CIFAR is not on this machine). Every regularizer at its defaults; beta_penalty "
        "with the centered-softplus activation it needs (its ratio includes that model). "
        "Targets (issue 11) apply to LeNet on the CPU.",
    ]
    with single_thread():
        for device in ctx.devices:
            for model_name, model_window, model_rounds in plans:
                rows += measure(ctx, model_name, device, window=model_window, rounds=model_rounds)
    return SectionResult(rows, notes)
