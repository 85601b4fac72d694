"""MNIST (LeCun et al.): handwritten digits, 60,000 train / 10,000 test, 1x28x28 grey, 10 classes.

Read by torchvision from ``<root>/MNIST/raw/`` (the four uncompressed IDX files).
"""

from __future__ import annotations

from regcore.data.base import DataSplits
from regcore.data.torchvision_sets import TorchvisionParams, load_torchvision
from regcore.registries import DATASETS


@DATASETS.register("mnist", params=TorchvisionParams)
def load(params: TorchvisionParams, seed: int) -> DataSplits:
    """MNIST handwritten digits: 60k train / 10k test, 1x28x28, 10 classes."""
    names = tuple(str(digit) for digit in range(10))  # torchvision's are "0 - zero", ...
    return load_torchvision("MNIST", params, seed, mean=(0.1307,), std=(0.3081,), class_names=names)
