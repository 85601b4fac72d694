"""CIFAR-10 (Krizhevsky 2009): colour photos, 50,000 train / 10,000 test, 3x32x32, 10 classes.

Read by torchvision from ``<root>/cifar-10-batches-py/`` (pickled ``data_batch_1..5``,
``test_batch``, ``batches.meta``; md5-checked). Class names come from ``batches.meta``.
Mean and std are 0.5 per channel, the normalization the study used.
"""

from __future__ import annotations

from regcore.data.base import DataSplits
from regcore.data.torchvision_sets import TorchvisionParams, load_torchvision
from regcore.registries import DATASETS


@DATASETS.register("cifar10", params=TorchvisionParams)
def load(params: TorchvisionParams, seed: int) -> DataSplits:
    """CIFAR-10 colour photos: 50k train / 10k test, 3x32x32, 10 classes."""
    return load_torchvision("CIFAR10", params, seed, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
