"""scikit-learn's handwritten digits (UCI optdigits test set): 1,797 grey 8x8 images, 10 classes.

Ships with scikit-learn, so it needs no download: the quick, offline dataset. Pixels are
0..16 and are divided by 16. With ``size: 28`` the images are bilinearly resized to
1x28x28 so MNIST-sized models (LeNet) run unchanged; ``size: 8`` keeps them native.

There is no official split: ``test_fraction`` of the images are drawn once with a fixed
generator (seed 0, not the run seed), so every run is tested on the same images; the
train/validation split of the rest follows the run seed through ``make_splits``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from regcore.data.base import DataInfo, DataSplits, SplitParams, make_splits
from regcore.registries import DATASETS

TEST_SPLIT_SEED = 0  # fixed: the test set must not move with the run seed


class DigitsParams(SplitParams):
    size: Literal[8, 28] = Field(28, description="28: resized to 1x28x28 (LeNet); 8: native")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share held out as the test set")


@lru_cache(maxsize=2)
def _images(size: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """All 1,797 images at ``size``, labels, and the pixel mean/std over all of them."""
    from sklearn.datasets import load_digits  # imported here so listing the registry is cheap

    digits = load_digits()
    x = torch.from_numpy(digits.images).to(torch.float32).div_(16).unsqueeze(1)  # (N, 1, 8, 8)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x.clamp_(0, 1)  # (N, 1, 28, 28); convex weights, clamp only guards rounding
    y = torch.from_numpy(digits.target).to(torch.int64)  # (N,)
    pixels = x.double()  # float64 so the statistics do not depend on reduction order
    return x.contiguous(), y, pixels.mean().item(), pixels.std(correction=0).item()


@DATASETS.register("digits", params=DigitsParams)
def load(params: DigitsParams, seed: int) -> DataSplits:
    """scikit-learn 8x8 handwritten digits (1,797 images, 10 classes), optionally as 28x28."""
    x, y, mean, std = _images(params.size)  # cached: never modify in place
    generator = torch.Generator().manual_seed(TEST_SPLIT_SEED)
    order = torch.randperm(len(y), generator=generator)
    n_test = round(params.test_fraction * len(y))
    test_idx, pool_idx = order[:n_test], order[n_test:]
    info = DataInfo(
        input_shape=tuple(x.shape[1:]),
        num_classes=10,
        mean=(mean,),
        std=(std,),
        class_names=tuple(str(digit) for digit in range(10)),
    )
    return make_splits(x[pool_idx], y[pool_idx], x[test_idx], y[test_idx], params, seed, info)
