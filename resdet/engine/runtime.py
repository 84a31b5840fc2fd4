"""Process set-up shared by every task: the device, the seeds and deterministic algorithms."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> this rank's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """``DETERMINISTIC``: torch's deterministic algorithms inside the block, as they were after.

    The same call for every task, with ``warn_only``: an op without a deterministic
    implementation (some CUDA backward kernels, e.g. adaptive average pooling's, which the
    classifier's head uses) warns instead of stopping the run. CPU runs repeat bit for bit.
    cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` for deterministic matrix products.
    """
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)
