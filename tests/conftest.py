"""Shared fixtures. Tests run on the CPU with a fixed thread count so results repeat."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
