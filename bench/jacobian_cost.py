"""The Jacobian regularizers' modes: step cost against a plain step, and estimator error.

``step_cost``: LeNet on real MNIST batches of 100 (random tensors of that shape when the
files are missing), regcore's own ``train_step``, CPU time (``time.process_time``) with
one torch thread. Every configuration runs ``steps`` steps per round, the order rotated
each round; a configuration's ratio is taken per round against ``none`` of that round,
and the median with the min-max of the per-round ratios is reported.

``estimator_error``: a penalty's draws on one fixed batch, in eval mode (no dropout, so
the exact value is one number), against the exact mean_b ||J_b||_F^2 (n_proj -1 on the
whole batch) or the whole-batch jacobian_det: relative bias with its standard error and
the relative standard deviation of one estimate.

    python -m bench.jacobian_cost [--rounds 7] [--steps 10] [--draws 2000] [--trained]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from regcore.data import DatasetNotFoundError, load_dataset
from regcore.data.base import DataInfo
from regcore.models import create_model
from regcore.regularizers import StepContext, build_regularizers
from regcore.spec import DatasetSpec, ExperimentSpec, ModelSpec, RegularizerSpec
from regcore.train import train, train_step

DATA_ROOT = "../shared/datasets"  # relative to the repository root
MNIST_INFO = DataInfo((1, 28, 28), 10, (0.1307,), (0.3081,), tuple("0123456789"))

COST_CONFIGURATIONS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "jacobian (n_proj 1)": [{"name": "jacobian"}],
    "jacobian subsample 10": [{"name": "jacobian", "subsample": 10}],
    "jacobian subsample 20": [{"name": "jacobian", "subsample": 20}],
    "jacobian_det (default)": [{"name": "jacobian_det"}],
    "jacobian_det subsample 8": [{"name": "jacobian_det", "subsample": 8}],
    "jacobian_det whole batch": [{"name": "jacobian_det", "subsample": None}],
}

JACOBIAN_ESTIMATORS: dict[str, dict[str, Any]] = {
    "n_proj 1": {"n_proj": 1},
    "n_proj 1, subsample 10": {"n_proj": 1, "subsample": 10},
    "n_proj 1, subsample 20": {"n_proj": 1, "subsample": 20},
    "exact, subsample 10": {"n_proj": -1, "subsample": 10},
}


def mnist_batches(batch: int, count: int, root: str = DATA_ROOT) -> list[tuple[Any, Any]]:
    """``count`` real MNIST training batches, or random tensors of that shape without the files."""
    try:
        spec = DatasetSpec.model_validate({"name": "mnist", "root": root})
        train_split = load_dataset(spec, seed=0).train
        x, y = train_split.x[: batch * count], train_split.y[: batch * count]
    except DatasetNotFoundError:
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(batch * count, *MNIST_INFO.input_shape, generator=generator)
        y = torch.randint(0, 10, (batch * count,), generator=generator)
    return list(zip(x.split(batch), y.split(batch), strict=True))


def _lenet() -> nn.Module:
    return create_model(ModelSpec.model_validate({"name": "lenet"}), MNIST_INFO)


def step_cost(
    configurations: Mapping[str, list[dict[str, Any]]] = COST_CONFIGURATIONS,
    *,
    batch: int = 100,
    steps: int = 10,
    rounds: int = 7,
) -> dict[str, dict[str, float]]:
    """Per configuration: median ms per step, and the median, min and max of the per-round
    ratios to ``none`` (which ``configurations`` must hold)."""
    torch.set_num_threads(1)
    batches = mnist_batches(batch, steps)
    setups = {}
    for label, specs in configurations.items():
        torch.manual_seed(0)
        regularizers = build_regularizers(RegularizerSpec.model_validate(s) for s in specs)
        model = _lenet()
        for regularizer in regularizers.values():
            model = regularizer.setup(model, MNIST_INFO)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        setups[label] = (model, regularizers, optimizer, scheduler)

    def run(label: str, first_step: int) -> float:
        model, regularizers, optimizer, scheduler = setups[label]
        started = time.process_time()
        for offset, (x, y) in enumerate(batches):
            train_step(
                model, regularizers, optimizer, scheduler, x, y, epoch=1,
                step=first_step + offset, steps_per_epoch=600, total_steps=60_000,
            )  # fmt: skip
        return (time.process_time() - started) / len(batches)

    labels = list(setups)
    for label in labels:
        run(label, 0)  # warm-up
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    for round_index in range(rounds):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            seconds[label].append(run(label, (round_index + 1) * steps))
    results = {}
    for label, values in seconds.items():
        ratios = [v / r for v, r in zip(values, seconds["none"], strict=True)]
        results[label] = {
            "ms": 1e3 * statistics.median(values),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    return results


def trained_lenet(epochs: int = 1, train_size: int = 6000) -> nn.Module:
    """LeNet after a short plain training on real MNIST (the study's lr and batch)."""
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "mnist", "root": DATA_ROOT, "train_size": train_size},
            "model": {"name": "lenet"},
            "training": {"epochs": epochs, "batch_size": 100, "lr": 0.1, "device": "cpu"},
        }
    )
    return train(spec).model


def _draws(name: str, params: dict[str, Any], ctx: StepContext, draws: int) -> torch.Tensor:
    regularizer = build_regularizers([RegularizerSpec.model_validate({"name": name, **params})])
    (only,) = regularizer.values()
    return torch.tensor([only.penalty(ctx).item() for _ in range(draws)], dtype=torch.float64)


def _error(values: torch.Tensor, exact: float) -> dict[str, float]:
    mean, std = values.mean().item(), values.std().item()
    standard_error = std / math.sqrt(len(values))
    return {
        "exact": exact,
        "mean": mean,
        "bias_rel": (mean - exact) / exact,
        "bias_rel_se": standard_error / exact,
        "z": (mean - exact) / standard_error if standard_error > 0 else 0.0,
        "std_rel": std / exact,
    }


def estimator_error(
    model: nn.Module, *, batch: int = 100, draws: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Each jacobian estimator (weight 2, so the penalty is J2) and jacobian_det's default
    against their exact whole-batch values, on one MNIST batch, model in eval mode."""
    torch.set_num_threads(1)
    (x, y), *_ = mnist_batches(batch, 1)
    model.eval()
    x = x.clone().requires_grad_(True)
    logits = model(x)  # (B, C) one forward, reused by every whole-batch draw
    ctx = StepContext(
        model=model, inputs=x, targets=y, logits=logits, data_loss=logits.new_zeros(()),
        epoch=1, step=0, steps_per_epoch=1, total_steps=1, lr=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    results = {}
    exact = _draws("jacobian", {"weight": 2.0, "n_proj": -1}, ctx, 1).item()
    for label, params in JACOBIAN_ESTIMATORS.items():
        values = _draws("jacobian", {"weight": 2.0, **params}, ctx, draws)
        results[f"jacobian {label}"] = _error(values, exact)
    det_exact = _draws("jacobian_det", {"weight": 1.0, "subsample": None}, ctx, 1).item()
    values = _draws("jacobian_det", {"weight": 1.0}, ctx, draws)
    results["jacobian_det (default subsample)"] = _error(values, det_exact)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per configuration and round")
    parser.add_argument("--draws", type=int, default=2000, help="estimator draws; 0: skip")
    parser.add_argument("--trained", action="store_true", help="errors on a trained LeNet too")
    args = parser.parse_args()

    print("step cost, LeNet, batch 100, CPU time, one thread: median ratio [min, max]")
    for label, row in step_cost(steps=args.steps, rounds=args.rounds).items():
        print(f"  {label:26s} {row['ms']:7.2f} ms  x{row['ratio']:.2f} "
              f"[{row['ratio_min']:.2f}, {row['ratio_max']:.2f}]")  # fmt: skip
    if args.draws == 0:
        return
    torch.manual_seed(0)
    models = {"random LeNet": _lenet()}
    if args.trained:
        models["trained LeNet (1 epoch, 6000 images)"] = trained_lenet()
    for title, model in models.items():
        print(f"estimator error, {title}, one batch of 100, {args.draws} draws")
        for label, row in estimator_error(model, draws=args.draws).items():
            print(f"  {label:34s} exact {row['exact']:10.4g}  bias {100 * row['bias_rel']:+6.2f}% "
                  f"(se {100 * row['bias_rel_se']:.2f}%, z {row['z']:+.2f})  "
                  f"std {100 * row['std_rel']:6.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
