"""GPU tests: run with ``make gpu-test`` (``pytest -m gpu tests/gpu -v``) on a machine with
CUDA. Without CUDA every test here is skipped with the reason, on a laptop and in CI
alike. Timings are printed, never asserted.

Real MNIST is read from ``$REGBENCH_DATA_ROOT`` (default ``../shared/datasets`` beside the
repository) by tests/conftest.py's ``mnist_root``; where it is absent the MNIST test says
so and skips (fails under CI=true), as the dataset's README asks. Everything else uses
scikit-learn's digits, which need no files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from regcore.data import DataSplits, load_dataset
from regcore.spec import DatasetSpec

# Before anything touches CUDA: cuBLAS reads this when its first handle is made, and the
# deterministic-mode test needs it (imports alone do not start CUDA).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

CUDA_REASON = "needs a CUDA GPU: run `make gpu-test` on a GPU machine"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without CUDA every test under tests/gpu is skipped, with the reason."""
    if torch.cuda.is_available():
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.skip(reason=CUDA_REASON))


@pytest.fixture
def cuda() -> Iterator[torch.device]:
    """The GPU; its work finished and its cache emptied after each test."""
    yield torch.device("cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """fp32 convolutions and matmuls without TF32 (cuDNN's default uses it), so that two
    layouts or kernels of the same fp32 computation compare at fp32 rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="session")
def mnist(mnist_root: Path) -> DataSplits:
    """All 60,000 training images (no validation split) and the 10,000 test images, on the
    CPU, read once for the session."""
    spec = DatasetSpec.model_validate({"name": "mnist", "root": str(mnist_root), "val_fraction": 0})
    return load_dataset(spec, seed=0)
