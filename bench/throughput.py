"""Throughput: samples per second of each model, training and evaluating.

Training: ``regcore.train.train_step`` without regularizers (SGD with momentum, batch 100).
Evaluation: ``regcore.train.evaluate`` (eval mode, no gradients, batches of 1000, as the
loop evaluates its validation split). LeNet and the MLP see real MNIST; DDNet (CIFAR-10)
and ResNet-18 (CIFAR-100, its CIFAR stem) random tensors of CIFAR's shape. The models
take turns each round, in a rotated order; a rate per round, median [IQR].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bench.common import (
    WORKLOADS,
    BenchContext,
    Clock,
    SectionResult,
    interleaved,
    rate_spread,
    single_thread,
    workload_batches,
    workload_info,
)
from regcore.data import Split
from regcore.models import create_model
from regcore.spec import ModelSpec, TrainingSpec
from regcore.train import build_optimizer, evaluate, train_step

TRAIN_BATCH = 100
EVAL_BATCH = 1000
# Steps per round and evaluation samples per round: (full run, quick run).
PLANS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "lenet": ((20, 5000), (2, 200)),
    "mlp": ((20, 5000), (2, 200)),
    "ddnet": ((2, 500), (1, 100)),
    "resnet18": ((1, 100), (1, 20)),
}


def training_task(
    ctx: BenchContext, name: str, device: torch.device, steps: int, clock: Clock
) -> Callable[[], float]:
    workload = WORKLOADS[name]
    torch.manual_seed(0)
    model = create_model(ModelSpec.model_validate({"name": name}), workload_info(ctx, workload))
    model.to(device).train()
    optimizer = build_optimizer(model, TrainingSpec(lr=0.01))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = workload_batches(ctx, workload, steps, TRAIN_BATCH, device)

    def train_steps() -> None:
        for step, (x, y) in enumerate(batches):
            train_step(
                model, {}, optimizer, scheduler, x, y,
                epoch=1, step=step, steps_per_epoch=600, total_steps=60000,
            )  # fmt: skip

    train_steps()  # warm-up

    def run() -> float:
        started = clock()
        train_steps()
        return clock() - started

    return run


def evaluation_task(
    ctx: BenchContext, name: str, device: torch.device, samples: int, clock: Clock
) -> Callable[[], float]:
    workload = WORKLOADS[name]
    torch.manual_seed(0)
    model = create_model(ModelSpec.model_validate({"name": name}), workload_info(ctx, workload))
    model.to(device)
    ((x, y),) = workload_batches(ctx, workload, 1, samples, device, split="test")
    split = Split(x, y)  # (N, C, H, W), (N,)
    batch = min(EVAL_BATCH, samples)
    evaluate(model, split, batch)  # warm-up

    def run() -> float:
        started = clock()
        evaluate(model, split, batch)
        return clock() - started

    return run


def run(ctx: BenchContext) -> SectionResult:
    rounds = 2 if ctx.quick else 3
    names = ["lenet", "mlp"] if ctx.quick else list(PLANS)
    rows: list[dict[str, Any]] = []
    with single_thread():
        for device in ctx.devices:
            clock = Clock(device)
            plans = {name: PLANS[name][1 if ctx.quick else 0] for name in names}
            tasks: dict[str, Callable[[], float]] = {}
            for name, (steps, samples) in plans.items():
                tasks[f"{name}/train"] = training_task(ctx, name, device, steps, clock)
                tasks[f"{name}/eval"] = evaluation_task(ctx, name, device, samples, clock)
            ctx.log(f"throughput: {len(names)} models on {device} x {rounds} rounds")
            seconds = interleaved(tasks, rounds)
            for name, (steps, samples) in plans.items():
                rows.append(
                    {
                        "model": name,
                        "device": device.type,
                        "data": WORKLOADS[name].data,
                        "train_samples_per_s": rate_spread(
                            steps * TRAIN_BATCH, seconds[f"{name}/train"]
                        ).as_json(),
                        "eval_samples_per_s": rate_spread(
                            samples, seconds[f"{name}/eval"]
                        ).as_json(),
                    }
                )
    notes = [
        f"Training: batch {TRAIN_BATCH}, SGD with momentum, no regularizer; evaluation: "
        f"eval mode without gradients, batches of {EVAL_BATCH}. Median [IQR] over "
        f"{rounds} rounds; CPU: CPU time, one thread; CUDA: wall time."
    ]
    return SectionResult(rows, notes)
