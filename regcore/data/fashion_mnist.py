"""Fashion-MNIST (Xiao et al., Zalando): clothing photos, 60,000 train / 10,000 test, 1x28x28.

Read by torchvision from ``<root>/FashionMNIST/raw/`` (the four uncompressed IDX files, the
same names and format as MNIST's).
"""

from __future__ import annotations

from regcore.data.base import DataSplits
from regcore.data.torchvision_sets import TorchvisionParams, load_torchvision
from regcore.registries import DATASETS

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


@DATASETS.register("fashion_mnist", params=TorchvisionParams)
def load(params: TorchvisionParams, seed: int) -> DataSplits:
    """Fashion-MNIST clothing: 60k train / 10k test, 1x28x28, 10 classes."""
    return load_torchvision(
        "FashionMNIST", params, seed, mean=(0.2860,), std=(0.3530,), class_names=CLASS_NAMES
    )
