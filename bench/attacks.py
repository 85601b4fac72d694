"""Attacks: adversarial examples per second with regcore's FGSM and PGD, against a plain
textbook PGD loop written here (same model, k, eps and step size).

``regcore.attacks.pgd`` handles per-sample budgets, L2 and restarts; the reference loop
below does only Linf with one budget, so the ratio shows what that generality costs.
LeNet on real MNIST test images (eps 0.3), DDNet on random CIFAR-shaped tensors (eps
8/255), both in eval mode, batch 100 (their weights are freshly initialized: an
attack's cost does not depend on them). Rounds rotate the order; per-round ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import (
    WORKLOADS,
    BenchContext,
    Clock,
    SectionResult,
    interleaved,
    rate_spread,
    ratio_spread,
    single_thread,
    timed,
    workload_batches,
    workload_info,
)
from regcore.attacks.pgd import eval_mode, fgsm, pgd
from regcore.models import create_model
from regcore.spec import ModelSpec

BATCH = 100
EPS = {"lenet": 0.3, "ddnet": 8 / 255}


def reference_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int
) -> torch.Tensor:
    """Madry et al.'s Linf PGD as textbooks write it: random start, sign steps, projection."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)  # (B, C, H, W)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


@dataclass(frozen=True)
class AttackCase:
    model: str
    steps: int  # 0: FGSM


def cases(quick: bool) -> list[AttackCase]:
    if quick:
        return [AttackCase("lenet", 0), AttackCase("lenet", 2)]
    return [AttackCase("lenet", 0), AttackCase("lenet", 10), AttackCase("lenet", 40),
            AttackCase("ddnet", 0), AttackCase("ddnet", 10)]  # fmt: skip


def run(ctx: BenchContext) -> SectionResult:
    rounds = 2 if ctx.quick else 3
    rows: list[dict[str, Any]] = []
    with single_thread():
        for device in ctx.devices:
            clock = Clock(device)
            models: dict[str, nn.Module] = {}
            batches: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            tasks: dict[str, Callable[[], float]] = {}
            for case in cases(ctx.quick):
                workload = WORKLOADS[case.model]
                if case.model not in models:
                    torch.manual_seed(0)
                    spec = ModelSpec.model_validate({"name": case.model})
                    model = create_model(spec, workload_info(ctx, workload)).to(device)
                    models[case.model] = model.eval()
                    (batches[case.model],) = workload_batches(
                        ctx, workload, 1, BATCH, device, split="test"
                    )
                model, (x, y), eps = models[case.model], batches[case.model], EPS[case.model]
                attacks = _attacks(model, x, y, eps, case.steps)
                for label, attack in attacks.items():
                    attack()  # warm-up
                    tasks[f"{case.model}/{case.steps}/{label}"] = timed(attack, clock)
            ctx.log(f"attacks: {len(tasks)} attacks on {device} x {rounds} rounds")
            seconds = interleaved(tasks, rounds)
            for case in cases(ctx.quick):
                key = f"{case.model}/{case.steps}"
                ours = seconds[f"{key}/regcore"]
                reference = seconds.get(f"{key}/reference")
                rows.append(
                    {
                        "model": case.model,
                        "device": device.type,
                        "attack": f"PGD-{case.steps}" if case.steps else "FGSM",
                        "eps": EPS[case.model],
                        "regcore_examples_per_s": rate_spread(BATCH, ours).as_json(),
                        "reference_examples_per_s": (
                            rate_spread(BATCH, reference).as_json() if reference else None
                        ),
                        "time_ratio_to_reference": (
                            ratio_spread(ours, reference).as_json() if reference else None
                        ),
                    }
                )
    notes = [
        f"Batch {BATCH}, eval mode; Linf, alpha = 2.5 eps / k, random start. The reference is "
        "a plain PGD loop (bench/attacks.py); FGSM has none. Ratio = regcore's time / the "
        f"reference's, per round; median [IQR] over {rounds} rounds."
    ]
    return SectionResult(rows, notes)


def _attacks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int
) -> dict[str, Callable[[], Any]]:
    if steps == 0:
        return {"regcore": lambda: fgsm(model, x, y, eps)}
    alpha = 2.5 * eps / steps

    def reference() -> torch.Tensor:
        with eval_mode(model):
            return reference_pgd(model, x, y, eps, alpha, steps)

    return {
        "regcore": lambda: pgd(model, x, y, eps=eps, steps=steps, alpha=alpha),
        "reference": reference,
    }
