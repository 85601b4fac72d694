"""Datasets: real on-disk formats read by torchvision's own code, the offline sets, the splits.

The torchvision sets are tested on tiny files written here in the real formats (IDX for
MNIST, pickled batches for CIFAR) and read through ``load_dataset`` with nothing mocked;
for CIFAR only the expected md5 sums are pointed at these files, so torchvision's
integrity check still runs.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.datasets
from pydantic import ValidationError
from sklearn.datasets import load_digits

from regcore.data import DatasetNotFoundError, DataSplits, Split, load_dataset
from regcore.data.blobs import CENTRES
from regcore.data.torchvision_sets import TorchvisionParams
from regcore.registries import DATASETS
from regcore.registry import NOT_IDENTITY
from regcore.spec import DatasetSpec


def load(seed: int = 0, **spec: Any) -> DataSplits:
    return load_dataset(DatasetSpec.model_validate(spec), seed)


def row_keys(*splits: Split | None) -> Counter[bytes]:
    """Each example's pixels as bytes: compares splits as multisets of examples."""
    return Counter(row.numpy().tobytes() for s in splits if s is not None for row in s.x)


def check_split(split: Split, shape: tuple[int, ...]) -> None:
    assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
    assert tuple(split.x.shape[1:]) == shape and split.y.shape == (len(split.x),)
    assert split.x.min() >= 0 and split.x.max() <= 1


def by_pixels(x: torch.Tensor, y: torch.Tensor) -> dict[bytes, tuple[torch.Tensor, int]]:
    return {row.numpy().tobytes(): (row, int(label)) for row, label in zip(x, y, strict=True)}


def assert_same_examples(split: Split, x: torch.Tensor, y: torch.Tensor) -> None:
    """split holds exactly the examples (x, y), in any order (make_splits shuffles train)."""
    expected = by_pixels(x, y)
    got = by_pixels(split.x, split.y)
    assert got.keys() == expected.keys() and len(got) == len(x)
    for key, (row, label) in got.items():
        assert torch.equal(row, expected[key][0]) and label == expected[key][1]


def test_all_datasets_registered() -> None:
    names = {"mnist", "fashion_mnist", "cifar10", "cifar100", "digits", "blobs"}
    assert names <= set(DATASETS.names())
    assert all(DATASETS.get(name).summary for name in names)


def test_data_location_is_not_identity() -> None:
    for field in ("root", "download"):
        assert TorchvisionParams.model_fields[field].json_schema_extra == NOT_IDENTITY


# --------------------------------------------------------------------------- MNIST family


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """The IDX format: big-endian magic (0x0803 images / 0x0801 labels: uint8, n dims), dims."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    header = struct.pack(">IIII", 2051, n, h, w)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, n) + labels.tobytes()
    )


def as_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).to(torch.float32) / 255


@pytest.mark.parametrize(
    ("name", "folder", "mean"),
    [("mnist", "MNIST", 0.1307), ("fashion_mnist", "FashionMNIST", 0.2860)],
)
def test_mnist_family_reads_idx_files(tmp_path: Path, name: str, folder: str, mean: float) -> None:
    rng = np.random.default_rng(0)
    train_u8 = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    test_u8 = rng.integers(0, 256, (8, 28, 28), dtype=np.uint8)
    train_labels = rng.integers(0, 10, 20, dtype=np.uint8)
    test_labels = rng.integers(0, 10, 8, dtype=np.uint8)
    raw = tmp_path / folder / "raw"  # torchvision's layout: <root>/<class name>/raw/
    write_idx(raw, "train", train_u8, train_labels)
    write_idx(raw, "t10k", test_u8, test_labels)

    data = load(name=name, root=str(tmp_path), val_fraction=0)
    check_split(data.train, (1, 28, 28))
    check_split(data.test, (1, 28, 28))
    assert data.val is None and (len(data.train), len(data.test)) == (20, 8)
    assert_same_examples(data.train, as_float(train_u8)[:, None], torch.from_numpy(train_labels))
    assert torch.equal(data.test.x, as_float(test_u8)[:, None])  # the test set keeps file order
    assert torch.equal(data.test.y, torch.from_numpy(test_labels).long())
    assert data.info.input_shape == (1, 28, 28) and data.info.num_classes == 10
    assert data.info.mean == (mean,)
    expected_names = torchvision.datasets.FashionMNIST.classes if name == "fashion_mnist" else None
    assert list(data.info.class_names) == (expected_names or [str(d) for d in range(10)])

    split = load(name=name, root=str(tmp_path), val_fraction=0.25)
    assert (len(split.train), len(split.val or []), len(split.test)) == (15, 5, 8)
    assert row_keys(split.train, split.val) == row_keys(data.train)


# --------------------------------------------------------------------------- CIFAR family


def write_pickle(path: Path, obj: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar_batch(rng: np.random.Generator, n: int, n_classes: int, label_key: str) -> dict:
    """One pickled batch: uint8 rows of 3072 = R, G, B planes of 32x32, labels as a list."""
    batch = {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, n_classes, n).tolist(),
    }
    if label_key == "fine_labels":  # CIFAR-100 files also hold the 20 superclasses
        batch["coarse_labels"] = rng.integers(0, 20, n).tolist()
    return batch


def cifar_pixels(batches: list[dict]) -> torch.Tensor:
    data = np.concatenate([batch["data"] for batch in batches])
    return as_float(data.reshape(-1, 3, 32, 32))  # row-major planes: already (N, C, H, W)


def cifar_labels(batches: list[dict], key: str) -> torch.Tensor:
    return torch.tensor([label for batch in batches for label in batch[key]])


def write_cifar(
    root: Path, cls: Any, monkeypatch: pytest.MonkeyPatch, *, label_key: str, n_classes: int
) -> tuple[list[dict], list[dict], list[str]]:
    """Write train/test/meta files under cls's folder and point cls's md5 sums at them."""
    rng = np.random.default_rng(1)
    folder = root / cls.base_folder
    train = {file: cifar_batch(rng, 3, n_classes, label_key) for file, _ in cls.train_list}
    test = {file: cifar_batch(rng, 4, n_classes, label_key) for file, _ in cls.test_list}
    train_list = [[file, write_pickle(folder / file, b)] for file, b in train.items()]
    test_list = [[file, write_pickle(folder / file, b)] for file, b in test.items()]
    names = [f"class_{i}" for i in range(n_classes)]
    meta: dict[str, Any] = {cls.meta["key"]: names}
    if label_key == "fine_labels":
        meta["coarse_label_names"] = [f"super_{i}" for i in range(20)]
    meta_md5 = write_pickle(folder / cls.meta["filename"], meta)
    # Only the expected checksums change: torchvision still verifies every file.
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})
    return list(train.values()), list(test.values()), names


@pytest.mark.parametrize(
    ("name", "cls_name", "label_key", "n_classes"),
    [("cifar10", "CIFAR10", "labels", 10), ("cifar100", "CIFAR100", "fine_labels", 100)],
)
def test_cifar_family_reads_pickled_batches(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    cls_name: str,
    label_key: str,
    n_classes: int,
) -> None:
    cls = getattr(torchvision.datasets, cls_name)
    train, test, names = write_cifar(
        tmp_path, cls, monkeypatch, label_key=label_key, n_classes=n_classes
    )
    data = load(name=name, root=str(tmp_path), val_fraction=0)
    check_split(data.train, (3, 32, 32))
    check_split(data.test, (3, 32, 32))
    n_train = 3 * len(train)
    assert data.val is None and (len(data.train), len(data.test)) == (n_train, 4 * len(test))
    assert_same_examples(data.train, cifar_pixels(train), cifar_labels(train, label_key))
    assert torch.equal(data.test.x, cifar_pixels(test))
    assert torch.equal(data.test.y, cifar_labels(test, label_key))  # fine labels, not coarse
    assert data.info.input_shape == (3, 32, 32) and data.info.num_classes == n_classes
    assert data.info.class_names == tuple(names)  # from the meta file
    assert data.info.mean == (0.5, 0.5, 0.5) and data.info.std == (0.5, 0.5, 0.5)


def test_cifar_checksum_mismatch_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = torchvision.datasets.CIFAR10
    write_cifar(tmp_path, cls, monkeypatch, label_key="labels", n_classes=10)
    first, _ = cls.train_list[0]
    (tmp_path / cls.base_folder / first).write_bytes(b"truncated")  # md5 no longer matches
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        load(name="cifar10", root=str(tmp_path))


# --------------------------------------------------------------------------- missing files


@pytest.mark.parametrize(
    ("name", "where", "files"),
    [
        ("mnist", "MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("fashion_mnist", "FashionMNIST/raw", ["train-labels-idx1-ubyte"]),
        ("cifar10", "cifar-10-batches-py", ["data_batch_5", "test_batch", "batches.meta"]),
        ("cifar100", "cifar-100-python", ["train", "test", "meta"]),
    ],
)
def test_missing_files_say_where_and_how(
    tmp_path: Path, name: str, where: str, files: list[str]
) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load(name=name, root=str(root))
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(root / where) in message and "dataset.download: true" in message
    assert all(file in message for file in files)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_range() -> None:
    for size in (28, 8):
        data = load(name="digits", size=size)
        for split in (data.train, data.val, data.test):
            assert split is not None
            check_split(split, (1, size, size))
        assert data.info.input_shape == (1, size, size) and data.info.num_classes == 10
        assert len(data.train) + len(data.val or []) + len(data.test) == 1797
        assert len(data.test) == round(0.2 * 1797)
        (mean,), (std,) = data.info.mean, data.info.std
        assert isinstance(mean, float) and 0 < mean < 1 and 0 < std < 1


def test_digits_splits() -> None:
    a, b, again = (load(seed, name="digits", size=8) for seed in (0, 1, 0))
    assert a.val is not None and b.val is not None and again.val is not None
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)  # fixed test set
    assert not torch.equal(a.train.x, b.train.x)  # the train/val split follows the run seed
    assert torch.equal(a.train.x, again.train.x) and torch.equal(a.val.x, again.val.x)
    assert a.info == b.info  # statistics of the whole set, not of a split

    # train, val and test partition the 1,797 images: nothing shared, nothing lost.
    digits = load_digits()
    everything = torch.from_numpy(digits.images).to(torch.float32).div_(16).unsqueeze(1)
    assert row_keys(a.train, a.val, a.test) == row_keys(Split(everything, torch.zeros(1797)))
    assert not row_keys(a.train) & row_keys(a.val) and not row_keys(a.train) & row_keys(a.test)


def test_digits_resize_keeps_labels_and_matches_native() -> None:
    big, small = load(name="digits", size=28), load(name="digits", size=8)
    assert torch.equal(big.test.y, small.test.y) and torch.equal(big.train.y, small.train.y)
    down = torch.nn.functional.interpolate(big.test.x, size=(8, 8), mode="area")  # (N, 1, 8, 8)
    assert (down - small.test.x).abs().mean() < 0.1  # the same images, resampled


def test_digits_rejects_other_sizes() -> None:
    with pytest.raises(ValidationError):
        DatasetSpec.model_validate({"name": "digits", "size": 16})


# --------------------------------------------------------------------------- blobs


def test_blobs_shapes_and_labels() -> None:
    data = load(name="blobs")
    assert (len(data.train), len(data.val or []), len(data.test)) == (1800, 200, 1000)
    for split in (data.train, data.val, data.test):
        assert split is not None
        check_split(split, (2,))
    assert data.info.input_shape == (2,) and data.info.num_classes == 4
    for split in (data.train, data.test):
        nearest = torch.cdist(split.x, CENTRES).argmin(dim=1)  # (N,)
        assert (nearest == split.y).float().mean() > 0.95
    labels = torch.cat([data.train.y, data.val.y if data.val is not None else data.train.y[:0]])
    assert torch.bincount(labels).tolist() == [500] * 4  # balanced classes


def test_blobs_determinism() -> None:
    a, again, other = load(0, name="blobs"), load(0, name="blobs"), load(1, name="blobs")
    assert torch.equal(a.train.x, again.train.x) and torch.equal(a.test.x, again.test.x)
    assert torch.equal(a.test.x, other.test.x)  # the points do not depend on the run seed
    assert row_keys(a.train, a.val) == row_keys(other.train, other.val)
    assert not torch.equal(a.train.x, other.train.x)
    moved = load(0, name="blobs", data_seed=1)
    assert not torch.equal(a.test.x, moved.test.x)


def test_blobs_without_clipping_leaves_the_square() -> None:
    data = load(name="blobs", noise=0.3, clip=False)
    assert data.train.x.min() < 0 and data.train.x.max() > 1


# --------------------------------------------------------------------------- splits


def small_blobs(seed: int = 0, **params: Any) -> DataSplits:
    return load(seed, name="blobs", n_train=100, n_test=50, **params)


def test_val_fraction() -> None:
    data, full = small_blobs(val_fraction=0.3), small_blobs(val_fraction=0)
    assert (len(data.train), len(data.val or [])) == (70, 30)
    assert full.val is None and len(full.train) == 100
    assert row_keys(data.train, data.val) == row_keys(full.train)  # a partition of train
    assert torch.equal(data.test.x, full.test.x)  # the test set is not split
    with pytest.raises(ValidationError):
        small_blobs(val_fraction=1)


def test_train_size_and_test_size() -> None:
    full = small_blobs(val_fraction=0.2)
    data = small_blobs(val_fraction=0.2, train_size=20, test_size=10)
    assert (len(data.train), len(data.val or []), len(data.test)) == (20, 20, 10)
    assert data.val is not None and full.val is not None
    assert torch.equal(data.val.x, full.val.x)  # the subset is taken after the validation split
    assert not row_keys(data.train) - row_keys(full.train)
    assert not row_keys(data.test) - row_keys(full.test) and len(row_keys(data.test)) == 10
    assert len(small_blobs(train_size=10_000).train) == 90  # larger than available: all kept


def test_split_seed_overrides_the_run_seed() -> None:
    a, b = small_blobs(0, split_seed=7), small_blobs(1, split_seed=7)
    assert torch.equal(a.train.x, b.train.x) and a.val is not None and b.val is not None
    assert torch.equal(a.val.x, b.val.x)
    assert torch.equal(a.train.x, small_blobs(7).train.x)  # default: the run seed
    assert not torch.equal(small_blobs(0).train.x, small_blobs(1).train.x)


def test_test_subset_is_the_same_for_every_seed() -> None:
    a, b = small_blobs(0, test_size=10), small_blobs(1, test_size=10)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
