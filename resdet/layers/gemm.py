"""1x1 convolutions of NCHW maps as GEMMs, for CPU training and the NCHW inference path.

A 1x1 stride-1 convolution of an NCHW map is one matrix product per image,
``weight[O, C] @ x[C, H*W]``, and its gradients are two more (``weight.T @ grad`` and
``grad @ x.T``). PyTorch's CPU convolution (oneDNN) computes an NCHW convolution in its own
blocked layout, reordering the input and the output on every call: in an R50-FPN training step
on an AVX2 CPU (NCHW, the Winograd path) its 1x1 convolutions ran at a third of the GEMM rate.
As BLAS calls on the data as it lies, forward + backward run 1.8-2.0x faster on maps of 50x84
pixels and more (measured, ``BENCHMARKS.md``); on smaller maps oneDNN's call is as fast or
faster, so maps under :data:`GEMM_MIN_PIXELS` keep ``F.conv2d``. In training a strided 1x1
convolution (a ResNet's projection shortcut) is the same GEMMs on the subsampled input,
``x[:, :, ::s, ::s]`` (:func:`gemm_input`): forward + backward 1.6-1.9x faster than oneDNN's
strided call on res3's and res4's shortcuts of an 800x1333 R50, the training step 4% (AVX2,
``BENCHMARKS.md``).

The forward also reads a channels_last input without a copy (its ``[H*W, C]`` rows are the
transposed matrix BLAS takes) and always writes NCHW: :class:`resdet.layers.fuse.Conv1x1NCHW`
uses it where the inference copy turns from oneDNN's NHWC maps to NNPACK's NCHW ones.

:func:`gemm_training_` switches a model's 1x1 convolutions to this path in place (same
parameters, state-dict keys and optimizer), beside :func:`~resdet.layers.winograd.
winograd_training_`; which path runs is :mod:`resdet.accel`'s decision.
"""

from __future__ import annotations

import functools
import logging
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from resdet.layers.kernel_function import KernelConv2d, kernel_autograd, kernel_conv2d
from resdet.layers.replace import switch_convs_, unswitch_convs_

__all__ = [
    "GEMM_KERNELS",
    "GEMM_MIN_PIXELS",
    "GemmConv2d",
    "gemm_applies",
    "gemm_autograd",
    "gemm_backward",
    "gemm_can",
    "gemm_conv2d",
    "gemm_forward",
    "gemm_input",
    "gemm_shape",
    "gemm_training_",
    "undo_gemm_training_",
]

logger = logging.getLogger(__name__)

# Below this many pixels a map's 1x1 convolution is as fast or faster in oneDNN (measured on
# an AVX2 CPU, forward + backward, batch 2: 25x42 px 53 vs 63 ms; 50x84 px 290 vs 155 ms).
GEMM_MIN_PIXELS = 2048


def gemm_shape(conv: nn.Conv2d, strided: bool = False) -> bool:
    """Whether ``conv`` is a convolution this path computes: 1x1, stride 1 (any stride with
    ``strided``: training subsamples the input first, :func:`gemm_input`), no padding or
    groups."""
    return (
        tuple(conv.kernel_size) == (1, 1)
        and (strided or tuple(conv.stride) == (1, 1))
        and conv.padding in ((0, 0), [0, 0])
        and conv.groups == 1
    )


def gemm_can(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the GEMMs can compute this call: fp32 CPU tensors outside autocast."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype == torch.float32 == weight.dtype
        and not torch.is_autocast_enabled("cpu")
    )


def gemm_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether this call goes through the GEMMs: :func:`gemm_can`, and a map of at least
    :data:`GEMM_MIN_PIXELS` pixels (where they are faster than oneDNN)."""
    return gemm_can(x, weight) and x.shape[-2] * x.shape[-1] >= GEMM_MIN_PIXELS


def gemm_input(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.Tensor]:
    """What the GEMMs read for ``conv``'s call on ``x`` (1x1, no padding): ``x`` at stride 1,
    else a contiguous copy of the pixels the stride lands on, ``x[:, :, ::sh, ::sw]`` (autograd
    scatters its gradient back); None where they do not apply (:func:`gemm_applies`)."""
    sh, sw = conv.stride
    sub = x if sh == sw == 1 else x[:, :, ::sh, ::sw]
    if not gemm_applies(sub, weight):
        return None
    return sub if sub is x else sub.contiguous()


def _rows(image: torch.Tensor) -> torch.Tensor:
    """``[C, H*W]`` of one ``[C, H, W]`` image: a view of an NCHW image, the transposed view
    of a channels_last one's ``[H*W, C]`` rows (BLAS reads either without a copy)."""
    c, h, w = image.shape
    if image.is_contiguous():
        return image.view(c, h * w)
    return image.permute(1, 2, 0).reshape(h * w, c).t()


def gemm_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``conv2d(x, weight, bias)`` for a 1x1 kernel, one GEMM per image; the output is
    NCHW-contiguous whatever ``x``'s layout (no autograd: :func:`gemm_conv2d` is the
    differentiable one)."""
    n, c, h, w = x.shape
    matrix = weight.reshape(weight.shape[0], c)
    out = x.new_empty((n, matrix.shape[0], h, w))
    for i in range(n):
        rows = out[i].view(-1, h * w)
        if bias is None:
            torch.mm(matrix, _rows(x[i]), out=rows)
        else:
            torch.addmm(bias[:, None], matrix, _rows(x[i]), out=rows)
    return out


def gemm_backward(
    x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, need_x: bool, need_w: bool
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Input and weight gradients of ``conv2d(x, weight)`` (1x1, stride 1) given the output's
    gradient ``grad``; ``None`` for what is not needed."""
    n, c, h, w = x.shape
    matrix = weight.reshape(weight.shape[0], c)
    grad = grad.contiguous()
    grad_x = x.new_empty((n, c, h, w)) if need_x else None
    grad_w = weight.new_zeros(matrix.shape) if need_w else None
    for i in range(n):
        g = grad[i].view(-1, h * w)
        if grad_x is not None:
            torch.mm(matrix.t(), g, out=grad_x[i].view(c, h * w))
        if grad_w is not None:
            grad_w.addmm_(g, _rows(x[i]).t())
    return grad_x, None if grad_w is None else grad_w.view_as(weight)


# The (forward, backward) pair of a call (kernel_function's Forward / Backward).
GEMM_KERNELS = (gemm_forward, gemm_backward)


def gemm_autograd(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``conv2d(x, weight, bias)`` for a 1x1 stride-1 kernel, forward and both gradients as
    GEMMs on the NCHW data, for any call (:func:`gemm_conv2d` picks where it applies)."""
    return kernel_autograd(x, weight, bias, *GEMM_KERNELS)


def gemm_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """A 1x1 stride-1 convolution, GEMMs where :func:`gemm_applies`, else ``F.conv2d``.
    Differentiable either way."""
    return kernel_conv2d(
        x, weight, bias, applies=gemm_applies, forward=gemm_forward, backward=gemm_backward
    )


class GemmConv2d(KernelConv2d):
    """An ``nn.Conv2d`` of :func:`gemm_shape` (strided too) computed by :func:`gemm_conv2d` on
    :func:`gemm_input` (its own ``_conv_forward``: the input is subsampled before the call)."""

    gemm = True

    def _conv_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        sub = gemm_input(self, x, weight)
        if sub is None:
            return F.conv2d(x, weight, bias, self.stride)
        return gemm_conv2d(sub, weight, bias)


def gemm_training_(model: nn.Module) -> List[str]:
    """Run ``model``'s 1x1 convolutions (:func:`gemm_shape`, strided ones on
    :func:`gemm_input`) through :func:`gemm_autograd`, in place; returns their names. As
    :func:`~resdet.layers.winograd.winograd_training_`: plain convolutions become
    :class:`GemmConv2d` around the same parameters, a convolution with a ``gemm`` flag of its
    own (the on-the-fly folded one) gets it set; calls the GEMMs do not take run ``F.conv2d``.
    """
    names = switch_convs_(model, "gemm", functools.partial(gemm_shape, strided=True), GemmConv2d)
    logger.debug("GEMM 1x1 convolutions: %s", names)
    return names


def undo_gemm_training_(model: nn.Module) -> int:
    """Undo :func:`gemm_training_`; returns the number of convolutions restored."""
    return unswitch_convs_(model, "gemm", GemmConv2d)
