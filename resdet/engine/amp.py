"""Mixed precision: the autocast context and the gradient scaler, chosen from the config.

``SOLVER.AMP.ENABLED`` turns autocast on; ``SOLVER.AMP.DTYPE`` picks the dtype:

- ``bfloat16`` works on CPU and CUDA; it has float32's exponent range, so gradients need no
  scaling and the scaler is a disabled pass-through.
- ``float16`` is CUDA-only (CPU autocast does not support it for convolutions) and needs a
  ``GradScaler``: small gradients underflow in fp16 unless the loss is scaled up first.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Callable, ContextManager

import torch

from resdet.utils.machine import cpu_has_native_bf16  # re-exported: callers import it from here

logger = logging.getLogger(__name__)

__all__ = [
    "cpu_has_native_bf16",
    "autocast_context",
    "autocast_factory",
    "build_grad_scaler",
    "parse_amp_dtype",
]

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_amp_dtype(name: str) -> torch.dtype:
    """``"bfloat16"``/``"bf16"`` or ``"float16"``/``"fp16"`` -> the torch dtype."""
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(
            f"SOLVER.AMP.DTYPE: unknown dtype '{name}'; use 'bfloat16' or 'float16'"
        ) from None


def _check(device_type: str, dtype: torch.dtype) -> None:
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"autocast: device type must be 'cpu' or 'cuda', got '{device_type}'")
    if device_type == "cpu" and dtype == torch.float16:
        raise ValueError(
            "SOLVER.AMP.DTYPE float16 needs a CUDA device; on CPU use SOLVER.AMP.DTYPE bfloat16 "
            "(or SOLVER.AMP.ENABLED False)"
        )


def autocast_context(device_type: str, enabled: bool, dtype_name: str) -> ContextManager:
    """``torch.autocast`` for ``device_type`` with ``dtype_name``, or a null context.

    Raises:
        ValueError: an unknown dtype, or float16 on CPU.
    """
    if not enabled:
        return contextlib.nullcontext()
    dtype = parse_amp_dtype(dtype_name)
    _check(device_type, dtype)
    return torch.autocast(device_type=device_type, dtype=dtype)


def autocast_factory(
    device_type: str, enabled: bool, dtype_name: str
) -> Callable[[], ContextManager]:
    """A zero-argument callable returning a fresh autocast context (what ``train_loop`` takes).

    Validates the settings immediately, so a bad config fails before training starts.
    """
    autocast_context(device_type, enabled, dtype_name)
    if enabled and device_type == "cpu" and not cpu_has_native_bf16():
        logger.warning(
            "bf16 autocast on a CPU without native bf16 (capability %s): expect it to be much "
            "slower than float32; set SOLVER.AMP.ENABLED False on this machine",
            torch.backends.cpu.get_cpu_capability(),
        )
    return functools.partial(autocast_context, device_type, enabled, dtype_name)


def build_grad_scaler(device_type: str, enabled: bool, dtype_name: str) -> torch.amp.GradScaler:
    """A ``GradScaler`` enabled only for float16 autocast on CUDA; otherwise disabled.

    A disabled scaler is a pass-through (``scale(x) is x``, ``step`` calls ``optimizer.step``),
    so the training loop uses one code path for every precision.
    """
    use = bool(enabled) and device_type == "cuda" and parse_amp_dtype(dtype_name) == torch.float16
    return torch.amp.GradScaler("cuda" if use else "cpu", enabled=use)
