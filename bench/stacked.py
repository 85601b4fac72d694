"""Seeds trained together: N seeds of one configuration trained as one stacked model
(``regcore.stacked.train_stacked``) against N separate trainings (``regcore.train.train``).

Each case is a configuration (model, data, batch, regularizers) and N seeds. Timed, per
side: from the N specs and their loaded datasets (as a warm worker holds them) to N
trained models, everything ``train`` does (building the models, every step, each
epoch's validation, the epoch-end hooks); no checkpoints are written. Both sides run in
one process, side by side, each round in a rotated order, and the speed-up is taken per
round (separate seconds / stacked seconds): its median and range over the rounds. On the
CPU the clock is CPU time with one torch thread; on CUDA, wall time between device
synchronizations (``bench.common.Clock``).

The default workload is LeNet on real MNIST at batch 100 (a slice of the training set
with validation in the proportion of a full run: 5,400 training and 600 validation
images, one epoch), plus the small MLP on scikit-learn's digits at batch 32, where a
step's fixed costs weigh most.

    python -m bench.stacked [--quick] [--members 5] [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.common import Clock, Spread, interleaved, ratio_spread, single_thread, timed
from regcore.data import DataSplits, load_dataset
from regcore.spec import ExperimentSpec
from regcore.stacked import stack_key, train_stacked
from regcore.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = ROOT.parent / "shared" / "datasets"
TARGET_CPU, TARGET_GPU = 3.0, 10.0  # issue 11: 5 LeNet seeds stacked vs separate


@dataclass(frozen=True)
class Case:
    """One configuration trained with N seeds, both ways."""

    name: str
    model: dict[str, Any]
    dataset: dict[str, Any]  # without the data root
    batch_size: int
    regularizers: list[dict[str, Any]] = field(default_factory=list)
    epochs: int = 1

    def specs(self, members: int, data_root: Path, device: str) -> list[ExperimentSpec]:
        dataset = dict(self.dataset)
        if dataset["name"] in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
            dataset["root"] = str(data_root)
        return [
            ExperimentSpec.model_validate(
                {
                    "name": f"{self.name}-seed{seed}",
                    "dataset": dataset,
                    "model": self.model,
                    "regularizers": self.regularizers,
                    "training": {
                        "epochs": self.epochs,
                        "batch_size": self.batch_size,
                        "lr": 0.05,
                        "seed": seed,
                        "device": device,
                    },
                }
            )
            for seed in range(members)
        ]


MNIST_SLICE = {"name": "mnist", "train_size": 5400, "val_fraction": 0.01}
QUICK_MNIST_SLICE = {"name": "mnist", "train_size": 400, "val_fraction": 0.002}
DIGITS = {"name": "digits", "size": 8}

CASES = (
    Case("lenet", {"name": "lenet"}, MNIST_SLICE, 100),
    Case("lenet dropout 0.5", {"name": "lenet", "dropout": 0.5}, MNIST_SLICE, 100),
    Case("lenet l2", {"name": "lenet"}, MNIST_SLICE, 100, [{"name": "l2", "weight": 1e-4}]),
    Case(
        "lenet jacobian",
        {"name": "lenet"},
        MNIST_SLICE,
        100,
        [{"name": "jacobian", "weight": 0.01}],
    ),
    Case("mlp digits", {"name": "mlp", "hidden": [256, 256]}, DIGITS, 32),
)


def quick_cases() -> tuple[Case, ...]:
    return (
        Case("lenet", {"name": "lenet"}, QUICK_MNIST_SLICE, 100),
        Case("mlp digits", {"name": "mlp", "hidden": [64]}, DIGITS, 32),
    )


def measure(
    *,
    data_root: Path = DATA_ROOT,
    device: str = "cpu",
    members: int = 5,
    rounds: int = 3,
    cases: Sequence[Case] | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """The stacked speed-up of every case: per case the seconds of each side and the
    per-round speed-up (``Spread.as_json`` dicts), members, batch and what was timed."""
    cases = cases if cases is not None else (quick_cases() if quick else CASES)
    torch_device = torch.device(device)
    clock = Clock(torch_device)
    target = TARGET_GPU if torch_device.type == "cuda" else TARGET_CPU
    results: list[dict[str, Any]] = []
    with single_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for case in cases:
            specs = case.specs(members, data_root, device)
            if stack_key(specs[0]) is None:
                results.append({"case": case.name, "skipped": "does not stack"})
                continue
            datas = [load_dataset(s.dataset, s.training.seed) for s in specs]
            tasks = {
                "separate": timed(lambda s=specs, d=datas: _separately(s, d), clock),
                "stacked": timed(lambda s=specs, d=datas: train_stacked(s, d), clock),
            }
            for task in tasks.values():  # warm-up: first calls, allocator, oneDNN kernels
                task()
            seconds = interleaved(tasks, rounds)
            speedup = ratio_spread(seconds["separate"], seconds["stacked"])
            results.append(
                {
                    "case": case.name,
                    "members": members,
                    "batch_size": case.batch_size,
                    "train_samples": len(datas[0].train),
                    "val_samples": len(datas[0].val) if datas[0].val is not None else 0,
                    "epochs": case.epochs,
                    "separate_s": Spread.of(seconds["separate"]).as_json(),
                    "stacked_s": Spread.of(seconds["stacked"]).as_json(),
                    "speedup": speedup.as_json(),
                    "target": target if case.model.get("name") == "lenet" else None,
                }
            )
    return {
        "device": device,
        "clock": clock.kind + (", one torch thread" if torch_device.type == "cpu" else ""),
        "cases": results,
    }


def _separately(specs: list[ExperimentSpec], datas: list[DataSplits]) -> None:
    for spec, data in zip(specs, datas, strict=True):
        train(spec, data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    args = parser.parse_args(argv)
    result = measure(
        data_root=args.data_root,
        device=args.device,
        members=args.members,
        rounds=args.rounds,
        quick=args.quick,
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
