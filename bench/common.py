"""What every benchmark section shares: its context and result, the clocks, rounds in
rotated order, spreads, one-thread mode and the real MNIST batches.

Compute figures are CPU time (``time.process_time``) with one torch thread on the CPU, so
other load on a shared machine changes them little; on CUDA they are wall time between
device synchronizations. Configurations compared with each other run side by side in one
process, interleaved round by round in an order rotated each round, and a ratio is taken
per round: drift in the machine's speed hits both sides of a ratio alike, and the spread
of the per-round ratios shows how far to trust it.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from regcore.data import DataInfo, DatasetNotFoundError, DataSplits, load_dataset
from regcore.spec import DatasetSpec

T = TypeVar("T")
POSTGRES_ADMIN_URL = os.environ.get(
    "REGBENCH_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


class SectionUnavailable(RuntimeError):  # noqa: N818 (it is a reason, not a failure)
    """A section cannot run on this machine (no MNIST files, no Redis); says why."""


@dataclass
class BenchContext:
    """What a section gets from the runner."""

    quick: bool  # a fast smoke run: tiny workloads, figures not meant to be read
    devices: tuple[torch.device, ...]  # the compute sections run once per device
    data_root: Path  # holds MNIST/raw (torchvision layout)
    workdir: Path  # scratch space of this run, removed afterwards
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr))
    _cache: dict[str, Any] = field(default_factory=dict)

    def mnist(self) -> DataSplits:
        """Real MNIST from ``data_root`` (on the CPU), loaded once per run."""
        if "mnist" not in self._cache:
            spec = DatasetSpec.model_validate({"name": "mnist", "root": str(self.data_root)})
            try:
                self._cache["mnist"] = load_dataset(spec, seed=0)
            except DatasetNotFoundError as exc:
                raise SectionUnavailable(f"MNIST not found under {self.data_root}: {exc}") from exc
        return self._cache["mnist"]


@dataclass
class SectionResult:
    """Rows of one table (JSON values; a ``Spread`` as a dict) and notes printed under it."""

    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """A model with the data it trains on: real MNIST, or random tensors of CIFAR's shape."""

    model: str  # regcore model name
    dataset: str  # the dataset a spec would name
    info: DataInfo | None  # None: MNIST's, from the loaded files
    data: str  # what the tables say about the batches


CIFAR10_INFO = DataInfo((3, 32, 32), 10, (0.5,) * 3, (0.5,) * 3, tuple("0123456789"))
CIFAR100_INFO = DataInfo((3, 32, 32), 100, (0.5,) * 3, (0.5,) * 3, tuple(map(str, range(100))))
RANDOM_CIFAR = "random, CIFAR shape"
WORKLOADS = {
    "lenet": Workload("lenet", "mnist", None, "real MNIST"),
    "mlp": Workload("mlp", "mnist", None, "real MNIST"),
    "ddnet": Workload("ddnet", "cifar10", CIFAR10_INFO, RANDOM_CIFAR),
    "resnet18": Workload("resnet18", "cifar100", CIFAR100_INFO, RANDOM_CIFAR),
}


def workload_info(ctx: BenchContext, workload: Workload) -> DataInfo:
    return workload.info if workload.info is not None else ctx.mnist().info


def workload_batches(
    ctx: BenchContext,
    workload: Workload,
    count: int,
    batch_size: int,
    device: torch.device,
    split: str = "train",
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches (x (B, C, H, W) in [0, 1], y (B,)) on the device, the same for every
    call: real images drawn without replacement (MNIST), or seeded random tensors."""
    generator = torch.Generator().manual_seed(0)
    if workload.info is None:
        data = getattr(ctx.mnist(), split)
        order = torch.randperm(len(data), generator=generator)[: count * batch_size]
        return [(data.x[i].to(device), data.y[i].to(device)) for i in order.split(batch_size)]
    shape, classes = workload.info.input_shape, workload.info.num_classes
    return [
        (
            torch.rand(batch_size, *shape, generator=generator).to(device),
            torch.randint(0, classes, (batch_size,), generator=generator).to(device),
        )
        for _ in range(count)
    ]


# --------------------------------------------------------------------------- clocks


class Clock:
    """CPU time of this process on the CPU; on CUDA, wall time after a synchronize."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "wall time (synchronized)" if device.type == "cuda" else "CPU time"

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch intra-op thread for the duration (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """The items in a rotated order: round r starts at item r (mod n)."""
    shift = round_index % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def timed(work: Callable[[], Any], clock: Clock) -> Callable[[], float]:
    """A task for ``interleaved``: run ``work`` once and return the seconds it took."""

    def run() -> float:
        started = clock()
        work()
        return clock() - started

    return run


def interleaved(tasks: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each task once per round, the order rotated every round; each task returns the
    seconds it measured itself. Returns the per-round seconds of every task."""
    samples: dict[str, list[float]] = {label: [] for label in tasks}
    labels = list(tasks)
    for round_index in range(rounds):
        for label in rotated(labels, round_index):
            samples[label].append(tasks[label]())
    return samples


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Spread:
    """Median of a few per-round values with their range and quartiles."""

    median: float
    low: float  # min
    high: float  # max
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        data = sorted(float(v) for v in values)
        if not data:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
        if len(data) == 1:
            return cls(data[0], data[0], data[0], data[0], data[0], 1)
        q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive")
        return cls(statistics.median(data), data[0], data[-1], q1, q3, len(data))

    def scaled(self, factor: float) -> Spread:
        return Spread(*(v * factor for v in (self.median, self.low, self.high, self.q1, self.q3)),
                      self.n)  # fmt: skip

    def as_json(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high,
                "q1": self.q1, "q3": self.q3, "n": self.n}  # fmt: skip


def ratio_spread(values: Sequence[float], reference: Sequence[float]) -> Spread:
    """Per-round ratios value / reference (both measured in the same round)."""
    return Spread.of([v / r for v, r in zip(values, reference, strict=True)])


def rate_spread(amount: float, seconds: Sequence[float]) -> Spread:
    """Per-round rates amount / seconds (e.g. samples per second)."""
    return Spread.of([amount / s for s in seconds])


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (REGBENCH_BENCH_POSTGRES_URL's server), dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    name = f"regbench_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        raise SectionUnavailable(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}") from exc
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
