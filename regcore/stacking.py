"""N models of one architecture evaluated as one stacked model, each with its own randomness.

``stack_models(models, randomness)`` builds a ``StackedModel`` over N member models (same
architecture, each with its own parameters, buffers and parametrizations): one forward
pass computes every member's logits. It is the compute of ``regcore.stacked``, which
trains the seeds of one configuration together.

Layout: member i's activations are the i-th of N equal blocks along dim 1 (features or
channels), so an input batch is ``torch.cat(member_inputs, dim=1)``, (B, N*C, H, W),
and the model's own ``forward`` runs unchanged on it. The leaf layers are replaced
through ``STACKED_LAYERS`` (type -> builder):

- convolutions: one grouped convolution (groups * N) over the concatenated weights (on
  the CPU in NCHW, each member's own convolution: see ``StackedModel``);
- linear layers: one batched matrix product over the stacked weights;
- ``Normalize``: the members' statistics concatenated;
- parameter-free elementwise or per-channel layers (activations, pooling, flatten):
  applied once to the whole stacked tensor;
- dropout: each member's own (``MemberwiseLayer``), or the identity where p = 0;
- anything else (batch norm, learnable activations, ...): ``MemberwiseLayer``, each
  member's own module on its own block, inside that member's randomness.

The weights are read from the member modules at every forward pass (through their
parametrizations, e.g. spectral norm's power iteration, exactly once as in a forward
of their own), so the members stay ordinary models: their optimizers, regularizer
hooks and checkpoints see plain parameters, and gradients flow back through the
concatenation. No operation mixes members, so the gradient of a sum of member losses
is each member's own gradient, and a single backward pass (or one vector-Jacobian
product for a double-backward penalty) serves all members.

Randomness: ``MemberRandomness`` holds one member's states of torch's global generators
(the CPU one and the training device's) and swaps them in around that member's code
(``with randomness:``), so a member draws its dropout masks, noise and projections from
the same stream, in the same order, as a run of its own would.

A model whose forward breaks the layout (e.g. ``torch.cat`` along dim 1 between blocks
of different members, parameters used outside a leaf layer, functional randomness)
cannot stack: ``stack_models`` checks the stacked forward against every member's own on
a probe batch in eval mode and raises ``StackingError`` on any difference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from regcore.models.layers import Normalize

PROBE_BATCH = 2
PROBE_RTOL, PROBE_ATOL = 1e-4, 1e-5


class StackingError(ValueError):
    """The models cannot be evaluated as one stacked model; the message says why."""


# --------------------------------------------------------------------------- randomness


class MemberRandomness:
    """One member's states of torch's global generators (the CPU one and, for a CUDA
    device, that device's), swapped in for the duration of ``with randomness:``.

    Created right after the member's model was built, it continues the stream the member's
    own run would continue. Python's and NumPy's generators are not swapped (regularizers
    draw from torch's only); ``regcore.stacked`` keeps their per-member states aside.
    """

    def __init__(self, device: torch.device) -> None:
        # the generator of the training device itself (cuda:1 is not the current device's)
        self.cuda: torch.device | None = device if device.type == "cuda" else None
        self._cpu, self._device = self._current()
        self._outer: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._depth = 0

    def _current(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None
        return torch.get_rng_state(), cuda

    def _install(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        cpu, cuda = state
        torch.set_rng_state(cpu)
        if cuda is not None and self.cuda is not None:
            torch.cuda.set_rng_state(cuda, self.cuda)

    def __enter__(self) -> MemberRandomness:
        self._depth += 1
        if self._depth == 1:  # nested scopes of the same member change nothing
            self._outer = self._current()
            self._install((self._cpu, self._device))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._outer is not None:
            self._cpu, self._device = self._current()
            self._install(self._outer)
            self._outer = None


# --------------------------------------------------------------------------- stacked layers


class StackedConv(nn.Module):
    """N convolutions as one grouped convolution over the members' concatenated weights;
    on the CPU in NCHW, where oneDNN's grouped convolutions are 1.5-3x slower than
    separate ones, each member's own convolution on its (contiguous) block instead."""

    _FUNCTIONS: ClassVar[dict[type[nn.Module], Callable[..., torch.Tensor]]] = {
        nn.Conv1d: F.conv1d,
        nn.Conv2d: F.conv2d,
        nn.Conv3d: F.conv3d,
    }

    def __init__(
        self, members: Sequence[nn.Module], randomness: Sequence[MemberRandomness]
    ) -> None:
        super().__init__()
        first = members[0]
        assert isinstance(first, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        self.members = list(members)  # a plain list: the members' parameters stay theirs
        self.function = next(f for t, f in self._FUNCTIONS.items() if isinstance(first, t))
        self.stride, self.padding = first.stride, first.padding
        self.dilation, self.member_groups = first.dilation, first.groups
        self.groups = first.groups * len(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous():  # NCHW
            blocks = x.chunk(len(self.members), dim=1)  # N x (B, in, H, W)
            return torch.cat(
                [
                    self.function(
                        block.contiguous(),
                        m.weight,
                        m.bias,
                        self.stride,
                        self.padding,
                        self.dilation,
                        self.member_groups,
                    )
                    for m, block in zip(self.members, blocks, strict=True)
                ],
                dim=1,
            )  # (B, N*out, H', W')
        weight = torch.cat([m.weight for m in self.members])  # (N*out, in/groups, *kernel)
        biases = [m.bias for m in self.members]
        bias = torch.cat(biases) if biases[0] is not None else None  # (N*out,)
        return self.function(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class StackedLinear(nn.Module):
    """N linear layers as one batched matrix product: (B, N*in) -> (B, N*out)."""

    def __init__(
        self, members: Sequence[nn.Module], randomness: Sequence[MemberRandomness]
    ) -> None:
        super().__init__()
        self.members = list(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise StackingError(f"stacked linear layers take (B, N*in) inputs, got {x.dim()}-d")
        n, batch = len(self.members), x.shape[0]
        weight = torch.stack([m.weight for m in self.members])  # (N, out, in)
        blocks = x.reshape(batch, n, -1).transpose(0, 1)  # (N, B, in)
        if self.members[0].bias is None:
            out = torch.bmm(blocks, weight.transpose(1, 2))  # (N, B, out)
        else:
            bias = torch.stack([m.bias for m in self.members]).unsqueeze(1)  # (N, 1, out)
            out = torch.baddbmm(bias, blocks, weight.transpose(1, 2))  # (N, B, out)
        return out.transpose(0, 1).reshape(batch, -1)  # (B, N*out)


class StackedNormalize(nn.Module):
    """The members' input normalizations with their statistics concatenated."""

    def __init__(
        self, members: Sequence[nn.Module], randomness: Sequence[MemberRandomness]
    ) -> None:
        super().__init__()
        self.members = list(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.cat([m.mean for m in self.members])  # (N*C, 1, 1) or (N*D,)
        std = torch.cat([m.std for m in self.members])
        return (x - mean) / std


class MemberwiseLayer(nn.Module):
    """Each member's own module on its own block, inside its randomness: exact for any
    layer (dropout masks, batch statistics, learnable activations), at N calls' cost.

    The block is made dense in the memory format of the member's own run
    (``StackedModel``'s ``member_memory_format``): a random mask is drawn in memory order
    (CUDA's dropout kernels even map random numbers to elements differently for strided
    inputs), so the member must see the very layout its run would."""

    def __init__(
        self, members: Sequence[nn.Module], randomness: Sequence[MemberRandomness]
    ) -> None:
        super().__init__()
        self.members = list(members)
        self.randomness = list(randomness)
        self.memory_format = torch.contiguous_format  # set by StackedModel for 4-d blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for member, randomness, block in zip(
            self.members, self.randomness, x.chunk(len(self.members), dim=1), strict=True
        ):
            layout = self.memory_format if block.dim() == 4 else torch.contiguous_format
            with randomness:
                outputs.append(member(block.contiguous(memory_format=layout)))  # (B, F_out, ...)
        return torch.cat(outputs, dim=1)  # (B, N*F_out, ...)


def shared_layer(members: Sequence[nn.Module], randomness: Sequence[MemberRandomness]) -> nn.Module:
    """A parameter-free elementwise or per-channel layer, applied once to all blocks."""
    return copy.deepcopy(members[0])


def stacked_dropout(
    members: Sequence[nn.Module], randomness: Sequence[MemberRandomness]
) -> nn.Module:
    """Dropout of probability 0 everywhere draws nothing and changes nothing: the
    identity; otherwise each member's own dropout draws its mask (``MemberwiseLayer``)."""
    if all(getattr(m, "p", None) == 0 for m in members):
        return nn.Identity()
    return MemberwiseLayer(members, randomness)


LayerBuilder = Callable[[Sequence[nn.Module], Sequence[MemberRandomness]], nn.Module]

SHARED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.GELU, nn.SiLU, nn.ELU,
    nn.LeakyReLU, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
)  # fmt: skip

STACKED_LAYERS: dict[type[nn.Module], LayerBuilder] = {
    nn.Conv1d: StackedConv,
    nn.Conv2d: StackedConv,
    nn.Conv3d: StackedConv,
    nn.Linear: StackedLinear,
    Normalize: StackedNormalize,
    nn.Dropout: stacked_dropout,
    **{kind: shared_layer for kind in SHARED_TYPES},
}
"""How each layer type stacks (looked up along the class's MRO, so a parametrized layer
finds its base class); a leaf of any other type becomes a ``MemberwiseLayer``."""


def _builder(members: Sequence[nn.Module]) -> LayerBuilder | None:
    first = members[0]
    for kind in type(first).__mro__:
        builder = STACKED_LAYERS.get(kind)
        if builder is not None:
            return builder if _stacks_as_one(members) else MemberwiseLayer
    return MemberwiseLayer if not first._modules else None


def _stacks_as_one(members: Sequence[nn.Module]) -> bool:
    """A grouped/batched layer needs the same configuration in every member."""
    first = members[0]
    if isinstance(first, nn.Conv1d | nn.Conv2d | nn.Conv3d) and first.padding_mode != "zeros":
        return False
    if isinstance(first, SHARED_TYPES):  # one module for all: configured alike, no state
        same = all(m.extra_repr() == first.extra_repr() for m in members)
        return same and next(first.parameters(), None) is None
    return True


# --------------------------------------------------------------------------- the stacked model


def _kind(module: nn.Module) -> type[nn.Module]:
    """The module's class; for a parametrized one (a class made per instance), the original."""
    if parametrize.is_parametrized(module):
        return type(module).__bases__[0]
    return type(module)


def _skeleton(
    members: Sequence[nn.Module], randomness: Sequence[MemberRandomness], path: str
) -> nn.Module:
    """A copy of the members' module tree whose leaves compute all members at once."""
    first = members[0]
    kinds = {_kind(m) for m in members}
    if len(kinds) > 1:
        raise StackingError(
            f"{path or 'model'}: members differ in type ({sorted(map(str, kinds))})"
        )
    builder = _builder(members)
    if builder is not None:
        return builder(members, randomness)
    names = list(first._modules)
    if any(list(m._modules) != names for m in members):
        raise StackingError(f"{path or 'model'}: members have different submodules")
    own = [name for name, p in first._parameters.items() if p is not None]
    own += [name for name, b in first._buffers.items() if b is not None]
    if own:
        raise StackingError(
            f"{path or 'model'} ({type(first).__name__}) holds {own} outside its layers"
        )
    if first._forward_hooks or first._forward_pre_hooks:
        raise StackingError(f"{path or 'model'} has forward hooks")
    clone = copy.copy(first)  # the container's forward, without its children
    clone.__dict__["_parameters"] = {}
    clone.__dict__["_buffers"] = {}
    clone.__dict__["_non_persistent_buffers_set"] = set()
    children: dict[str, nn.Module | None] = {}
    for name, child in first._modules.items():
        if child is None:
            children[name] = None
            continue
        parts = [m._modules[name] for m in members]
        children[name] = _skeleton(parts, randomness, f"{path}.{name}" if path else name)
    clone.__dict__["_modules"] = children
    return clone


class StackedModel(nn.Module):
    """N members evaluated as one: ``forward(inputs)`` takes the members' batches, N x
    (B, ...), and returns their logits (B, N, C); member i's are ``logits[:, i]``.

    ``member_memory_format``: the layout of the members' own runs (channels-last if their
    spec asks for it), in which ``MemberwiseLayer`` hands each member its block.

    ``channels_last``: image batches go through in the channels-last memory format, for
    one grouped convolution per layer (on the CPU in NCHW, ``StackedConv`` runs each
    member's own instead: oneDNN's grouped convolutions are 1.5-3x slower there, and on
    par in channels-last; LeNet, one thread). Only where the layout cannot change the
    result: max pooling breaks exact ties by memory order, and although the gradient
    routed to either of two tied inputs trains the weights alike, the input gradient that
    a double-backward penalty (jacobian, grad_reg) differentiates again does not; so
    those keep the layout of a run of their own (and its very convolutions)."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        randomness: Sequence[MemberRandomness],
        channels_last: bool = False,
        member_memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        super().__init__()
        if len(members) != len(randomness) or not members:
            raise ValueError("one randomness per member, and at least one member")
        self.members = list(members)  # a plain list: the members' parameters stay theirs
        self.body = _skeleton(self.members, list(randomness), "")
        self.channels_last = channels_last
        for module in self.body.modules():  # the layout a member's own run has
            if isinstance(module, MemberwiseLayer):
                module.memory_format = member_memory_format

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(list(inputs), dim=1)  # (B, N*C, ...)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.body(x)  # (B, N*classes)
        return logits.view(logits.shape[0], len(self.members), -1)  # (B, N, classes)

    def train(self, mode: bool = True) -> StackedModel:
        """Sets the mode of the stacked layers and of every member model."""
        super().train(mode)
        for member in self.members:
            member.train(mode)
        return self


@torch.no_grad()
def check_stacked(stacked: StackedModel, input_shape: tuple[int, ...]) -> None:
    """The stacked forward equals every member's own on a probe batch, in eval mode
    (no randomness, no statistics updated); raises ``StackingError`` otherwise."""
    reference = next(stacked.members[0].parameters())
    generator = torch.Generator().manual_seed(0)  # not the global one: no member draws
    probes = [
        torch.rand(PROBE_BATCH, *input_shape, generator=generator).to(reference)
        for _ in stacked.members
    ]
    was_training = stacked.training
    stacked.eval()
    try:
        together = stacked(probes)  # (B, N, C)
        for index, (member, probe) in enumerate(zip(stacked.members, probes, strict=True)):
            alone = member(probe)  # (B, C)
            if together[:, index].shape != alone.shape or not torch.allclose(
                together[:, index], alone, rtol=PROBE_RTOL, atol=PROBE_ATOL
            ):
                raise StackingError(
                    f"the stacked forward of member {index} differs from its own forward: "
                    "the model's forward mixes members (see regcore.stacking)"
                )
    except RuntimeError as exc:  # a shape error inside the model's own forward code
        raise StackingError(f"the model's forward does not run stacked: {exc}") from exc
    finally:
        stacked.train(was_training)


def stack_models(
    models: Sequence[nn.Module],
    randomness: Sequence[MemberRandomness],
    input_shape: tuple[int, ...],
    channels_last: bool = False,
    member_memory_format: torch.memory_format = torch.contiguous_format,
) -> StackedModel:
    """The members as one ``StackedModel``, checked on a probe batch (``check_stacked``)."""
    stacked = StackedModel(models, randomness, channels_last, member_memory_format)
    check_stacked(stacked, input_shape)
    return stacked


__all__ = [
    "STACKED_LAYERS",
    "MemberRandomness",
    "StackedModel",
    "StackingError",
    "check_stacked",
    "stack_models",
]
