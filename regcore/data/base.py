"""What every dataset returns: tensors split into train / validation / test.

Datasets that fit are held as tensors (on the training device during training), so
there are no DataLoader worker processes and no per-batch host-to-device copies.
Inputs are float32 in [0, 1]; models normalize inside with ``DataInfo.mean/std``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from pydantic import Field

from regcore.registry import MAX_SAMPLES, MAX_SEED, ComponentParams


@dataclass(frozen=True)
class DataInfo:
    input_shape: tuple[int, ...]  # (C, H, W) for images, (D,) for vectors
    num_classes: int
    mean: tuple[float, ...]  # per channel (images) or per feature; used by the model's Normalize
    std: tuple[float, ...]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, *input_shape) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class DataSplits:
    train: Split
    val: Split | None
    test: Split
    info: DataInfo

    def to(self, device: torch.device | str) -> DataSplits:
        return replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device) if self.val is not None else None,
            test=self.test.to(device),
        )


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not under the data root; the message says where to put them."""


class SplitParams(ComponentParams):
    """Params every dataset shares: how the validation split and subsets are drawn."""

    val_fraction: float = Field(0.1, ge=0, lt=1, description="held out of the training set")
    split_seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="seed of the train/validation split; default: training.seed",
    )
    train_size: int | None = Field(
        None, ge=1, le=MAX_SAMPLES, description="keep only this many training examples (quick runs)"
    )
    test_size: int | None = Field(
        None,
        ge=1,
        le=MAX_SAMPLES,
        description="keep only this many test examples (the same for every seed)",
    )


def make_splits(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    params: SplitParams,
    seed: int,
    info: DataInfo,
) -> DataSplits:
    """Deterministic train/validation split (and optional subsets) from one seed."""
    split_seed = params.split_seed if params.split_seed is not None else seed
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(len(train_y), generator=generator)
    n_val = round(params.val_fraction * len(train_y))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if params.train_size is not None:
        train_idx = train_idx[: params.train_size]
    if params.test_size is not None:
        # Fixed, not the run seed: every run of a comparison is tested on the same images.
        test_order = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(0))
        keep = test_order[: params.test_size]
        test_x, test_y = test_x[keep], test_y[keep]
    return DataSplits(
        train=Split(train_x[train_idx].contiguous(), train_y[train_idx].contiguous()),
        val=Split(train_x[val_idx].contiguous(), train_y[val_idx].contiguous()) if n_val else None,
        test=Split(test_x.contiguous(), test_y.contiguous()),
        info=info,
    )
