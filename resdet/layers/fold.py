"""Fold frozen batch norm into the preceding convolution, for inference.

A ``FrozenBatchNorm2d`` after a convolution is a per-channel affine map
``y = (conv(x) - mean) / sqrt(var + eps) * gamma + beta``, so it can be absorbed into the
convolution: ``W' = W * s`` and ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``.
The folded network computes the same function with one pass over each activation instead of
three (conv, multiply, add): on a CPU, where these element-wise passes are memory-bound, this
is a measurable part of a ResNet forward (see ``BENCHMARKS.md``).

Folding changes the module tree (a convolution gains a bias, the norm becomes ``nn.Identity``)
and therefore the state-dict keys. It is applied to an inference *copy* only
(:func:`resdet.accel.inference_copy`): the original model keeps its keys, so checkpoints keep
loading into it and it keeps training.

For training, :func:`fold_frozen_bn_training_` folds on the fly instead: each (conv, frozen BN)
pair is replaced by a :class:`ConvFrozenBN` and a :class:`FoldedAwayFrozenBN` that hold the same
parameters and buffers (:mod:`resdet.layers.replace`).

Which pairs are folded: a norm is folded only where the module layout says the convolution
feeds it and nothing else, which holds for the ResNet family of resdet and torchvision:

- siblings ``conv<k>`` / ``bn<k>`` in one parent (stem ``conv1``/``bn1``, block ``conv1..3``);
- consecutive ``Conv2d``, norm in an ``nn.Sequential`` (the projection shortcut
  ``downsample = Sequential(conv, norm)``).
"""

from __future__ import annotations

import copy
import logging
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d

from resdet.layers.gemm import GEMM_KERNELS, gemm_input, undo_gemm_training_
from resdet.layers.kernel_function import conv2d_kernels, kernel_autograd
from resdet.layers.replace import conv_sharing, replace_children, share_buffers
from resdet.layers.winograd import (
    WINOGRAD_TRAINING_KERNELS,
    undo_winograd_training_,
    winograd_applies,
)

__all__ = [
    "ConvFrozenBN",
    "FoldedAwayFrozenBN",
    "find_conv_bn_pairs",
    "fold_conv_bn_",
    "fold_frozen_bn",
    "fold_frozen_bn_training_",
]

logger = logging.getLogger(__name__)


def _is_foldable_norm(m: nn.Module) -> bool:
    # BatchNorm2d folds with its running statistics (eval-mode behaviour); without them the
    # layer normalises by batch statistics, which no fixed affine map reproduces.
    if isinstance(m, FrozenBatchNorm2d):
        return True
    return isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None


def _channels(norm: nn.Module) -> int:
    return int(norm.running_mean.numel())  # FrozenBatchNorm2d has no ``num_features``


def _is_conv(m: nn.Module, channels: int) -> bool:
    return isinstance(m, nn.Conv2d) and m.out_channels == channels


def find_conv_bn_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """Names ``(conv, norm)`` of the pairs :func:`fold_frozen_bn` would fold, in module order.

    Names are full module paths in ``model`` (e.g. ``("backbone.layer1.0.conv1",
    "backbone.layer1.0.bn1")``). See the module docstring for the layouts recognised.
    """
    pairs = []
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        children = dict(parent.named_children())
        names = list(children)
        for i, (name, child) in enumerate(children.items()):
            if not _is_foldable_norm(child):
                continue
            conv_name = None
            if isinstance(parent, nn.Sequential):
                if i > 0 and _is_conv(children[names[i - 1]], _channels(child)):
                    conv_name = names[i - 1]
            elif name.startswith("bn") and _is_conv(
                children.get("conv" + name[2:], None), _channels(child)
            ):
                conv_name = "conv" + name[2:]
            if conv_name is not None:
                pairs.append((prefix + conv_name, prefix + name))
    return pairs


@torch.no_grad()
def fold_conv_bn_(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Absorb ``norm`` (frozen BN, or BN with running statistics) into ``conv``, in place.

    ``conv`` gains a bias if it had none. The caller replaces ``norm`` by ``nn.Identity``.
    Arithmetic is done in float64 so that folding adds no rounding beyond the final cast.
    """
    w = conv.weight.double()
    mean, var = norm.running_mean.double(), norm.running_var.double()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma * torch.rsqrt(var + norm.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1)).to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(((bias - mean) * scale + beta).to(dtype), requires_grad=False)


def fold_frozen_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every recognised (conv, frozen BN) pair of ``model``; return the folded model.

    Args:
        model: any module; typically a resdet ``FasterRCNN``, ``ResNet`` or a torchvision model.
        inplace: modify ``model`` itself. By default a deep copy is folded and ``model`` is left
            untouched (its state dict keeps loading checkpoints). Submodules shared inside the
            model (the C4 head borrows the trunk's ``res5``) stay shared in the copy.

    Returns:
        The folded model with frozen parameters (``requires_grad=False``): an inference model.
        Its outputs equal the original's in eval mode up to float rounding (~1e-6 relative).
    """
    if not inplace:
        model = copy.deepcopy(model)
    _undo_training_fold_(model)
    pairs = find_conv_bn_pairs(model)
    for conv_name, norm_name in pairs:
        parent_name, _, leaf = norm_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        fold_conv_bn_(model.get_submodule(conv_name), getattr(parent, leaf))
        setattr(parent, leaf, nn.Identity())
    left = [n for n, m in model.named_modules() if _is_foldable_norm(m)]
    logger.debug("folded %d conv+BN pairs; %d norm layers left unfolded", len(pairs), len(left))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class FoldedAwayFrozenBN(FrozenBatchNorm2d):
    """A frozen BN whose affine map its convolution now applies: the identity in forward, but
    it keeps its buffers (and so its state-dict keys) and is what the convolution reads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConvFrozenBN(nn.Conv2d):
    """``FrozenBN(conv(x))`` computed as one convolution with the affine folded into the
    weights on every call: ``conv(x, W * s) + (b - mean) * s + beta``. The weight scaling is
    differentiable, so ``W`` trains exactly as before; the activation-sized multiply and add
    of the norm (and the multiply in its backward) disappear.

    Made by :meth:`from_pair` around the convolution's own parameters; the norm (now a
    :class:`FoldedAwayFrozenBN` in the model, holding its buffers and keys) is read, not
    registered. ``winograd`` (set by :func:`resdet.layers.winograd.winograd_training_`) and
    ``gemm`` (:func:`resdet.layers.gemm.gemm_training_`) run the convolution through the
    Winograd kernels or the GEMMs where they apply.
    """

    winograd = False
    gemm = False

    @classmethod
    def from_pair(cls, conv: nn.Conv2d, norm: FoldedAwayFrozenBN) -> ConvFrozenBN:
        new = conv_sharing(cls, conv)
        new.__dict__["_frozen_bn"] = norm  # not a child: its keys stay where they were
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.__dict__["_frozen_bn"]
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        bias = shift if self.bias is None else self.bias * scale + shift
        if (
            torch.is_autocast_enabled(x.device.type)
            or isinstance(self.padding, str)
            or self.padding_mode != "zeros"  # the kernels zero-pad; nn.Conv2d's own call does not
        ):
            return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), bias)
        if self.winograd and winograd_applies(x, self.weight):
            kernels = WINOGRAD_TRAINING_KERNELS
        elif self.gemm and (sub := gemm_input(self, x, self.weight)) is not None:
            x, kernels = sub, GEMM_KERNELS  # a strided call's input is subsampled
        else:
            kernels = conv2d_kernels(self)
        # W * s is recomputed in the backward instead of kept (KernelConv2dFunction).
        return kernel_autograd(x, self.weight, bias, *kernels, scale=scale)


def _undo_training_fold_(model: nn.Module) -> None:
    undo_winograd_training_(model)  # a copy for inference starts from plain convolutions
    undo_gemm_training_(model)

    def swap(name: str, m: nn.Module) -> Optional[nn.Module]:
        if type(m) is ConvFrozenBN:
            return conv_sharing(nn.Conv2d, m)
        if type(m) is FoldedAwayFrozenBN:
            return share_buffers(FrozenBatchNorm2d(_channels(m), eps=m.eps), m)
        return None

    replace_children(model, swap)


def fold_frozen_bn_training_(model: nn.Module) -> int:
    """Fold every (conv, ``FrozenBatchNorm2d``) pair on the fly, in place, for training.

    Unlike :func:`fold_frozen_bn` nothing is copied or renamed: the same parameters (so an
    existing optimizer keeps working), the same state-dict keys (so checkpoints load and save
    as before), the same outputs and gradients up to float rounding. Only ``FrozenBatchNorm2d``
    qualifies (a trainable BN normalises by batch statistics). Returns the number of pairs.
    """
    new: dict = {}
    for conv_name, norm_name in find_conv_bn_pairs(model):
        norm, conv = model.get_submodule(norm_name), model.get_submodule(conv_name)
        if type(norm) is not FrozenBatchNorm2d or type(conv) is not nn.Conv2d:
            continue
        # New modules around the same parameters and buffers: keys and optimizer unchanged.
        folded = share_buffers(FoldedAwayFrozenBN(_channels(norm), eps=norm.eps), norm)
        new[id(norm)] = folded
        new[id(conv)] = ConvFrozenBN.from_pair(conv, folded)
    replace_children(model, lambda name, m: new.get(id(m)))
    return len(new) // 2
