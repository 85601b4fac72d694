"""gamma-Lipschitz batch norm (Srinivas et al. NeurIPS 2022, "Efficient training of
low-curvature neural networks", https://openreview.net/forum?id=2B2xIJ299rx).

Batch norm with its affine scale off is the per-channel map x_c -> (x_c - mu_c) * g_c with
gain g_c = 1 / sqrt(var_c + eps), so its Lipschitz constant is max_c g_c, which nothing
bounds (a channel of small variance gets a large gain). The gamma-Lipschitz version
divides the whole output by one factor so that the largest gain is at most gamma:

    y_c = (x_c - mu_c) * g_c / max(1, max_k g_k / gamma) + b_c

so each channel's gain is min(g_c, gamma * g_c / max_k g_k) <= gamma, the channels keep
their relative gains, and a layer whose gains are all within gamma is plain batch norm
(no affine scale) plus a shift. gamma is learnable, one scalar per layer, stored as
``log_gamma`` so it stays positive; it gets gradient only while the bound is active. This
is the reference implementation's rule (kylematoba/lcnn ``ConvBNBlock``:
``bn(x) * min_c sigma_c * min(1 / min_c sigma_c, gamma)``, the same map), except that
there the factor always uses the running variance, while here it uses the variance that
normalizes: the batch's in training (so the bound holds for the function trained, and
its gradient flows like batch norm's), the running one in eval mode. ``b`` is the usual
per-channel shift.

The layer deliberately does not subclass ``nn.BatchNorm2d``: it has no per-channel
``weight``, and code that finds batch-norm layers by type (initializers, fusers, swaps)
would misread it. Its statistics buffers have batch norm's names, so ``from_batch_norm``
carries them over. This module registers no model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LipschitzBatchNorm2d(nn.Module):
    """Batch norm over (B, C, H, W) whose per-channel gains are all at most a learnable gamma."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        num_features: int,
        gamma: float = 1.0,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
    ) -> None:
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be positive; got {gamma}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.log_gamma = nn.Parameter(torch.tensor(math.log(gamma)))  # () one per layer
        self.bias = nn.Parameter(torch.zeros(num_features))  # (C,)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d, gamma: float = 1.0) -> LipschitzBatchNorm2d:
        """The Lipschitz twin of ``bn``: its statistics, eps, momentum and shift; its
        per-channel scale is dropped (affine off)."""
        if not bn.track_running_stats:
            raise ValueError("LipschitzBatchNorm2d needs a batch norm that tracks running stats")
        reference = bn.running_mean
        twin = cls(bn.num_features, gamma, bn.eps, bn.momentum).to(reference.device)
        with torch.no_grad():
            twin.running_mean.copy_(bn.running_mean)
            twin.running_var.copy_(bn.running_var)
            twin.num_batches_tracked.copy_(bn.num_batches_tracked)
            if bn.bias is not None:
                twin.bias.copy_(bn.bias)
        return twin.to(reference.dtype)

    @property
    def gamma(self) -> torch.Tensor:
        return self.log_gamma.exp()

    def _factor_momentum(self) -> float:
        """Running-average weight of this batch, as ``nn.BatchNorm2d`` computes it."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a 4-d input (B, C, H, W), got {x.dim()}-d")
        momentum = self._factor_momentum() if self.training else 0.0
        normalized = F.batch_norm(
            x, self.running_mean, self.running_var, None, None, self.training, momentum, self.eps
        )  # (B, C, H, W): (x - mu_c) / sqrt(var_c + eps), updates the running stats
        # (C,) the variance that normalized: the batch's in training, the running one in eval
        var = x.var(dim=(0, 2, 3), unbiased=False) if self.training else self.running_var
        shrink = self._shrink(var)  # ()
        return normalized / shrink + self.bias.view(1, -1, 1, 1)

    def _shrink(self, var: torch.Tensor) -> torch.Tensor:
        """max(1, max_c g_c / gamma) for the gains g_c = 1 / sqrt(var_c + eps)."""
        largest_gain = (var + self.eps).rsqrt().max()  # ()
        return (largest_gain / self.gamma).clamp_min(1.0)

    def channel_gains(self) -> torch.Tensor:
        """(C,) the slope of each channel in eval mode: g_c / max(1, max_k g_k / gamma)."""
        gains = (self.running_var + self.eps).rsqrt()
        return gains / self._shrink(self.running_var)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, gamma={self.gamma.item():.4g}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )
