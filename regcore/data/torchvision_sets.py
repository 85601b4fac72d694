"""Shared loader for the torchvision image sets (MNIST, FashionMNIST, CIFAR-10, CIFAR-100).

Not a dataset itself: ``mnist.py``, ``fashion_mnist.py``, ``cifar10.py`` and ``cifar100.py``
call ``load_torchvision``. The files are read by torchvision's own dataset classes (its
IDX / pickle readers and, for CIFAR, its md5 checks), then held as float32 tensors in
[0, 1] of shape (N, C, H, W). Missing files raise ``DatasetNotFoundError`` naming the
directory and files expected.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.error import URLError

import torch
from pydantic import Field

from regcore.data.base import DataInfo, DatasetNotFoundError, DataSplits, SplitParams, make_splits
from regcore.registry import NOT_IDENTITY

TorchvisionName = Literal["MNIST", "FashionMNIST", "CIFAR10", "CIFAR100"]


class TorchvisionParams(SplitParams):
    """Params of the torchvision sets: where the files are and whether to fetch them."""

    root: str = Field(
        "./data",
        description="data root holding e.g. MNIST/raw/ or cifar-10-batches-py/",
        json_schema_extra=NOT_IDENTITY,
    )
    download: bool = Field(
        False,
        description="download into root when missing (needs internet access)",
        json_schema_extra=NOT_IDENTITY,
    )


def _expected_files(cls: Any, root: str) -> tuple[str, list[str], str]:
    """The directory, file names and their source, read from torchvision's class itself."""
    if hasattr(cls, "resources"):  # MNIST family: <root>/<ClassName>/raw/<name without .gz>
        folder = os.path.join(root, cls.__name__, "raw")
        names = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
        return folder, names, "the .gz files of these names, decompressed"
    # CIFAR family: <root>/<base_folder>/<batches and meta>, md5-checked by torchvision
    folder = os.path.join(root, cls.base_folder)
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return folder, names, f"{cls.filename}, extracted into {root}"


def _read(cls: Any, root: str, train: bool, download: bool) -> Any:
    try:
        return cls(root, train=train, download=download)
    except (RuntimeError, URLError) as exc:  # torchvision's "not found", or a failed download
        folder, names, source = _expected_files(cls, root)
        hint = (
            f"downloading failed ({exc}); copy the files there instead"
            if download
            else "set dataset.download: true on a machine with internet access, "
            "or copy the files there"
        )
        raise DatasetNotFoundError(
            f"{cls.__name__} not found under data root {root}: expected {folder}{os.sep} "
            f"holding {', '.join(names)} (from {source}; torchvision: {exc}). To fix: {hint}."
        ) from exc


def _to_float(data: Any) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> float32 in [0, 1], (N, C, H, W)."""
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    return x.to(torch.float32).div_(255).contiguous()


def load_torchvision(
    name: TorchvisionName,
    params: TorchvisionParams,
    seed: int,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    class_names: tuple[str, ...] | None = None,
) -> DataSplits:
    """Read train and test through torchvision and split; class names default to ``.classes``."""
    import torchvision.datasets  # imported here so listing the registry does not load it

    cls = getattr(torchvision.datasets, name)
    root = os.path.abspath(os.path.expanduser(params.root))
    train = _read(cls, root, train=True, download=params.download)
    test = _read(cls, root, train=False, download=params.download)
    train_x, test_x = _to_float(train.data), _to_float(test.data)  # (N, C, H, W)
    train_y = torch.as_tensor(train.targets, dtype=torch.int64)  # (N,)
    test_y = torch.as_tensor(test.targets, dtype=torch.int64)  # (N,)
    names = class_names if class_names is not None else tuple(train.classes)
    info = DataInfo(
        input_shape=tuple(train_x.shape[1:]),
        num_classes=len(names),
        mean=mean,
        std=std,
        class_names=names,
    )
    return make_splits(train_x, train_y, test_x, test_y, params, seed, info)
