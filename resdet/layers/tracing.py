"""Trace-aware sizes: what keeps a size a graph value under ``torch.jit.trace`` / ONNX export.

While tracing, ``tensor.shape[i]`` is a 0-dim tensor that the tracer records, but Python's
``min`` or ``int`` on it freezes the example's value into the graph. The helpers here do the
same as the plain Python in eager mode (so eager inference pays nothing) and keep the value in
the graph while tracing, as torchvision's ``det_utils._topk_min`` does.
"""

from __future__ import annotations

from typing import Union

import torch

Size = Union[int, torch.Tensor]  # a Python int in eager mode, a 0-dim tensor while tracing


def topk_min(x: torch.Tensor, k: int, dim: int) -> Size:
    """``min(k, x.shape[dim])``: how many elements ``x.topk(., dim)`` may take.

    Eager: a Python int. Tracing: a traced 0-dim int64 tensor, so an input with fewer than
    ``k`` candidates along ``dim`` (a smaller image) is still handled by the exported graph.
    """
    n = x.shape[dim]
    if torch.jit.is_tracing():
        return torch.clamp(torch.as_tensor(n), max=k)
    return min(k, n)
