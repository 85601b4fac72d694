"""Soft singular value bounding, i.e. soft orthogonality (the penalty form of Jia et al.
2017, https://arxiv.org/abs/1611.06013):

    penalty = weight * sum_layers || G - I ||_F^2,   W = weight.reshape(out, in * k * k),

with G the Gram matrix on the SMALLER side: G = W W^T (out x out) if out <= in * k * k,
else W^T W. It is zero exactly when W has orthonormal rows (or columns), i.e. all its
singular values are 1. Orthogonal initialization of the chosen layers in ``setup``.

``gram: study_larger`` is the study's variant, the Gram on the LARGER side (R x R with
R = max(out, in*k*k), r = min). That Gram has rank at most r, so R - r of its eigenvalues
are 0 and the penalty can never go below weight * (R - r) per layer. Both Grams share
their nonzero eigenvalues, so ||G_large - I||^2 = ||G_small - I||^2 + (R - r) exactly:
the variant has the same gradient (trains identically) and only reports that constant
floor on top; it is computed that way, without building the R x R matrix.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from regcore.data.base import DataInfo
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext, select_layers, stored_weight
from regcore.regularizers.svb import as_matrix, orthogonal_init_


class SVBSoftParams(ComponentParams):
    weight: float = Field(1e-4, ge=0, le=MAX_WEIGHT, description="lambda")
    layers: list[str] = Field(
        ["*"], description="glob patterns over module names (e.g. 'fc*'); conv and linear only"
    )
    gram: Literal["smaller", "study_larger"] = Field(
        "smaller",
        description="smaller: the Gram on the smaller side (zero for orthogonal W); "
        "study_larger: the study's larger Gram, a constant floor above it",
    )
    orthogonal_init: bool = Field(True, description="orthogonal init of the chosen layers")


def orthogonality_defect(
    matrix: torch.Tensor, gram: Literal["smaller", "study_larger"] = "smaller"
) -> torch.Tensor:
    """() ||G - I||_F^2 for a matrix (out, n), G its Gram matrix on the chosen side."""
    rows, cols = matrix.shape
    small = matrix @ matrix.T if rows <= cols else matrix.T @ matrix  # (r, r), r = min
    identity = torch.eye(small.shape[0], dtype=small.dtype, device=small.device)
    defect = (small - identity).pow(2).sum()
    if gram == "study_larger":
        defect = defect + abs(rows - cols)  # the R - r zero eigenvalues of the larger Gram
    return defect


@REGULARIZERS.register("svb_soft")
class SVBSoft(Regularizer):
    """Soft orthogonality: weight * sum ||W W^T - I||_F^2 on the smaller Gram (soft SVB)."""

    Params = SVBSoftParams
    params: SVBSoftParams

    def setup(self, model: nn.Module, info: DataInfo) -> nn.Module:
        layers = select_layers(model, self.params.layers, "svb_soft")
        if self.params.orthogonal_init:
            for module in layers.values():
                orthogonal_init_(stored_weight(module))
        return model

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        layers = select_layers(ctx.model, self.params.layers, "svb_soft")
        defects = [
            orthogonality_defect(as_matrix(stored_weight(module)), self.params.gram)
            for module in layers.values()
        ]
        return self.params.weight * torch.stack(defects).sum()
