"""How training runs on its device: which device, bf16 autocast, channels-last, torch.compile.

``resolve_device(name)`` turns ``training.device`` into a torch device and refuses one this
machine lacks (``DeviceUnavailableError``): a job that asks for ``cuda`` never trains on
the CPU by surprise. ``Runtime.build(training, model, regularizers, device)`` decides once
per run how the loop's steps (``regcore.train.train_step``) execute; the science of a
step does not change:

- ``precision: bf16``: the training forward runs under ``torch.autocast(device.type,
  torch.bfloat16)`` (cuda and cpu) and its logits are cast to fp32 before the loss, so the
  cross-entropy and every penalty on logits or weights are fp32. A penalty runs under
  autocast only when its regularizer declares ``autocast_safe`` (its own forward passes,
  e.g. adversarial training's PGD). A regularizer that differentiates the training
  forward itself (``needs_input_grad``: jacobian, grad_reg) and is not autocast_safe
  keeps that forward in fp32, so its double backward is fp32 throughout; cure and
  jacobian_det run their own forwards outside autocast, in fp32. Spectral bounds
  (spectral_norm, lcnn) estimate sigma in fp32 inside the autocast region. Evaluation
  and the analyses always run in fp32.
- ``channels_last``: the model's 4-D parameters and 4-D datasets are converted once, on
  the device (no per-batch conversion); vectors and linear layers are left alone.
- ``compile``: the training forward goes through ``torch.compile`` (the eager model
  stays the one that is evaluated, checkpointed and analysed, with the same parameters).
  A spec with a ``double_backward`` regularizer trains eagerly with a warning
  (torch.compile cannot differentiate twice), and so does the rest of a run after any
  error of the compiled forward, which is then retried eagerly.

bf16 against fp32 (``tests/regcore/test_gpu_options.py`` on the CPU, ``tests/gpu`` on CUDA):
three SGD steps of LeNet on digits from the same seed, comparing the weight updates
(||w_bf16 - w_fp32|| / ||w_fp32 - w_0||) and the epoch's training loss (relative):

    family                                                    update    loss
    plain, weight penalties (l1, l2, elastic_net, svb_soft)   < 6e-2    < 3e-3
    logit penalties (label_smoothing, confidence_penalty,     < 6e-2    < 3e-3
      mixup), noise and masks (input/weight_noise, cutout,
      augment), constraints (svb_hard, spectral_norm, lcnn,
      beta_penalty), grad_clip
    own-forward double backward (cure, jacobian_det):         < 6e-2    < 3e-3
      forward bf16, penalty fp32
    training-forward double backward (jacobian, grad_reg)     0 (both fp32; on CUDA
                                                              < 1e-3, its own noise)
    adversarial_training (PGD in bf16)                        < 3e-1    < 1e-2

Measured on the CPU: about 2e-2 and 7e-4 for most, 1.4e-1 and 2.4e-3 for adversarial
training (a sign(grad) step flips where the gradient is near zero). bf16 keeps 8
significant bits; these differences are why a bf16 run has its own spec hash.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from regcore.data.base import DataSplits, Split

if TYPE_CHECKING:
    from regcore.regularizers.base import Regularizer
    from regcore.spec import TrainingSpec

AUTOCAST_DTYPE = torch.bfloat16
COMPILE_BACKEND = "inductor"  # torch.compile's default; the CPU tests use "aot_eager"


class DeviceUnavailableError(RuntimeError):
    """The spec names a device this machine does not have; nothing falls back to the CPU."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu. A device named explicitly must exist:
    ``cuda`` (or ``cuda:N``) without that GPU, or ``mps`` without Metal, raises
    ``DeviceUnavailableError`` instead of training somewhere else."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"training.device is {name!r} but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
                "run it on a GPU worker, or set training.device to cpu or auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(
                f"training.device is {name!r} but this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1}); CUDA_VISIBLE_DEVICES may hide the others"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(
            f"training.device is {name!r} but MPS is not available on this machine"
        )
    return device


def channels_last_data(data: DataSplits) -> DataSplits:
    """Every split with 4-D inputs (B, C, H, W) in the channels-last memory format."""

    def convert(split: Split | None) -> Split | None:
        if split is None or split.x.dim() != 4:
            return split
        return Split(split.x.contiguous(memory_format=torch.channels_last), split.y)

    train, test = convert(data.train), convert(data.test)
    assert train is not None and test is not None  # a split in, a split out
    return DataSplits(train=train, val=convert(data.val), test=test, info=data.info)


class CompiledForward:
    """``model(x)`` through ``torch.compile``, falling back to the eager model for good
    (with one warning) when the compiled call raises; the call is then retried eagerly.
    Compilation errors come at a graph's first call, before it runs, so the retry
    repeats nothing that already happened."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.compiled: Any = torch.compile(model, backend=COMPILE_BACKEND)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as exc:
                first_line = (str(exc).strip().splitlines() or [""])[0][:300]
                warnings.warn(
                    f"training.compile: torch.compile failed ({type(exc).__name__}: "
                    f"{first_line}); training continues without it",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
        return self.model(x)


@dataclass
class Runtime:
    """How one run's training steps execute on its device (see the module notes)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_forward: bool = False  # the training forward under bf16 autocast
    autocast_penalties: frozenset[str] = frozenset()  # regularizer keys whose penalty does
    channels_last: bool = False
    compiled: CompiledForward | None = None

    @classmethod
    def build(
        cls,
        training: TrainingSpec,
        model: nn.Module,
        regularizers: Mapping[str, Regularizer],
        device: torch.device,
    ) -> Runtime:
        """Decide for a model already on ``device``; converts it to channels-last if asked
        (in place: the parameters stay the same objects, so do it before the optimizer)."""
        bf16 = training.precision == "bf16"
        fp32_forward = [
            name for name, r in regularizers.items() if r.needs_input_grad and not r.autocast_safe
        ]
        if bf16 and fp32_forward:
            warnings.warn(
                f"training.precision bf16: {', '.join(fp32_forward)} differentiates the "
                "training forward pass, which therefore stays fp32 (only autocast-safe "
                "penalties run in bf16)",
                stacklevel=2,
            )
        if training.channels_last:
            model.to(memory_format=torch.channels_last)
        compiled = None
        if training.compile:
            twice = [name for name, r in regularizers.items() if r.double_backward]
            if twice:
                warnings.warn(
                    f"training.compile: {', '.join(twice)} needs a double backward, which "
                    "torch.compile does not support; training without compile",
                    stacklevel=2,
                )
            else:
                compiled = CompiledForward(model)
        return cls(
            device=device,
            autocast_forward=bf16 and not fp32_forward,
            autocast_penalties=frozenset(
                name for name, r in regularizers.items() if bf16 and r.autocast_safe
            ),
            channels_last=training.channels_last,
            compiled=compiled,
        )

    def prepare_data(self, data: DataSplits) -> DataSplits:
        """The data as the steps want it (on the device already): channels-last if asked."""
        return channels_last_data(data) if self.channels_last else data

    @contextlib.contextmanager
    def autocast(self, enabled: bool) -> Iterator[None]:
        """bf16 autocast on this device when ``enabled``, else nothing."""
        if not enabled:
            yield
            return
        with torch.autocast(self.device.type, dtype=AUTOCAST_DTYPE):
            yield

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, C) fp32 logits of the training forward: compiled and autocast as decided."""
        with self.autocast(self.autocast_forward):
            logits = self.compiled(x) if self.compiled is not None else model(x)  # (B, C)
        return logits.float()  # the loss and the penalties on logits are fp32
