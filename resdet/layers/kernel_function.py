"""The autograd Function of the training convolution kernels: NNPACK's Winograd 3x3
(:mod:`resdet.layers.winograd`), BLAS GEMM 1x1 (:mod:`resdet.layers.gemm`) and, for the folded
frozen BN, ``F.conv2d`` itself (:func:`conv2d_kernels`).

Each kernel supplies a forward and its own input and weight gradients; :func:`kernel_autograd`
is the one place they become a differentiable convolution (of ``weight``, or of ``weight``
scaled per output channel: the on-the-fly folded frozen BN of :mod:`resdet.layers.fold`), and
:func:`kernel_conv2d` falls back to ``F.conv2d`` for calls the kernel does not take (CUDA,
autocast, small maps).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "KernelConv2d",
    "KernelConv2dFunction",
    "conv2d_kernels",
    "kernel_autograd",
    "kernel_conv2d",
]

Forward = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
Backward = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, bool, bool],
    Tuple[Optional[torch.Tensor], Optional[torch.Tensor]],
]


class KernelConv2dFunction(torch.autograd.Function):
    """``forward(x, weight * scale, bias)`` with the gradients ``backward(x, weight, grad,
    need_x, need_w) -> (grad_x, grad_w)`` of the same kernel; ``scale`` (per output channel) may
    be None. The scaled weight is not kept for the backward (autograd would hold one per
    convolution until then: ~94 MB for an R50's trainable stages) but recomputed there; the
    bias gradient is the sum of ``grad`` over batch and pixels. Called by
    :func:`kernel_autograd`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        scale: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        forward: Forward,
        backward: Backward,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight, scale)
        ctx.backward, ctx.has_bias = backward, bias is not None
        return forward(x, _scaled(weight, scale), bias)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight, scale = ctx.saved_tensors
        need_x, need_w, need_s, need_b = ctx.needs_input_grad[:4]
        grad_x, grad_w = ctx.backward(x, _scaled(weight, scale), grad, need_x, need_w or need_s)
        grad_weight = grad_scale = grad_b = None
        if need_w:
            grad_weight = grad_w if scale is None else grad_w * scale.view(-1, 1, 1, 1)
        if need_s:
            grad_scale = (grad_w * weight).sum((1, 2, 3))
        if need_b and ctx.has_bias:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_scale, grad_b, None, None


def _scaled(weight: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    return weight if scale is None else weight * scale.view(-1, 1, 1, 1)


def kernel_autograd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    forward: Forward,
    backward: Backward,
    scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``conv(x, weight * scale, bias)`` computed by the kernel ``(forward, backward)``,
    differentiable in ``x``, ``weight``, ``scale`` and ``bias``."""
    return KernelConv2dFunction.apply(x, weight, scale, bias, forward, backward)


@functools.cache
def _conv2d_kernels(
    stride: Tuple[int, int], padding: Tuple[int, int], dilation: Tuple[int, int], groups: int
) -> Tuple[Forward, Backward]:
    def forward(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    def backward(
        x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor, need_x: bool, need_w: bool
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, w, None, list(stride), list(padding), list(dilation), False, [0, 0],
            groups, [need_x, need_w, False],
        )  # fmt: skip
        return grad_x, grad_w

    return forward, backward


def conv2d_kernels(conv: nn.Conv2d) -> Tuple[Forward, Backward]:
    """``(forward, backward)`` of ``F.conv2d`` with ``conv``'s stride, padding (numbers, not
    "same"), dilation and groups: oneDNN's (or CUDA's) kernels as a :func:`kernel_autograd`
    pair."""
    return _conv2d_kernels(
        tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups
    )


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
        return kernel_autograd(x, weight, bias, train_forward or forward, backward)
    return forward(x, weight, bias)


class KernelConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` computed by a kernel's differentiable call: a subclass sets ``kernel``
    (``staticmethod(conv2d(x, weight, bias))``) and the flag that names it."""

    kernel: Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

    def _conv_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        return type(self).kernel(x, weight, bias)
