"""Fused convolutions for CPU inference: conv + bias + ReLU (+ residual add) in one oneDNN call.

In eager PyTorch a ResNet block is a chain of separate kernels: convolution, batch-norm
multiply, batch-norm add, ReLU, residual add, ReLU -- each one a full pass over an activation
that does not fit in cache. After :func:`~resdet.layers.fold.fold_frozen_bn` the norm passes
are gone; this module removes the others by handing oneDNN the whole ``relu(conv(x) + b
[+ identity])`` as one primitive with post-ops (``torch.ops.mkldnn._convolution_pointwise``,
the kernels ``torch.compile``'s inductor emits for CPU). Activations are kept channels_last
(NHWC), the layout those kernels read and write without reordering.

Measured on an AVX2 CPU (``BENCHMARKS.md``): a 1x1 convolution + ReLU runs ~2x faster than
``F.conv2d`` + ``F.relu`` in NCHW, and the block's last 1x1 convolution + residual add + ReLU
~8x faster (it is memory-bound when unfused).

Under CPU bf16 autocast (where oneDNN computes bf16: AVX-512 BF16 / AMX) the same fused calls
run in bf16, with each weight cast once and kept, instead of autocast's per-call casts and
separate bias / ReLU / add passes: R50-FPN at 800x1333 then runs ~6x torchvision's fp32 speed
on an AMX CPU (``BENCHMARKS.md``). The FPN's top-down add rides on its lateral convolution.

3x3 stride-1 convolutions (the bottleneck's middle convolution, the FPN output and RPN head
convolutions: about half of an R50-FPN's multiply-adds) can run as Winograd convolutions
through NNPACK (:mod:`resdet.layers.winograd`): ~4x fewer multiplications at a rounding error
~1e-5 of the output's range. That pays on AVX2-only CPUs (R50-FPN 1.65x torchvision's speed
there, against 1.20x without); on AVX-512 CPUs oneDNN's own kernels are faster, and
evaluation leaves it off where it is not measured faster (:func:`resdet.accel.inference_winograd`).

Only for inference on a folded copy: the fused modules have no autograd formula. Where the
fused kernel does not apply (no oneDNN, CUDA tensors, fp16 autocast, gradients) every module
falls back to the plain ops, so a fused model still runs anywhere, just without the gain.

This module holds the kernel only. Which convolutions fuse with what is said by the modules
that own them (``fuse()`` of the ResNet blocks and stem, the FPN and the RPN head), and
:func:`resdet.accel.fuse_for_inference` walks a model applying them.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from resdet.layers.gemm import gemm_can, gemm_forward, gemm_shape
from resdet.layers.winograd import winograd_available, winograd_conv2d, winograd_shape

__all__ = [
    "CastOnceLinear",
    "Conv1x1NCHW",
    "FusedConv2d",
    "mkldnn_bf16_available",
    "mkldnn_fusion_available",
    "winograd_available",
]


def mkldnn_bf16_available() -> bool:
    """Whether oneDNN computes bf16 on this CPU (AVX-512 BF16 / AMX natively, or emulated on
    other AVX-512 CPUs); without it a bf16 convolution is not oneDNN's."""
    return torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def mkldnn_fusion_available() -> bool:
    """Whether this torch build has oneDNN's fused convolution ops."""
    return (
        torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    )


# oneDNN's fused convolution that adds into (and returns) its ``other`` operand, where this
# torch build has it.
_ACCUMULATE = getattr(getattr(torch.ops.mkldnn, "_convolution_pointwise_", None), "binary", None)


class FusedConv2d(nn.Module):
    """``relu?(conv(x) + bias [+ residual])`` from an ``nn.Conv2d`` (folded: it has a bias).

    Args:
        conv: the convolution to take weights and geometry from (integer padding only).
        relu: apply ReLU after the (optional) residual add.
        winograd: run a 3x3 stride-1 convolution through NNPACK's Winograd kernels (NCHW),
            when :func:`winograd_available`; other shapes ignore it.

    ``forward(x, residual=None, accumulate=False)``: ``x`` ``float32[N, C, H, W]`` in any
    memory format; the output is channels_last on the oneDNN path, contiguous (NCHW) on the
    Winograd path. ``residual`` has the output's shape. With ``accumulate`` the caller gives
    ``residual`` up: the oneDNN path writes the sum into its memory and returns it, instead of
    a new output (into a converted copy where ``residual`` is not already channels_last in the
    computed dtype; the Winograd and plain paths ignore ``accumulate``). A new large
    activation costs more than its arithmetic on CPU: glibc maps blocks over 32 MB afresh on
    every allocation, and the kernel faults in and zeroes every page (res2's 64 -> 256
    convolution of an 800x1333 image, 69 MB out: 34 ms into a new output, 15 ms into the
    residual; AVX-512 EPYC, 2 threads).
    """

    def __init__(self, conv: nn.Conv2d, relu: bool, winograd: bool = False) -> None:
        super().__init__()
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError("FusedConv2d needs explicit integer zero padding")
        w = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        self.weight = nn.Parameter(w, requires_grad=False)
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = nn.Parameter(b.to(w), requires_grad=False)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu = relu
        self.winograd = winograd and winograd_shape(conv) and winograd_available()
        if self.winograd:  # NNPACK reads NCHW weights
            self.weight = nn.Parameter(conv.weight.detach().contiguous(), requires_grad=False)
        # Weights in another dtype or layout (bf16 under autocast), made on first use.
        self._cast: Tuple[torch.Tensor, torch.Tensor] = (self.weight, self.bias)
        self._cast_key: Tuple = ()

    def _fused_dtype(self, x: torch.Tensor) -> Optional[torch.dtype]:
        """The dtype the fused oneDNN kernel runs this call in, or ``None`` where it does not
        apply: fp32 outside autocast; bf16 under CPU bf16 autocast where oneDNN computes bf16
        (what autocast's own convolution would run, with the weights cast once)."""
        if (
            x.device.type != "cpu"
            or self.weight.dtype != torch.float32
            or (torch.is_grad_enabled() and x.requires_grad)
            or not mkldnn_fusion_available()
        ):
            return None
        if not torch.is_autocast_enabled("cpu"):
            return torch.float32 if x.dtype == torch.float32 else None
        if torch.get_autocast_dtype("cpu") == torch.bfloat16 and mkldnn_bf16_available():
            return torch.bfloat16
        return None

    def _weight_as(self, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """Channels-last weight and bias in ``dtype``, cast on first use and kept (an inference
        copy's weights do not change; a ``load_state_dict`` or ``.to()`` is noticed)."""
        w, b = self.weight, self.bias
        if dtype == w.dtype and not self.winograd:
            return w, b
        key = (dtype, w.data_ptr(), w._version, b.data_ptr(), b._version)
        if self._cast_key != key:
            self._cast = (
                w.detach().to(dtype).contiguous(memory_format=torch.channels_last),
                b.detach().to(dtype),
            )
            self._cast_key = key
        return self._cast

    def forward(
        self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, accumulate: bool = False
    ) -> torch.Tensor:
        dtype = self._fused_dtype(x)
        if dtype is None:
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                         self.groups)  # fmt: skip
            if residual is not None:
                y = y + residual
            return F.relu(y) if self.relu else y
        if self.winograd and dtype == torch.float32:
            return self._winograd(x, residual)
        weight, bias = self._weight_as(dtype)
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        geometry = (self.padding, self.stride, self.dilation, self.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, *geometry, "relu" if self.relu else "none", [], ""
            )
        residual = residual.to(dtype).contiguous(memory_format=torch.channels_last)
        post = ("add", 1.0, "relu" if self.relu else None, [], None)
        if accumulate and _ACCUMULATE is not None:
            return _ACCUMULATE(residual, x, weight, bias, *geometry, *post)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, weight, bias, *geometry, *post
        )

    def _winograd(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        y = winograd_conv2d(x, self.weight, self.bias)  # NCHW out; small maps: F.conv2d
        if residual is not None:
            y.add_(residual)
        return y.relu_() if self.relu else y

    def extra_repr(self) -> str:
        o, i = self.weight.shape[:2]
        k = tuple(self.weight.shape[2:])
        extra = ", winograd" if self.winograd else ""
        return f"{i}, {o}, kernel={k}, stride={self.stride}, relu={self.relu}{extra}"


class Conv1x1NCHW(nn.Module):
    """``conv(x) + bias [+ residual]`` of a 1x1 ``nn.Conv2d`` whose output is NCHW whatever
    the input's layout: one GEMM per image, ``weight[O, C] @ x[C, H*W]``, with BLAS reading a
    channels_last input as the transposed matrix it already is (no copy).

    The layout NNPACK's Winograd convolutions read and write: where an FPN level and the RPN
    head run Winograd (:meth:`resdet.modeling.backbone.fpn.FPN.fuse`), their 1x1 convolutions
    produce NCHW maps directly instead of oneDNN's NHWC ones and a transposing copy (an NHWC ->
    NCHW copy of a 256-channel stride-4 map of an 800x1333 image costs about a third of the
    3x3 convolution Winograd saves, measured).

    ``forward(x, residual=None)``: ``x`` ``float32[N, C, H, W]``, ``residual`` the output's
    shape. Outside plain fp32 CPU inference (gradients, autocast, other devices) it is
    ``F.conv2d`` (+ residual).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not gemm_shape(conv):
            raise ValueError(f"Conv1x1NCHW takes a 1x1 stride-1 unpadded convolution, got {conv}")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = nn.Parameter(b.to(self.weight), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Any map size (the NCHW output is the point here, not the GEMMs' speed).
        if not gemm_can(x, self.weight) or (torch.is_grad_enabled() and x.requires_grad):
            y = F.conv2d(x, self.weight, self.bias)
            return y if residual is None else y + residual
        out = gemm_forward(x, self.weight, self.bias)  # NCHW, any input layout
        return out if residual is None else out.add_(residual)

    def extra_repr(self) -> str:
        o, i = self.weight.shape[:2]
        return f"{i}, {o}, kernel=(1, 1), NCHW out"


class CastOnceLinear(nn.Module):
    """An ``nn.Linear`` for an inference copy that, under CPU bf16 autocast, casts its weight to
    bf16 once and keeps it, instead of autocast casting it again on every call (the R50-FPN box
    head's first layer, 1024 x 12544, cost 10 ms per image that way on an AMX Xeon, 2% of a
    bf16 inference). Elsewhere (fp32, other devices or dtypes, gradients) it is ``F.linear``
    with the original weight. The kept copy follows a ``load_state_dict`` or ``.to()``.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)
        b = linear.bias.detach() if linear.bias is not None else None
        self.bias = None if b is None else nn.Parameter(b, requires_grad=False)
        self._cast: Tuple[torch.Tensor, Optional[torch.Tensor]] = (self.weight, self.bias)
        self._cast_key: Tuple = ()

    def _bf16(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        w, b = self.weight, self.bias
        key = (w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
        if self._cast_key != key:
            self._cast = (w.detach().to(torch.bfloat16),
                          None if b is None else b.detach().to(torch.bfloat16))  # fmt: skip
            self._cast_key = key
        return self._cast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and not (torch.is_grad_enabled() and x.requires_grad)
        ):
            w, b = self._bf16()  # autocast casts x to bf16; the kept weight needs no cast
            return F.linear(x, w, b)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"in_features={i}, out_features={o}, bf16 weight kept under autocast"
