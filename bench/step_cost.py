"""Cost of one training step under each regularizer, relative to no regularization.

Every configuration is timed side by side in one process on the same model, batch and
device, interleaved round by round so drift in the machine's speed hits them all alike.

    python -m bench.step_cost [--model lenet] [--device cpu] [--batch 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from regcore.data.base import DataInfo
from regcore.models import create_model
from regcore.registries import REGULARIZERS
from regcore.regularizers import Regularizer, StepContext, build_regularizers
from regcore.spec import ModelSpec, RegularizerSpec
from regcore.train import resolve_device

STEPS_PER_EPOCH = 600  # MNIST at batch 100
INPUT_SHAPES = {
    "lenet": (1, 28, 28),
    "mlp": (1, 28, 28),
    "ddnet": (3, 32, 32),
    "resnet18": (3, 32, 32),
}


def one_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    regularizers: dict[str, Regularizer],
    x: torch.Tensor,
    y: torch.Tensor,
    step: int,
) -> None:
    for regularizer in regularizers.values():
        x, y = regularizer.transform_batch(x, y)
    if any(r.needs_input_grad for r in regularizers.values()):
        x = x.clone().requires_grad_(True)
    for regularizer in regularizers.values():
        regularizer.before_forward(model)
    logits = model(x)  # (B, C)
    data_loss = F.cross_entropy(logits, y)
    # An MNIST-sized epoch, so once-per-epoch work (hard SVB, bound refreshes) is amortized
    # as in a real run.
    ctx = StepContext(model, x, y, logits, data_loss, 1 + step // STEPS_PER_EPOCH, step,
                      STEPS_PER_EPOCH, 100 * STEPS_PER_EPOCH, 0.01)  # fmt: skip
    terms = [t for r in regularizers.values() if (t := r.penalty(ctx)) is not None]
    loss = data_loss + sum(terms) if terms else data_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for regularizer in regularizers.values():
        regularizer.after_backward(model)
        regularizer.before_step(model, optimizer)
    optimizer.step()
    for regularizer in regularizers.values():
        regularizer.after_step(ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet", choices=sorted(INPUT_SHAPES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    device = resolve_device(args.device)
    shape = INPUT_SHAPES[args.model]
    info = DataInfo(shape, 10, (0.5,) * shape[0], (0.25,) * shape[0], tuple("0123456789"))
    x = torch.rand(args.batch, *shape, device=device)  # (B, C, H, W)
    y = torch.randint(0, 10, (args.batch,), device=device)  # (B,)

    configurations = {"none": []} | {name: [{"name": name}] for name in REGULARIZERS.names()}
    setups = {}
    for label, specs in configurations.items():
        torch.manual_seed(0)
        regularizers = build_regularizers(RegularizerSpec.model_validate(s) for s in specs)
        model = create_model(ModelSpec.model_validate({"name": args.model}), info)
        for regularizer in regularizers.values():
            model = regularizer.setup(model, info)
        model.to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        one_step(model, optimizer, regularizers, x, y, 0)  # warm-up
        setups[label] = (model, optimizer, regularizers)

    timings: dict[str, list[float]] = {label: [] for label in setups}
    for round_index in range(args.rounds):
        for label, (model, optimizer, regularizers) in setups.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for step in range(args.steps):
                one_step(model, optimizer, regularizers, x, y, round_index * args.steps + step + 1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[label].append((time.perf_counter() - started) / args.steps)

    base = statistics.median(timings["none"])
    print(f"{args.model} on {device}, batch {args.batch}: median step time, ratio to none")
    for label, values in timings.items():
        median = statistics.median(values)
        print(f"  {label:20s} {median * 1e3:8.2f} ms   x{median / base:5.2f}")


if __name__ == "__main__":
    main()
