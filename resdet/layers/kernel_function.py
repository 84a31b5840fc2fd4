"""The autograd Function of the NCHW convolution kernels outside oneDNN: NNPACK's Winograd 3x3
(:mod:`resdet.layers.winograd`) and BLAS GEMM 1x1 (:mod:`resdet.layers.gemm`).

Each kernel supplies a forward and its own input and weight gradients; :func:`kernel_conv2d`
is the one place they become a differentiable convolution, falling back to ``F.conv2d`` for
calls the kernel does not take (CUDA, autocast, small maps).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["KernelConv2d", "KernelConv2dFunction", "kernel_conv2d"]

Forward = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
Backward = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, bool, bool],
    Tuple[Optional[torch.Tensor], Optional[torch.Tensor]],
]


class KernelConv2dFunction(torch.autograd.Function):
    """``forward(x, weight, bias)`` with the gradients ``backward(x, weight, grad, need_x,
    need_w) -> (grad_x, grad_w)`` of the same kernel; the bias gradient is the sum of ``grad``
    over batch and pixels. ``apply(x, weight, bias, forward, backward)``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        forward: Forward,
        backward: Backward,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.backward, ctx.has_bias = backward, bias is not None
        return forward(x, weight, bias)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w = ctx.backward(x, weight, grad, need_x, need_w)
        grad_b = grad.sum((0, 2, 3)) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None


def kernel_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    applies: Callable[[torch.Tensor, torch.Tensor], bool],
    forward: Forward,
    backward: Backward,
    train_forward: Optional[Forward] = None,
    padding: int = 0,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding)`` through a kernel where ``applies(x, weight)``:
    with a gradient to compute, :class:`KernelConv2dFunction` of ``train_forward`` (default
    ``forward``) and ``backward``; without one, ``forward``. Differentiable either way."""
    if not applies(x, weight):
        return F.conv2d(x, weight, bias, 1, padding)
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return KernelConv2dFunction.apply(x, weight, bias, train_forward or forward, backward)
    return forward(x, weight, bias)


class KernelConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` computed by a kernel's differentiable call: a subclass sets ``kernel``
    (``staticmethod(conv2d(x, weight, bias))``) and the flag that names it."""

    kernel: Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

    def _conv_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        return type(self).kernel(x, weight, bias)
