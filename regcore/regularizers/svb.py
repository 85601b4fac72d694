"""Shared pieces of singular value bounding (Jia, Tao, Gao, Xu, CVPR 2017, "Improving
training of deep neural networks via singular value bounding",
https://arxiv.org/abs/1611.06013), used by ``svb_soft`` and ``svb_hard``. Registers nothing.

- Layers: the conv and linear modules whose name matches one of the glob patterns.
- Every weight is read as the matrix W = weight.reshape(out, in * k * k), the kernel as
  stored (for a grouped conv, ``in`` is the input channels per group).
- Orthogonal initialization of W (``torch.nn.init.orthogonal_`` flattens the same way):
  all min(out, in * k * k) singular values are 1.
- The SVB projection: W = U diag(s) V^T -> U diag(clip(s, 1/(1+eps), 1+eps)) V^T.
- Bounded batch norm (BBN, same paper): with r_i = gamma_i / sqrt(running_var_i + e) and
  m = mean_i r_i (before clipping), clip r_i into [m/(1+eps_bn), m(1+eps_bn)] by
  rewriting gamma_i. Every r_i is clipped into that band whatever its sign, as in the
  authors' code; for m < 0 (mostly negative gammas) the band is the mirrored one,
  [m(1+eps_bn), m/(1+eps_bn)].

A layer whose weight carries a parametrization (e.g. ``spectral_norm`` on the same layer)
is read and written through its stored tensor, ``parametrizations.weight.original``:
writing into the computed weight would be lost at the next forward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, *kernel) -> (out, in * prod(kernel)); a view, so gradients flow."""
    return weight.reshape(weight.shape[0], -1)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # QR and SVD are not implemented for half precision: compute those in float32
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.no_grad()
def orthogonal_init_(weight: torch.Tensor) -> None:
    """Orthogonal W in place (rows or columns orthonormal, whichever are fewer), drawn
    from torch's global generator; dtype and device are kept."""
    work = weight.detach().to(_work_dtype(weight.dtype))
    nn.init.orthogonal_(work)
    weight.copy_(work)


@torch.no_grad()
def bound_singular_values_(weight: torch.Tensor, eps: float) -> None:
    """Clip the singular values of W into [1/(1+eps), 1+eps], in place."""
    matrix = as_matrix(weight.detach()).to(_work_dtype(weight.dtype))  # (out, n)
    # r = min(out, n): the zero singular values of a rank-deficient W are raised too
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)  # (out, r), (r,), (r, n)
    low, high = 1.0 / (1.0 + eps), 1.0 + eps
    if bool(((s >= low) & (s <= high)).all()):
        return  # already in the band: leave the weight bit-for-bit as it is
    bounded = (u * s.clamp(low, high)) @ vh  # (out, n) = U diag(s') V^T
    weight.copy_(bounded.reshape(weight.shape))


def select_batchnorms(model: nn.Module, who: str) -> dict[str, _BatchNorm]:
    """Every batch-norm layer; each must have a scale and running statistics to bound."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    if not layers:
        raise ValueError(f"{who}: bound_batchnorm is set but the model has no batch norm layer")
    for name, layer in layers.items():
        if layer.weight is None or layer.running_var is None:
            raise ValueError(
                f"{who}: batch norm {name!r} needs affine=True and track_running_stats=True "
                "to be bounded"
            )
    return layers


@torch.no_grad()
def bound_batchnorm_(layer: _BatchNorm, eps_bn: float) -> None:
    """Clip each channel's eval-mode gain r_i = gamma_i / sqrt(var_i + e) into
    [m/(1+eps_bn), m(1+eps_bn)], m = mean r, by rewriting gamma (in place)."""
    weight = layer.weight
    dtype = _work_dtype(weight.dtype)
    std = (layer.running_var.to(dtype) + layer.eps).sqrt()  # (C,)
    gain = weight.detach().to(dtype) / std  # (C,) r_i
    m = gain.mean()
    a, b = m / (1.0 + eps_bn), m * (1.0 + eps_bn)
    low, high = torch.minimum(a, b), torch.maximum(a, b)  # ordered even when m < 0
    weight.copy_(gain.clamp(low, high) * std)
