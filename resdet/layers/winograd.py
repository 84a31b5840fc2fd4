"""Winograd 3x3 convolutions on CPU through NNPACK, for inference and for training.

A 3x3 stride-1 convolution is a third to a half of the multiply-adds of a ResNet-FPN detector
(the bottleneck's middle convolution, the FPN output and RPN head convolutions). Winograd's
F(6x6, 3x3) computes it with ~4x fewer multiplications at a rounding error ~1e-5 of the
output's range. PyTorch's CPU builds ship NNPACK's AVX2 Winograd kernels
(``torch._nnpack_spatial_convolution``); oneDNN's own Winograd needs AVX-512, so on AVX2
machines this is what makes those compute-bound layers faster.

Two facts shape how it is called:

- NNPACK takes its Winograd path only for a batch of **one** image (its "inference" entry
  point); for a larger batch it picks a GEMM-like algorithm no faster than oneDNN's. So batches
  are convolved image by image.
- NNPACK has no backward. :func:`winograd_autograd` supplies one: the input gradient of a
  3x3 stride-1 convolution (padding 1) is itself such a convolution, of the output gradient
  with the flipped, transposed kernel, and runs through the same Winograd kernels; the weight
  gradient is a Winograd F(4x4, 3x3) correlation of input and output gradient tiles
  (:func:`winograd_weight_grad`, batched GEMMs).

Measured (``BENCHMARKS.md``), 256 channels at 200x336, batch 2: on an AVX2-only CPU forward
3.1x, forward + backward 2.4x faster than oneDNN's direct convolution. On an AVX-512 CPU with
AMX oneDNN's forward is as fast as NNPACK's and its NHWC kernels train faster still, so
evaluation and training use Winograd only where it is measured faster on the model
(:func:`resdet.accel.cpu_training_path`, :func:`resdet.accel.inference_winograd`).

:func:`winograd_training_` switches a model's eligible convolutions to this path in place (same
parameters, state-dict keys and optimizer); :class:`resdet.layers.fuse.FusedConv2d` uses the
forward for inference copies. The decision which path runs is :mod:`resdet.accel`'s.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from resdet.layers.kernel_function import KernelConv2d, kernel_autograd, kernel_conv2d
from resdet.layers.replace import switch_convs_, unswitch_convs_

__all__ = [
    "WINOGRAD_BAND_BYTES",
    "WINOGRAD_TRAIN_BAND_BYTES",
    "WINOGRAD_TRAINING_KERNELS",
    "WinogradConv2d",
    "undo_winograd_training_",
    "winograd_applies",
    "winograd_autograd",
    "winograd_available",
    "winograd_backward",
    "winograd_conv2d",
    "winograd_forward",
    "winograd_shape",
    "winograd_train_forward",
    "winograd_training_",
    "winograd_weight_grad",
]

logger = logging.getLogger(__name__)

# Below this many input or output channels the transforms cost more than Winograd saves
# (measured: 1.1x for a 15-channel output, 2.5-4x from 64 channels up).
WINOGRAD_MIN_CHANNELS = 32
# Winograd F(6x6, 3x3) computes 6x6 output tiles: on maps smaller than two tiles a side (C4's
# res5 sees 7x7 RoI maps) most of a tile is padding, so those run as ordinary convolutions.
WINOGRAD_MIN_SIZE = 12
# NNPACK keeps a workspace as large as the Winograd transforms of its largest call (~3.6x the
# input and output): images larger than this are convolved in bands of rows, which bounds it
# (R50-FPN at 800x1333: the 256-channel stride-4 maps, 69 MB, go in 5 bands). Each band
# costs a kernel transform and two rows of overlap: inference, one image, takes 16 MB bands
# (R50-FPN on an AVX2 EPYC, one process each, alternating: 4.06 s and 1495-1558 MB peak RSS,
# against 4.21 s and 1611-1637 MB with 32 MB bands, 4.65 s with 8 MB ones; torchvision's
# R50-FPN 1520-1561 MB); training, whose saved activations already fill memory, takes 8 MB
# ones (peak RSS of a batch-2 R50-FPN step 3223 against 3281 MB with 32 MB bands, at the same
# speed there).
WINOGRAD_BAND_BYTES = 16 << 20
WINOGRAD_TRAIN_BAND_BYTES = 8 << 20


def winograd_available() -> bool:
    """Whether NNPACK's Winograd convolution can run here (x86 with AVX2, or ARM NEON).

    ``torch.backends.nnpack.is_available()`` also initialises NNPACK, which its convolution
    needs before the first call.
    """
    return bool(torch.backends.nnpack.is_available()) and torch._C._get_nnpack_enabled()


def winograd_shape(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` has the geometry the Winograd path computes: 3x3, stride 1, padding 1
    (the output has the input's size), no dilation or groups, 32+ channels in and out."""
    return (
        tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.padding in ((1, 1), [1, 1])
        and conv.padding_mode == "zeros"
        and conv.groups == 1
        and min(conv.in_channels, conv.out_channels) >= WINOGRAD_MIN_CHANNELS
    )


def winograd_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the Winograd kernels can take this call: fp32 CPU tensors outside autocast, a
    map of at least :data:`WINOGRAD_MIN_SIZE` a side, NNPACK present."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype == torch.float32 == weight.dtype
        and min(x.shape[-2:]) >= WINOGRAD_MIN_SIZE
        and not torch.is_autocast_enabled("cpu")
        and winograd_available()
    )


def _per_image(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], band_bytes: int = 0
) -> torch.Tensor:
    """NNPACK's Winograd convolution (padding 1), one image at a time (see the module notes),
    an image larger than ``band_bytes`` (default :data:`WINOGRAD_BAND_BYTES`) in bands of
    rows."""
    if not winograd_available():  # also initialises NNPACK, which the first call needs
        raise RuntimeError("NNPACK's Winograd convolution is not available in this torch build")
    x = x.contiguous()
    n, c, h, w = x.shape
    bands = -(-c * h * w * x.element_size() // (band_bytes or WINOGRAD_BAND_BYTES))
    if n == 1 and bands <= 1:
        return torch._nnpack_spatial_convolution(x, weight, bias, [1, 1])
    out = x.new_empty((n, weight.shape[0], h, w))
    step = -(-h // bands)
    for i in range(n):  # one image's (band's) output alive at a time besides ``out``
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            # The band and one row of context each side; the rows computed from NNPACK's
            # zero padding at an inner edge are dropped.
            top, bottom = max(r0 - 1, 0), min(r1 + 1, h)
            y = torch._nnpack_spatial_convolution(
                x[i : i + 1, :, top:bottom].contiguous(), weight, bias, [1, 1]
            )
            out[i : i + 1, :, r0:r1] = y[:, :, r0 - top : r1 - top]
    return out


def winograd_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    band_bytes: int = 0,
) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)`` for a 3x3 kernel through NNPACK's Winograd
    kernels, image by image (no autograd; :func:`winograd_conv2d` is the differentiable one);
    ``band_bytes`` as :func:`_per_image`'s."""
    return _per_image(x, weight.contiguous(), bias, band_bytes)


# Winograd F(4x4, 3x3) (Lavin & Gray, 2016): input tiles 6x6 (stride 4), output tiles 4x4.
_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]  # fmt: skip
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]  # fmt: skip
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


def _f43_transforms(dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2-D F(4x4, 3x3) transforms as matrices on row-major flattened tiles:
    ``B^T d B`` (36x36), ``A dY A^T`` (36x16), ``G^T M G`` (9x36)."""
    bt, g, at = (torch.tensor(m, dtype=torch.float64) for m in (_BT, _G, _AT))
    # vec(P X Q) = (P kron Q^T) vec(X) for row-major vec.
    return (torch.kron(bt, bt).to(dtype), torch.kron(at.T, at.T).to(dtype),
            torch.kron(g.T, g.T).to(dtype))  # fmt: skip


def winograd_weight_grad(x: torch.Tensor, grad: torch.Tensor, band: int = 8) -> torch.Tensor:
    """The weight gradient of a 3x3 stride-1 padding-1 convolution, by Winograd F(4x4, 3x3).

    ``x`` is the convolution's input ``[N, I, H, W]``, ``grad`` the gradient of its output
    ``[N, O, H, W]``; returns ``[O, I, 3, 3]``, what ``aten.convolution_backward`` computes with
    ~4x fewer multiplications: for every 6x6 input tile ``d`` and the 4x4 output-gradient tile
    ``dY`` it feeds, ``dW = G^T (sum over tiles of (A dY A^T) * (B^T d B)) G``, the sum being 36
    GEMMs of ``[O, tiles] @ [tiles, I]``. Tiles are taken ``band`` tile rows at a time (bounded
    memory, cache-friendly). Rounding error measured ~5e-6 of the largest entry, as oneDNN's.
    """
    n, c_in, h, w = x.shape
    c_out = grad.shape[1]
    kb, ka, kg = _f43_transforms(x.dtype)
    rows, cols = -(-h // 4), -(-w // 4)  # output tiles per column / row
    pad_w = 4 * cols - w
    acc = x.new_zeros(36, c_out, c_in)
    for i in range(n):
        for r0 in range(0, rows, band):
            r1 = min(rows, r0 + band)
            t = (r1 - r0) * cols
            # Input rows 4*r0-1 .. 4*r1+1 (the convolution's zero padding, then zeros up to
            # whole tiles), output-gradient rows 4*r0 .. 4*r1: a band at a time, so nothing
            # image-sized is copied.
            top, bottom = 4 * r0 - 1, 4 * r1 + 1
            d = x[i, :, max(top, 0) : min(bottom, h)]
            d = F.pad(d, (1, 1 + pad_w, max(-top, 0), bottom - min(bottom, h)))
            d = d.unfold(1, 6, 4).unfold(2, 6, 4)  # I, r, c, 6, 6
            d = d.permute(3, 4, 0, 1, 2).reshape(36, c_in * t)
            dy = grad[i, :, 4 * r0 : min(4 * r1, h)]
            dy = F.pad(dy, (0, pad_w, 0, 4 * (r1 - r0) - dy.shape[1]))
            dy = dy.reshape(c_out, r1 - r0, 4, cols, 4).permute(2, 4, 0, 1, 3).reshape(16, -1)
            v = (kb @ d).view(36, c_in, t)
            u = (ka @ dy).view(36, c_out, t)
            acc.baddbmm_(u, v.transpose(1, 2))
    return (kg @ acc.view(36, -1)).view(3, 3, c_out, c_in).permute(2, 3, 0, 1).contiguous()


def winograd_train_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """:func:`winograd_forward` in the training band size (``WINOGRAD_TRAIN_BAND_BYTES``)."""
    return _per_image(x, weight.contiguous(), bias, WINOGRAD_TRAIN_BAND_BYTES)


def winograd_autograd(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)`` for a 3x3 kernel, forward and input gradient as
    Winograd convolutions (NNPACK), weight gradient by :func:`winograd_weight_grad`, for any
    call (:func:`winograd_conv2d` picks where it applies)."""
    return kernel_autograd(x, weight, bias, *WINOGRAD_TRAINING_KERNELS)


def winograd_backward(
    x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, need_x: bool, need_w: bool
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Input and weight gradients of ``conv2d(x, weight, padding=1)`` (3x3, stride 1) given
    the output's gradient ``grad``; ``None`` for what is not needed."""
    grad = grad.contiguous()
    grad_x = grad_w = None
    if need_w:  # first: its temporaries are gone before the input-sized ``grad_x`` exists
        grad_w = winograd_weight_grad(x, grad)
    if need_x:
        # d conv(x, W) / dx, for stride 1 and padding 1: conv(grad, W flipped, in <-> out).
        flipped = weight.flip(2, 3).transpose(0, 1).contiguous()
        grad_x = _per_image(grad, flipped, None, WINOGRAD_TRAIN_BAND_BYTES)
    return grad_x, grad_w


# The (forward, backward) pair of a training call (kernel_function's Forward / Backward).
WINOGRAD_TRAINING_KERNELS = (winograd_train_forward, winograd_backward)


def winograd_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """A 3x3 stride-1 padding-1 convolution, Winograd where :func:`winograd_applies`, else
    ``F.conv2d``. Differentiable either way. The Winograd output is NCHW-contiguous."""
    return kernel_conv2d(
        x, weight, bias, applies=winograd_applies, forward=winograd_forward,
        train_forward=winograd_train_forward, backward=winograd_backward, padding=1,
    )  # fmt: skip


class WinogradConv2d(KernelConv2d):
    """An ``nn.Conv2d`` of :func:`winograd_shape` computed by :func:`winograd_conv2d` (the
    ordinary convolution wherever the Winograd kernels do not apply: its padding is 1, so
    ``F.conv2d(x, w, b, 1, 1)`` is the module's own convolution)."""

    winograd = True
    kernel = staticmethod(winograd_conv2d)


def winograd_training_(model: nn.Module) -> List[str]:
    """Run ``model``'s 3x3 stride-1 convolutions (:func:`winograd_shape`) through
    :func:`winograd_autograd`, in place; returns their names.

    A plain ``nn.Conv2d`` is replaced by a :class:`WinogradConv2d` holding the same parameters;
    a convolution that has a ``winograd`` flag of its own (the on-the-fly folded convolution of
    :mod:`resdet.layers.fold`) gets the flag set. Parameters, buffers, state-dict keys and an
    existing optimizer stay as they are, and outputs and gradients agree with ``F.conv2d`` to
    ~1e-5 relative. Calls the Winograd kernels cannot take (CUDA, autocast, small maps) run
    ``F.conv2d`` as before, so the switch is safe on any device. Apply after
    :func:`~resdet.layers.fold.fold_frozen_bn_training_`.
    """
    names = switch_convs_(model, "winograd", winograd_shape, WinogradConv2d)
    logger.debug("Winograd convolutions: %s", names)
    return names


def undo_winograd_training_(model: nn.Module) -> int:
    """Undo :func:`winograd_training_`; returns the number of convolutions restored."""
    return unswitch_convs_(model, "winograd", WinogradConv2d)
