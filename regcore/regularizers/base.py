"""The regularizer interface: every hook the training loop offers, each a no-op by default.

A regularizer overrides only what it needs; the loop never changes for a new one.
Order within one training step (``regcore.train``):

    model = reg.setup(model, info)           once, before the optimizer exists (spectral
                                             norm, orthogonal init, activation swaps)
    x, y = reg.transform_batch(x, y)         training batches only (noise, mixup)
    reg.before_forward(model)                e.g. perturb weights
    logits = model(x); data_loss = CE(logits, y)
    term = reg.penalty(ctx)                  added to the loss, logged as reg/<name>
    loss.backward()
    reg.after_backward(model)                e.g. restore perturbed weights
    reg.before_step(model, optimizer)        e.g. clip gradients
    optimizer.step(); scheduler.step()
    reg.after_step(ctx)                      e.g. project weights, decoupled decay
    reg.on_epoch_end(epoch)

State that must survive a resume goes through ``state_dict``/``load_state_dict``.
Two declared properties tell the loop how a regularizer runs on an accelerator
(``regcore.runtime``): ``double_backward`` (no torch.compile) and ``autocast_safe``
(the penalty may run under bf16 autocast).
Randomness comes from torch's global generator, which the loop seeds and checkpoints.

A penalty on input gradients of the training forward (jacobian, grad_reg) names the
vector-Jacobian products it needs (``input_gradient_requests``) and computes its term
from them (``penalty_from_gradients``); ``penalty`` composes the two. The loop takes the
products, so that a stacked step (``regcore.stacked``: several seeds trained as one
model) takes each one for all members in a single backward pass. ``stackable`` (with
``stack_note``) says whether the regularizer may train stacked (the catalog shows it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from regcore.data.base import DataInfo
from regcore.registry import ComponentParams


@dataclass(frozen=True)
class InputGradient:
    """One vector-Jacobian product a penalty needs: the gradient of ``outputs`` (weighted
    by ``grad_outputs``, like ``torch.autograd.grad``) with respect to ``inputs``, taken
    with ``create_graph=True`` so that a penalty on it trains the weights."""

    outputs: torch.Tensor
    inputs: torch.Tensor
    grad_outputs: torch.Tensor | None = None


def take_input_gradients(requests: Sequence[InputGradient]) -> list[torch.Tensor]:
    """The requested products (each shaped like its inputs), in ONE backward pass: the
    requests must differentiate distinct, independent inputs (one per stacked member),
    since the pass sums what every output contributes to every input."""
    gradients = torch.autograd.grad(
        [r.outputs for r in requests],
        [r.inputs for r in requests],
        grad_outputs=[r.grad_outputs for r in requests],
        retain_graph=True,
        create_graph=True,
    )
    return list(gradients)


@dataclass
class StepContext:
    """What a penalty may look at during one training step."""

    model: nn.Module
    inputs: torch.Tensor  # (B, ...) after batch transforms; requires grad if any reg asks
    targets: torch.Tensor  # (B,)
    logits: torch.Tensor  # (B, C)
    data_loss: torch.Tensor  # () mean cross-entropy of the batch
    epoch: int  # 1-based
    step: int  # optimizer steps taken before this one (0-based, global)
    steps_per_epoch: int
    total_steps: int
    lr: float  # learning rate of the first param group for this step


class Regularizer:
    """Base class: a registered regularizer subclasses this and sets ``Params``."""

    Params: ClassVar[type[ComponentParams]]
    needs_input_grad: ClassVar[bool] = False  # the loop sets inputs.requires_grad_(True)
    # The penalty differentiates a gradient (double backward): torch.compile cannot train
    # through it, so ``training.compile`` falls back to eager for such a spec.
    double_backward: ClassVar[bool] = False
    # With ``training.precision: bf16``, the penalty may run under bf16 autocast (its own
    # forward passes in bf16); set only where a test checks it against fp32. Otherwise it
    # runs outside autocast, on fp32 logits, and if it also ``needs_input_grad`` (it
    # differentiates the training forward itself) that forward stays fp32 too.
    autocast_safe: ClassVar[bool] = False
    # May train stacked with other seeds (regcore.stacked); if not, say why in stack_note.
    # stack_note also tells the catalog what stacking buys (e.g. extra forward passes run
    # member by member).
    stackable: ClassVar[bool] = True
    stack_note: ClassVar[str] = ""

    def __init__(self, params: ComponentParams) -> None:
        self.params = params

    def setup(self, model: nn.Module, info: DataInfo) -> nn.Module:
        """Transform the model before training (on the CPU, before it moves to the device)."""
        return model

    def transform_batch(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs, targets

    def before_forward(self, model: nn.Module) -> None:
        return None

    def penalty(self, ctx: StepContext) -> torch.Tensor | None:
        """The term added to the loss; by default the one ``penalty_from_gradients``
        computes from the products ``input_gradient_requests`` asks for (None if none)."""
        requests = self.input_gradient_requests(ctx)
        if requests is None:
            return None
        gradients = [take_input_gradients([request])[0] for request in requests]
        return self.penalty_from_gradients(ctx, gradients)

    def input_gradient_requests(self, ctx: StepContext) -> list[InputGradient] | None:
        """The vector-Jacobian products the penalty needs, or None when ``penalty`` does
        not go through them. Drawing random vectors here is drawing in the step."""
        return None

    def penalty_from_gradients(
        self, ctx: StepContext, gradients: list[torch.Tensor]
    ) -> torch.Tensor | None:
        """The term from the products ``input_gradient_requests`` asked for, in its order."""
        raise NotImplementedError(f"{type(self).__name__} asks for no input gradients")

    def after_backward(self, model: nn.Module) -> None:
        return None

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        return None

    def after_step(self, ctx: StepContext) -> None:
        return None

    def on_epoch_end(self, epoch: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


# --------------------------------------------------------------------------- shared helpers


def weight_parameters(model: nn.Module, exclude_bias_and_norm: bool) -> Iterator[nn.Parameter]:
    """Trainable parameters; optionally only the multi-dimensional ones (no biases, no
    norm-layer scales and shifts, no activation betas: all of those are 0- or 1-D)."""
    for parameter in model.parameters():
        if parameter.requires_grad and not (exclude_bias_and_norm and parameter.ndim <= 1):
            yield parameter


WeightLayer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


def select_layers(model: nn.Module, patterns: Iterable[str], who: str) -> dict[str, nn.Module]:
    """Conv and linear modules whose name matches one of the glob patterns; none is an error
    (``who`` names the regularizer in the message)."""
    patterns = list(patterns)
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, WeightLayer)
        and any(fnmatchcase(name, pattern) for pattern in patterns)
    }
    if not layers:
        raise ValueError(f"{who}: no conv/linear layer matches {patterns}")
    return layers


def stored_weight(module: nn.Module) -> torch.Tensor:
    """The trained weight tensor of a layer: under a parametrization (spectral norm, lcnn)
    the original one, since ``module.weight`` is recomputed from it at every access."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def squared_l2_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """sum_i ||w_i||^2 over the given tensors."""
    return _sum_nonempty([p.pow(2).sum() for p in parameters])


def l1_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """sum_i |w_i| over the given tensors."""
    return _sum_nonempty([p.abs().sum() for p in parameters])


def _sum_nonempty(terms: list[torch.Tensor]) -> torch.Tensor:
    if not terms:
        raise ValueError("the model has no parameters that this regularizer selects")
    return torch.stack(terms).sum()


def build_regularizers(specs: Iterable[Any]) -> dict[str, Regularizer]:
    """Instantiate a spec's regularizers, keyed by the name their term is logged under
    (``l2``, or ``l2_2`` for a second l2 in the same spec)."""
    from regcore.registries import REGULARIZERS

    built: dict[str, Regularizer] = {}
    for spec in specs:
        key, n = spec.name, 1
        while key in built:
            n += 1
            key = f"{spec.name}_{n}"
        built[key] = REGULARIZERS.get(spec.name).target(spec.params)
    return built
