"""Robust accuracy under a registered attack: accuracy versus eps, versus steps, per class.

``samples`` test examples are drawn with the analysis' own ``seed`` (never the training
seed), so every model of a comparison is attacked on the same examples. A sample counts
as robust at eps when the model classifies it correctly both clean and at the attack's
x' with ||x' - x|| <= eps (as AutoAttack counts it); eps = 0 is the clean accuracy.

All budgets are attacked in one batched pass: each chunk of examples is repeated once
per positive eps and the attack gets the per-sample eps (AutoAttack, which takes one eps
per call, loops over the values). Budgets are in pixel units on inputs in [0, 1]; the
default [0, 0.05, 0.1, 0.2, 0.3] is MNIST-like for Linf ([0, 0.25, 0.5, 1, 2] for L2);
CIFAR-10's usual budgets are Linf 8/255 and L2 0.5, e.g. ``eps: [0, 0.0078, 0.0157,
0.0314]`` or ``{norm: l2, eps: [0, 0.25, 0.5, 1.0]}``.

Accuracy versus steps (methods with a ``steps`` parameter, i.e. PGD) attacks the same
examples once per entry of ``steps_curve`` at one eps (default the lower median of the
positive eps); alpha keeps its default 2.5 * eps / steps per run unless given.

The attack's randomness (random starts) comes from a generator seeded with ``seed``,
inside ``torch.random.fork_rng`` with the global generator seeded too, so repeated runs
give identical numbers and the training RNG is left as it was.

Metrics under ``attack/<method>_<norm>/``: ``clean_acc``, ``acc_eps{eps:g}`` for every
eps and ``acc_eps{eps:g}_steps{n}`` for the steps curve. Artifacts: curve.csv (eps,
accuracy), steps.csv (steps, eps, accuracy), per_class.csv (class, eps, accuracy, count,
name), examples.csv (test index, label, correct clean and at each eps) and the plots
accuracy_vs_eps.png and accuracy_vs_steps.png.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

from regcore.analysis import plots
from regcore.analysis.base import Analysis, AnalysisContext, AnalysisResult, batched
from regcore.attacks.base import Attack, Norm
from regcore.data.base import Split
from regcore.registries import ANALYSES, ATTACKS
from regcore.registry import (
    MAX_BATCH,
    MAX_COUNT,
    MAX_FLOAT,
    MAX_LIST,
    MAX_SAMPLES,
    MAX_SEED,
    ComponentParams,
    UnknownComponentError,
)

DEFAULT_EPS: dict[str, list[float]] = {
    "linf": [0.0, 0.05, 0.1, 0.2, 0.3],
    "l2": [0.0, 0.25, 0.5, 1.0, 2.0],
}
# Passed on to the method's own params when given (norm always); refused if it has none.
ATTACK_FIELDS = ("norm", "steps", "alpha", "random_start", "restarts", "version", "attacks")

Budget = Annotated[float, Field(ge=0, le=MAX_FLOAT, allow_inf_nan=False)]


class AttackAnalysisParams(ComponentParams):
    method: str = Field("pgd", description="a registered attack (see the catalog's attacks)")
    norm: Norm = Field("linf", description="distance of the budget, in pixel units")
    steps: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="attack steps; none: the method's default"
    )
    alpha: float | None = Field(
        None, gt=0, le=MAX_FLOAT, description="step size; none: 2.5 * eps / steps"
    )
    random_start: bool | None = Field(None, description="none: the method's default")
    restarts: int | None = Field(None, ge=1, le=MAX_COUNT, description="none: the method's default")
    version: Literal["standard", "rand", "custom"] | None = Field(
        None, description="AutoAttack's version; none: its default (standard)"
    )
    attacks: list[str] | None = Field(None, description="AutoAttack's attacks (version custom)")
    eps: list[Budget] = Field(
        DEFAULT_EPS["linf"],
        min_length=1,
        max_length=MAX_LIST,
        description="budgets in pixel units, sorted; default MNIST-like, for l2 "
        "[0, 0.25, 0.5, 1, 2] (CIFAR-10: Linf 8/255, L2 0.5)",
    )
    samples: int = Field(
        1000, ge=1, le=MAX_SAMPLES, description="test examples attacked (all if fewer)"
    )
    batch_size: int = Field(
        1000, ge=1, le=MAX_BATCH, description="rows (examples x eps values) per pass"
    )
    steps_curve: list[Annotated[int, Field(ge=1, le=MAX_COUNT)]] = Field(
        [1, 2, 5, 10, 20, 40],
        max_length=MAX_LIST,
        description="accuracy versus steps (methods with steps only); empty: skip",
    )
    steps_curve_eps: float | None = Field(
        None,
        gt=0,
        le=MAX_FLOAT,
        allow_inf_nan=False,
        description="eps of the steps curve; none: median eps",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="draws the examples and random starts; shared"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_eps_for_the_norm(cls, data: Any) -> Any:
        if isinstance(data, dict) and "eps" not in data and data.get("norm") == "l2":
            data = {**data, "eps": DEFAULT_EPS["l2"]}
        return data

    @field_validator("eps", "steps_curve")
    @classmethod
    def _sorted(cls, value: list[Any]) -> list[Any]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _method_takes_the_params(self) -> Self:
        self.attack_params()
        return self

    def attack_params(self) -> ComponentParams:
        """The method's own params from the fields given here; a clear error otherwise."""
        try:
            entry = ATTACKS.get(self.method)
        except UnknownComponentError as exc:
            raise ValueError(f"method: {exc}") from None
        accepted = entry.params.model_fields
        given = {name: getattr(self, name) for name in ATTACK_FIELDS}
        given = {name: value for name, value in given.items() if value is not None}
        if "norm" not in accepted and given["norm"] == "linf":
            del given["norm"]  # the default norm needs no parameter
        refused = sorted(name for name in given if name not in accepted)
        if refused:
            takes = ", ".join(accepted) or "(no params)"
            raise ValueError(
                f"attack {self.method!r} does not take {', '.join(refused)}; it takes: {takes}"
            )
        if "seed" in accepted:
            given["seed"] = self.seed
        try:
            return entry.params.model_validate(given)
        except ValidationError as exc:
            problems = "; ".join(
                ".".join(str(part) for part in error["loc"])
                + (": " if error["loc"] else "")
                + error["msg"].removeprefix("Value error, ")
                for error in exc.errors()
            )
            raise ValueError(f"attack {self.method!r}: {problems}") from None


def draw_examples(total: int, samples: int, seed: int) -> torch.Tensor:
    """(N,) sorted test indices; they depend only on the split's size and the seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[: min(samples, total)].sort().values


def examples(
    split: Split, samples: int, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices (N,), x (N, ...), y (N,)): the ``draw_examples`` points of a split, on
    ``device``; every analysis that takes them sees the same points for the same seed."""
    indices = draw_examples(len(split), samples, seed)  # (N,)
    at = indices.to(split.x.device)
    return indices, split.x[at].to(device), split.y[at].to(device)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) predicted labels, in batches."""
    return torch.cat(
        [model(x[start:stop]).argmax(dim=1) for start, stop in batched(len(x), batch_size)]
    )


def robust_correct(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: list[float],
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(E, N) bool: the model's prediction at the attack's x' is y, for each eps (E,).

    One batched pass: each chunk of examples is repeated once per positive eps. A row
    with eps = 0 is x itself (no attack). ``progress(examples done, examples)`` after
    each chunk.
    """
    correct = (predict(model, x, batch_size) == y).expand(len(eps), -1).clone()  # (E, N)
    rows = [i for i, value in enumerate(eps) if value > 0]
    if not rows:
        return correct
    budgets = torch.tensor([eps[i] for i in rows], dtype=torch.float64, device=x.device)
    attacked_rows = torch.tensor(rows, device=correct.device)  # (R,) on the device, once
    chunk = max(1, batch_size // len(rows))
    for start, stop in batched(len(x), chunk):
        count = stop - start
        xb = x[start:stop].repeat(len(rows), *([1] * (x.dim() - 1)))  # (R * n, ...)
        yb = y[start:stop].repeat(len(rows))  # (R * n,)
        x_adv = attack(model, xb, yb, budgets.repeat_interleave(count), generator=generator)
        with torch.no_grad():
            predicted = model(x_adv).argmax(dim=1).view(len(rows), count)  # (R, n)
        correct[attacked_rows, start:stop] = predicted == y[start:stop]
        if progress is not None:
            progress(stop, len(x))
    return correct


@ANALYSES.register("attack")
class AttackAnalysis(Analysis):
    """Robust accuracy under an attack: versus eps, versus steps and per class."""

    Params = AttackAnalysisParams
    params: AttackAnalysisParams

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        p = self.params
        attack_params = p.attack_params()
        attack: Attack = ATTACKS.build(p.method, attack_params)
        tag = f"{p.method}_{attack.norm}"
        split = ctx.data.test
        indices, x, y = examples(split, p.samples, p.seed, ctx.device)  # (N,), (N, ...), (N,)

        # torch.manual_seed seeds every CUDA device: fork them all, not just ctx.device.
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(p.seed)  # for any randomness an attack draws globally
            generator = torch.Generator(device=ctx.device).manual_seed(p.seed)
            clean = predict(ctx.model, x, p.batch_size) == y  # (N,)
            share = 0.8 if p.steps_curve else 1.0  # the steps curve is the rest

            def attacked(done: int, examples: int) -> None:
                ctx.report(share * done / examples, f"{tag}: {done}/{examples} examples")

            adversarial = robust_correct(
                attack,
                ctx.model,
                x,
                y,
                p.eps,
                batch_size=p.batch_size,
                generator=generator,
                progress=attacked,
            )  # (E, N)
            robust = (adversarial & clean).cpu()  # correct clean and under attack
            steps_eps, steps_accuracy = self._steps_curve(
                ctx.model, attack_params, x, y, clean, generator
            )

        metrics = {f"attack/{tag}/clean_acc": clean.double().mean().item()}
        accuracy = robust.double().mean(dim=1).tolist()  # (E,)
        for value, acc in zip(p.eps, accuracy, strict=True):
            metrics[f"attack/{tag}/acc_eps{value:g}"] = acc
        for steps, acc in steps_accuracy.items():
            metrics[f"attack/{tag}/acc_eps{steps_eps:g}_steps{steps}"] = acc

        outdir = ctx.outdir / "attack"
        outdir.mkdir(parents=True, exist_ok=True)
        label = f"{p.method} {attack.norm}"
        curve = zip(p.eps, accuracy, strict=True)
        artifacts = [_write_csv(outdir / "curve.csv", ["eps", "accuracy"], curve)]
        artifacts.append(
            plots.curves(
                p.eps,
                {label: accuracy},
                outdir / "accuracy_vs_eps.png",
                title=f"robust accuracy ({len(indices)} test examples)",
                xlabel=f"eps ({attack.norm}, pixel units)",
                ylabel="accuracy",
            )
        )
        if steps_accuracy:
            rows = [(steps, steps_eps, acc) for steps, acc in steps_accuracy.items()]
            artifacts.append(_write_csv(outdir / "steps.csv", ["steps", "eps", "accuracy"], rows))
            artifacts.append(
                plots.curves(
                    list(steps_accuracy),
                    {f"{label}, eps {steps_eps:g}": list(steps_accuracy.values())},
                    outdir / "accuracy_vs_steps.png",
                    title="robust accuracy versus attack steps",
                    xlabel="steps",
                    ylabel="accuracy",
                )
            )
        artifacts.append(self._per_class(outdir, ctx, y.cpu(), robust))
        artifacts.append(self._examples(outdir, indices, y.cpu(), clean.cpu(), robust))
        return AnalysisResult(metrics, artifacts)

    def _steps_curve(
        self,
        model: nn.Module,
        attack_params: ComponentParams,
        x: torch.Tensor,
        y: torch.Tensor,
        clean: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[float, dict[int, float]]:
        """(eps, {steps: robust accuracy}); empty when skipped."""
        p = self.params
        positive = [value for value in p.eps if value > 0]
        if not p.steps_curve or "steps" not in type(attack_params).model_fields:
            return 0.0, {}
        if p.steps_curve_eps is None and not positive:
            return 0.0, {}
        eps = (
            p.steps_curve_eps if p.steps_curve_eps is not None else statistics.median_low(positive)
        )
        curve: dict[int, float] = {}
        for steps in p.steps_curve:
            attack = ATTACKS.build(p.method, attack_params.model_copy(update={"steps": steps}))
            correct = robust_correct(
                attack, model, x, y, [eps], batch_size=p.batch_size, generator=generator
            )[0]
            curve[steps] = (correct & clean).double().mean().item()
        return eps, curve

    def _per_class(
        self, outdir: Path, ctx: AnalysisContext, y: torch.Tensor, robust: torch.Tensor
    ) -> Path:
        names = ctx.data.info.class_names
        rows = []
        for k in range(ctx.data.info.num_classes):
            members = y == k
            count = int(members.sum())
            if count == 0:
                continue
            for value, correct in zip(self.params.eps, robust, strict=True):
                rows.append((k, value, correct[members].double().mean().item(), count, names[k]))
        header = ["class", "eps", "accuracy", "count", "name"]
        return _write_csv(outdir / "per_class.csv", header, rows)

    def _examples(
        self,
        outdir: Path,
        indices: torch.Tensor,
        y: torch.Tensor,
        clean: torch.Tensor,
        robust: torch.Tensor,
    ) -> Path:
        header = ["index", "label", "clean"] + [f"eps{value:g}" for value in self.params.eps]
        rows = [
            [int(indices[n]), int(y[n]), int(clean[n]), *(int(c) for c in robust[:, n])]
            for n in range(len(indices))
        ]
        return _write_csv(outdir / "examples.csv", header, rows)


def _write_csv(path: Path, header: list[str], rows: Any) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
