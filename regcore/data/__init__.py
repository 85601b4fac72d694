"""Datasets: one module each, registered in ``regcore.registries.DATASETS``.

``load_dataset(spec.dataset, seed)`` returns ``DataSplits`` (train / val / test tensors
in [0, 1] and a ``DataInfo``). A dataset's target is ``load(params, seed) -> DataSplits``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regcore.data.base import DataInfo, DatasetNotFoundError, DataSplits, Split
from regcore.registries import DATASETS

if TYPE_CHECKING:
    from regcore.spec import DatasetSpec


def load_dataset(spec: DatasetSpec, seed: int) -> DataSplits:
    return DATASETS.get(spec.name).target(spec.params, seed)


__all__ = ["DataInfo", "DataSplits", "DatasetNotFoundError", "Split", "load_dataset"]
