"""Spectral normalization as a Lipschitz bound (Miyato et al. 2018, https://arxiv.org/abs/1802.05957;
the conv variant of Srinivas et al. NeurIPS 2022, "Efficient training of low-curvature
neural networks", https://openreview.net/forum?id=2B2xIJ299rx).

Every chosen layer's weight is reparametrized as ``W_eff = W / max(1, sigma(W) / gamma)``,
so its operator norm is at most gamma: a layer already within the bound is left as it
is (the paper's Lipschitz constraint), a larger one is scaled down onto it. sigma(W) is
the largest singular value of the linear map the layer computes (bias aside), estimated
from a persistent vector in a module buffer (saved with ``model.state_dict``):

- linear layers: the matrix W, through PyTorch's own spectral-norm parametrization
  (``torch.nn.utils.parametrizations``: vectors u, v, 15 power iterations at
  registration, ``power_iterations`` per training forward, sigma = u^T W v). PyTorch's
  divides by sigma always (norm exactly 1); here it is the same bound as for convs.
- convolutions: the TRUE operator norm of the convolution on the layer's real input size
  (C_in, H, W), not the norm of the reshaped kernel (which can be smaller or larger):
  u <- normalize(conv_transpose(conv(u))) with the layer's stride, padding, dilation and
  groups (output padding so that conv_transpose is the exact adjoint), and
  sigma = ||conv(u)|| for the unit vector u. Input sizes are found in ``setup`` by one
  eval-mode forward pass of a dummy input of ``DataInfo.input_shape``.

As in PyTorch, the vectors move only in training mode, without gradient, and the
gradient flows through sigma (while the bound is active). These estimates approach sigma
from below, so the bound holds only as far as they have converged, and one power
iteration per step lags behind: training raises the singular values the vector does not
see, until the top of the spectrum is a near-degenerate cluster that power iteration
resolves slowly (LeNet on digits, lr 0.1, 20 epochs: the layers end 1-15% above gamma;
with 1,000 more power iterations after every epoch the first conv is still 6e-4 above).
So at setup and after the last optimizer step of every epoch (before validation),
``eval_iterations`` Lanczos steps (Krylov iteration on W^T W from the stored vector, full
reorthogonalization) replace the vector by the top Ritz vector: on the trained LeNet's
convs 50 steps reach the exact norm to machine precision where 100 power iterations leave
1e-4 to 2e-4. The evaluated and checkpointed model thus honours the bound, and eval-mode
forward passes, which never iterate, cost nothing extra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from regcore.data.base import DataInfo
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_COUNT, MAX_FLOAT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext, select_layers

INIT_ITERATIONS = 15  # power iterations at registration, as torch's spectral_norm does
EPS = 1e-12  # guards the normalization of a zero vector (torch's default)

Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d
_CONV_FUNCTIONS: dict[int, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    1: (F.conv1d, F.conv_transpose1d),
    2: (F.conv2d, F.conv_transpose2d),
    3: (F.conv3d, F.conv_transpose3d),
}


class SpectralNormParams(ComponentParams):
    gamma: float = Field(
        1.0, gt=0, le=MAX_FLOAT, description="upper bound on each layer's operator norm"
    )
    layers: list[str] = Field(
        ["*"], description="glob patterns over module names (e.g. 'fc*'); conv and linear only"
    )
    power_iterations: int = Field(
        1, ge=1, le=MAX_COUNT, description="power iterations per training forward"
    )
    eval_iterations: int = Field(
        50,
        ge=0,
        le=MAX_COUNT,
        description="Lanczos steps at setup and after each epoch's last step, so the "
        "evaluated and checkpointed model carries a converged norm estimate",
    )


# --------------------------------------------------------------------------- estimation


@torch.no_grad()
def lanczos_top_vector(
    operator: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int
) -> torch.Tensor:
    """Unit top eigenvector estimate of the symmetric PSD ``operator`` (here A^T A): the
    top Ritz vector of the Krylov space of ``start`` after ``steps`` Lanczos steps, with
    full reorthogonalization (twice, which suffices in floating point)."""
    n = start.numel()
    steps = min(steps, n)  # the Krylov space cannot grow beyond the whole space
    if steps < 1:
        return start / start.norm().clamp_min(EPS)
    basis = start.new_zeros(steps, n)  # (steps, n) orthonormal Krylov basis, row by row
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    basis[0] = start.flatten() / start.norm().clamp_min(EPS)
    tolerance = 1e3 * torch.finfo(start.dtype).eps
    k = 1
    for j in range(steps):
        w = operator(basis[j].view_as(start)).flatten()  # (n,)
        alphas.append(w @ basis[j])
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = w.norm()
        if j + 1 == steps or beta <= tolerance * max(a.abs() for a in alphas):
            break  # out of steps, or the Krylov space is invariant: it holds the top vector
        betas.append(beta)
        basis[j + 1] = w / beta
        k += 1
    tridiagonal = torch.diag(torch.stack(alphas))  # (k, k) = Q^T (A^T A) Q
    if betas:
        off = torch.stack(betas)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    _, ritz = torch.linalg.eigh(tridiagonal)  # ascending eigenvalues
    top = (ritz[:, -1] @ basis[:k]).view_as(start)
    return top / top.norm().clamp_min(EPS)


def _fp32(weight: torch.Tensor) -> torch.autocast:
    """Autocast off: under a bf16 forward (``training.precision``) sigma is still estimated
    in the weight's own precision, so the bound holds to fp32 rounding."""
    return torch.autocast(weight.device.type, enabled=False)


def _bounded(weight: torch.Tensor, sigma: torch.Tensor, gamma: float) -> torch.Tensor:
    """``W / max(1, sigma / gamma)``: no gradient through sigma while the bound is inactive."""
    return weight / (sigma / gamma).clamp_min(1.0)


class LinearSpectralBound(_SpectralNorm):
    """PyTorch's spectral-norm parametrization of a linear layer, as a bound <= gamma."""

    def __init__(self, weight: torch.Tensor, gamma: float, power_iterations: int) -> None:
        super().__init__(weight, n_power_iterations=power_iterations, eps=EPS)
        self.gamma = gamma

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # weight: (out, in); torch's buffers _u: (out,), _v: (in,)
        with _fp32(weight):
            if self.training:
                self._power_method(weight, self.n_power_iterations)
            # clones: a later in-place update must not corrupt this forward's graph (see torch)
            u = self._u.clone(memory_format=torch.contiguous_format)
            v = self._v.clone(memory_format=torch.contiguous_format)
            sigma = torch.vdot(u, torch.mv(weight, v))  # () estimate of ||W||_2, <= the true one
            return _bounded(weight, sigma, self.gamma)

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor, steps: int) -> None:
        """Lanczos on W^T W from the stored v; u = W v / ||W v|| (in place, like torch's)."""
        v = lanczos_top_vector(lambda x: torch.mv(weight.H, torch.mv(weight, x)), self._v, steps)
        self._v.copy_(v)
        self._u.copy_(F.normalize(torch.mv(weight, v), dim=0, eps=self.eps))

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, power_iterations={self.n_power_iterations}"


class ConvSpectralBound(nn.Module):
    """Bounds a convolution's true operator norm on inputs of size ``input_size`` by gamma."""

    _u: torch.Tensor

    def __init__(
        self, conv: Conv, input_size: tuple[int, ...], gamma: float, power_iterations: int
    ) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"spectral_norm: padding_mode {conv.padding_mode!r} is not supported "
                "(conv_transpose is the adjoint of zero padding only)"
            )
        self.gamma = gamma
        self.power_iterations = power_iterations
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding = _numeric_padding(conv)
        self._conv, self._conv_transpose = _CONV_FUNCTIONS[len(input_size) - 1]
        weight = conv.weight.detach()
        # conv_transpose can produce several input sizes from one output size; output
        # padding picks the layer's own, so that it is the exact adjoint of the conv
        out = self.apply_conv(weight.new_zeros(1, *input_size), weight)  # (1, C_out, H', W')
        full = [
            (o - 1) * s - 2 * p + d * (k - 1) + 1
            for o, s, p, d, k in zip(
                out.shape[2:], self.stride, self.padding, self.dilation, weight.shape[2:],
                strict=True,
            )
        ]  # fmt: skip
        self.output_padding = tuple(i - f for i, f in zip(input_size[1:], full, strict=True))
        u = weight.new_empty(1, *input_size).normal_()  # (1, C_in, H, W): the input space
        self.register_buffer("_u", u / u.norm().clamp_min(EPS))
        self._power_method(weight, INIT_ITERATIONS)

    def apply_conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A x: the layer's convolution without bias."""
        return self._conv(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def apply_adjoint(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A^T y, back to the input size."""
        return self._conv_transpose(
            y, weight, None, self.stride, self.padding, self.output_padding, self.groups,
            self.dilation,
        )  # fmt: skip

    @torch.no_grad()
    def _power_method(self, weight: torch.Tensor, iterations: int) -> None:
        u = self._u
        for _ in range(iterations):
            u = self.apply_adjoint(self.apply_conv(u, weight), weight)  # (1, C_in, H, W)
            u = u / u.norm().clamp_min(EPS)
        # in place, like torch's: buffers broadcast by DataParallel keep their updates
        self._u.copy_(u)

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor, steps: int) -> None:
        """Lanczos on A^T A from the stored u (in place)."""

        def normal_operator(x: torch.Tensor) -> torch.Tensor:  # A^T A
            return self.apply_adjoint(self.apply_conv(x, weight), weight)

        self._u.copy_(lanczos_top_vector(normal_operator, self._u, steps))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with _fp32(weight):
            if self.training:
                self._power_method(weight, self.power_iterations)
            u = self._u.clone(memory_format=torch.contiguous_format)  # see LinearSpectralBound
            sigma = self.apply_conv(u, weight).norm()  # () ||A u|| for unit u: <= ||A||_2
            return _bounded(weight, sigma, self.gamma)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value  # assigning a weight stores it as is; the forward bounds it

    def extra_repr(self) -> str:
        size = tuple(self._u.shape[1:])
        return f"gamma={self.gamma}, input_size={size}, power_iterations={self.power_iterations}"


SpectralBound = LinearSpectralBound | ConvSpectralBound


def _numeric_padding(conv: Conv) -> tuple[int, ...]:
    """The conv's zero padding per side as numbers (conv_transpose takes no 'same')."""
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0,) * len(conv.kernel_size)
    spans = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
    if any(span % 2 for span in spans):
        raise ValueError("spectral_norm: padding='same' with an even kernel span is asymmetric")
    return tuple(span // 2 for span in spans)


# --------------------------------------------------------------------------- applying it


@torch.no_grad()
def layer_input_sizes(
    model: nn.Module, layers: dict[str, nn.Module], input_shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """Each layer's input size without the batch dimension, from one dummy forward pass
    (in eval mode, so batch norm neither needs two samples nor updates its statistics)."""
    sizes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            size = tuple(args[0].shape[1:])
            if sizes.setdefault(name, size) != size:
                raise ValueError(
                    f"spectral_norm: layer {name!r} sees inputs of sizes {sizes[name]} and "
                    f"{size}; its operator norm is not one number"
                )

        return record

    handles = [m.register_forward_pre_hook(recorder(n)) for n, m in layers.items()]
    was_training = model.training
    reference = next(model.parameters())
    try:
        model.eval()
        model(reference.new_zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    unused = sorted(set(layers) - set(sizes))
    if unused:
        raise ValueError(f"spectral_norm: layers {unused} are not used in the forward pass")
    return sizes


def apply_spectral_bound(
    model: nn.Module,
    input_shape: tuple[int, ...],
    gamma: float,
    patterns: Iterable[str] = ("*",),
    power_iterations: int = 1,
) -> list[tuple[nn.Module, SpectralBound]]:
    """Register the ``<= gamma`` parametrization on every matching conv and linear layer
    (in place); returns the (layer, bound) pairs, for ``refresh_spectral_bounds``."""
    layers = select_layers(model, patterns, "spectral_norm")
    convs = {name: m for name, m in layers.items() if isinstance(m, Conv)}
    sizes = layer_input_sizes(model, convs, input_shape) if convs else {}
    bounds: list[tuple[nn.Module, SpectralBound]] = []
    for name, layer in layers.items():
        bound: SpectralBound
        if isinstance(layer, nn.Linear):
            bound = LinearSpectralBound(layer.weight, gamma, power_iterations)
        else:
            bound = ConvSpectralBound(layer, sizes[name], gamma, power_iterations)
        parametrize.register_parametrization(layer, "weight", bound)
        bounds.append((layer, bound))
    return bounds


@torch.no_grad()
def refresh_spectral_bounds(bounds: list[tuple[nn.Module, SpectralBound]], steps: int) -> None:
    """``steps`` Lanczos steps for each bound at the layer's current weight (what reaches
    the bound, if other parametrizations come before it)."""
    if steps == 0:
        return
    for layer, bound in bounds:
        chain = layer.parametrizations["weight"]
        weight = chain.original
        for parametrization in chain:
            if parametrization is bound:
                break
            weight = parametrization(weight)
        bound.refresh(weight, steps)


def is_last_step_of_epoch(ctx: StepContext) -> bool:
    return (ctx.step + 1) % ctx.steps_per_epoch == 0


@REGULARIZERS.register("spectral_norm")
class SpectralNorm(Regularizer):
    """Spectral normalization (Miyato 2018) as a bound: every chosen layer's norm <= gamma."""

    Params = SpectralNormParams
    params: SpectralNormParams

    def __init__(self, params: SpectralNormParams) -> None:
        super().__init__(params)
        self.bounds: list[tuple[nn.Module, SpectralBound]] = []

    def setup(self, model: nn.Module, info: DataInfo) -> nn.Module:
        p = self.params
        self.bounds = apply_spectral_bound(
            model, info.input_shape, p.gamma, p.layers, p.power_iterations
        )
        refresh_spectral_bounds(self.bounds, p.eval_iterations)
        return model

    def after_step(self, ctx: StepContext) -> None:
        if is_last_step_of_epoch(ctx):  # before validation, checkpoint and on_epoch_end
            refresh_spectral_bounds(self.bounds, self.params.eval_iterations)
