"""The residual blocks of He et al. 2015: basic (Fig. 2 left) and bottleneck (Fig. 5 right),
with the shortcut options of Sec. 3.3 (A zero-padded identity, B/C projections) and the plain
twins (no shortcut). Module names follow torchvision (``conv1..3``, ``bn1..3``, ``downsample``).

Each block also says how it fuses for inference (:meth:`_Block.fuse`), which
:func:`resdet.accel.fuse_for_inference` applies.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from resdet.layers.fuse import FusedConv2d
from resdet.layers.norm import get_norm

__all__ = ["BasicBlock", "Bottleneck", "ZeroPadShortcut"]


class ZeroPadShortcut(nn.Module):
    """Option A: identity, subsampled by ``stride``, with extra channels filled by zeros."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride
        if self.extra < 0:
            raise ValueError("option A cannot reduce channels; use shortcut B or C")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


def _shortcut(
    kind: Optional[str], in_ch: int, out_ch: int, stride: int, norm: str
) -> Optional[nn.Module]:
    """The ``downsample`` branch of a block, or None for identity / plain nets."""
    changes = stride != 1 or in_ch != out_ch
    if kind is None or (kind in ("A", "B") and not changes):
        return None
    if kind == "A":
        return ZeroPadShortcut(in_ch, out_ch, stride)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), get_norm(norm, out_ch)
    )


def global_hooks() -> bool:
    """Whether module hooks registered for every module (``register_module_forward_hook``)
    could see a block's tensors: then no block writes into one it did not create."""
    from torch.nn.modules import module as nn_module

    return bool(
        getattr(nn_module, "_global_forward_hooks", None)
        or getattr(nn_module, "_global_forward_pre_hooks", None)
    )


def hooked(module: nn.Module) -> bool:
    """Whether a forward hook or pre-hook sits on ``module`` or any module inside it."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class _Block(nn.Module):
    """What the basic and bottleneck blocks share: convolutions ``conv1..convK`` each followed
    by ``bn1..bnK`` (built from the block's ``kernel_sizes``), the shortcut (``downsample``,
    None for identity; ``shortcut=None`` makes the plain block), the shortcut join, and fusing
    for inference.

    :meth:`fuse` (on a block whose norms :func:`~resdet.layers.fold.fold_frozen_bn` folded
    into the convolutions) turns every convolution into a
    :class:`~resdet.layers.fuse.FusedConv2d` that also applies the ReLU and, for the last one,
    the residual add; ``forward`` then calls them instead of conv, norm, add and ReLU.
    """

    expansion: int  # output channels / width
    kernel_sizes: Tuple[int, ...]  # of conv1..convK
    fused = False  # set by fuse(): forward runs the fused convolutions
    # Set by the ResNet's fuse() on every block of a stage but the first, unless a hook on it
    # or on the previous block could see or keep that tensor: its input is the previous
    # block's output, which nothing else reads, so the fused join may write the residual sum
    # into it (no new large activation; FusedConv2d's ``accumulate``).
    owns_input = False

    def __init__(
        self,
        in_ch: int,
        width: int,
        *,
        stride: int = 1,
        norm: str = "BN",
        shortcut: Optional[str] = "B",
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        channels = [in_ch] + [width] * (self.num_convs - 1) + [out_ch]
        # The stride sits in the first 3x3, or with stride_in_1x1 in the first convolution.
        strided = 0 if stride_in_1x1 else self.kernel_sizes.index(3)
        for i, size in enumerate(self.kernel_sizes):
            s = stride if i == strided else 1
            conv = nn.Conv2d(channels[i], channels[i + 1], size, s, padding=size // 2, bias=False)
            setattr(self, f"conv{i + 1}", conv)
            setattr(self, f"bn{i + 1}", get_norm(norm, channels[i + 1]))
        self.residual = shortcut is not None
        self.downsample = _shortcut(shortcut, in_ch, out_ch, stride, norm)

    @property
    def num_convs(self) -> int:
        return len(self.kernel_sizes)

    def norms(self) -> List[nn.Module]:
        return [getattr(self, f"bn{k}") for k in range(1, self.num_convs + 1)]

    def can_fuse(self) -> bool:
        """Whether :meth:`fuse` applies: every norm folded into its convolution."""
        return not self.fused and all(isinstance(n, nn.Identity) for n in self.norms())

    def fuse(self, winograd: bool = False) -> None:
        """Fuse conv + bias + ReLU (+ residual add) for inference, in place (see the class).

        A projection shortcut ``Sequential(conv, folded norm)`` becomes one fused convolution;
        option A (zero padding) and the identity stay. ``winograd`` is taken for the fusing
        walk's sake and not used: the block's 1x1 convolutions and its neighbours run oneDNN in
        NHWC, and the two layout copies around an NNPACK convolution cost what its Winograd
        arithmetic saves (measured, ``BENCHMARKS.md``); Winograd inference is the FPN's and the
        RPN head's, which run NCHW throughout.
        """
        if not self.can_fuse():
            raise ValueError(f"{type(self).__name__}.fuse needs a folded block: run fold_frozen_bn")
        for k in range(1, self.num_convs + 1):
            conv = getattr(self, f"conv{k}")
            setattr(self, f"conv{k}", FusedConv2d(conv, relu=True))
        ds = self.downsample
        if isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[1], nn.Identity):
            self.downsample = FusedConv2d(ds[0], relu=False)
        self.fused = True

    def _conv_norm_relu(self, k: int, x: torch.Tensor) -> torch.Tensor:
        conv = getattr(self, f"conv{k}")
        if self.fused:
            return conv(x)  # ReLU inside, norm folded
        return F.relu(getattr(self, f"bn{k}")(conv(x)), inplace=True)

    def _shortcut_join(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The last convolution and norm on ``out``, plus the shortcut of ``x``, then ReLU."""
        conv, norm = getattr(self, f"conv{self.num_convs}"), self.norms()[-1]
        if self.fused:
            if not self.residual:
                return conv(out)
            if self.downsample is None:  # the sum may go into x where nothing else reads it
                return conv(out, x, accumulate=self.owns_input and not global_hooks())
            # add and ReLU inside the convolution, the sum into the shortcut's new output
            # (a fused convolution's, unhooked: option A's zero padding may return a view of x)
            ds = self.downsample
            fresh = isinstance(ds, FusedConv2d) and not ds._forward_hooks and not global_hooks()
            return conv(out, ds(x), accumulate=fresh)
        out = norm(conv(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out, inplace=True)

    def last_norm(self) -> nn.Module:
        return self.norms()[-1]


class BasicBlock(_Block):
    """Two 3x3 convs (Fig. 2 left). ``shortcut=None`` makes the plain block."""

    expansion = 1
    kernel_sizes = (3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._shortcut_join(self._conv_norm_relu(1, x), x)


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 expand (Fig. 5 right). ``shortcut=None`` makes the plain block.

    ``stride_in_1x1`` puts the stride in the first 1x1 as the original MSRA/Caffe models do;
    otherwise it sits in the 3x3 (torchvision, "ResNet v1.5"), which is slightly more accurate.
    """

    expansion = 4
    kernel_sizes = (1, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_norm_relu(2, self._conv_norm_relu(1, x))
        return self._shortcut_join(out, x)
