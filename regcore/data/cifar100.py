"""CIFAR-100 (Krizhevsky 2009): colour photos, 50,000 train / 10,000 test, 3x32x32, 100 classes.

Read by torchvision from ``<root>/cifar-100-python/`` (pickled ``train``, ``test``, ``meta``;
md5-checked). Labels are the 100 fine labels; class names come from ``meta``'s
``fine_label_names``. Mean and std are 0.5 per channel, the normalization the study used.
"""

from __future__ import annotations

from regcore.data.base import DataSplits
from regcore.data.torchvision_sets import TorchvisionParams, load_torchvision
from regcore.registries import DATASETS


@DATASETS.register("cifar100", params=TorchvisionParams)
def load(params: TorchvisionParams, seed: int) -> DataSplits:
    """CIFAR-100 colour photos: 50k train / 10k test, 3x32x32, 100 fine classes."""
    return load_torchvision("CIFAR100", params, seed, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
