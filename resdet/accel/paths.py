"""How each fast path is applied to a model, for training and for inference; no decisions
here (:mod:`resdet.accel` decides which of them pay on this machine).

How each part folds or fuses is said by the modules themselves: folding by the layout of
(conv, norm) pairs (:mod:`resdet.layers.fold`), fusing by a ``fuse(winograd)`` method on the
modules that own the convolutions (the ResNet blocks and stem, the FPN, the RPN head; a module
that only fuses when folded says so with ``can_fuse()``); :func:`fuse_for_inference` walks a
model applying them. The kernels are in :mod:`resdet.layers`.
"""

from __future__ import annotations

import copy
import logging
from typing import Dict, Optional

import torch
import torch.nn as nn

from resdet.layers.fold import fold_frozen_bn, fold_frozen_bn_training_
from resdet.layers.fuse import FusedConv2d
from resdet.layers.gemm import gemm_training_
from resdet.layers.replace import replace_children
from resdet.layers.winograd import winograd_training_

__all__ = ["fuse_for_inference", "inference_copy", "to_channels_last", "training_paths_"]

logger = logging.getLogger(__name__)


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` running NHWC, in place: its own ``use_channels_last()`` where it has one
    (resdet's ``FasterRCNN`` also converts its input batch), else its weights converted."""
    if hasattr(model, "use_channels_last"):
        return model.use_channels_last()
    return model.to(memory_format=torch.channels_last)


def training_paths_(
    model: nn.Module, fold: bool = False, winograd: bool = False, channels_last: bool = False
) -> Dict[str, int]:
    """Switch ``model``'s training fast paths on, in place, as asked (no decision here: see
    :func:`prepare_for_training`); same parameters, state-dict keys and optimizer.

    ``fold``: frozen BN applied to the weights on the fly
    (:func:`~resdet.layers.fold.fold_frozen_bn_training_`); ``winograd``: the NCHW kernels
    outside oneDNN, 3x3 stride-1 convolutions as Winograd convolutions
    (:func:`~resdet.layers.winograd.winograd_training_`) and 1x1 ones as GEMMs (strided ones
    on the subsampled input, :func:`~resdet.layers.gemm.gemm_training_`); ``channels_last``: NHWC
    (:func:`to_channels_last`). Returns how many convolutions each switch changed
    (``{"fold": n, "winograd": n, "gemm": n}``).
    """
    done = {"fold": 0, "winograd": 0, "gemm": 0}
    if fold:
        done["fold"] = fold_frozen_bn_training_(model)
    if winograd:
        done["winograd"] = len(winograd_training_(model))
        done["gemm"] = len(gemm_training_(model))
    if channels_last:
        to_channels_last(model)  # in place: the optimizer's tensors stay
    return done


def fuse_for_inference(model: nn.Module, winograd: bool = False) -> nn.Module:
    """Fuse a *folded* model's convolutions for CPU inference, in place; returns it.

    Every module with a ``fuse(winograd)`` method (and ``can_fuse()`` true where it has one)
    fuses its own convolutions: the residual blocks (conv + bias + ReLU, the last with the
    residual add), the ResNet stem and the RPN head (ReLU inside), the FPN (top-down add inside
    the lateral convolution), the FPN box head (a bf16 copy of its fully connected weights kept
    for autocast). Every other ``nn.Conv2d`` becomes a
    :class:`~resdet.layers.fuse.FusedConv2d` without ReLU (bias add fused, NHWC).

    With ``winograd``, 3x3 stride-1 convolutions of 32+ channels run through NNPACK's Winograd
    kernels where available. A model with ``use_channels_last`` (resdet's ``FasterRCNN``) then
    starts its input batch NHWC. Call on the output of
    :func:`~resdet.layers.fold.fold_frozen_bn`.
    """
    fused = 0
    for m in list(model.modules()):
        fuse = getattr(m, "fuse", None)
        if callable(fuse) and getattr(m, "can_fuse", lambda: True)():
            fuse(winograd=winograd)
            fused += 1

    def plain(name: str, m: nn.Module) -> Optional[nn.Module]:
        if isinstance(m, nn.Conv2d):
            return FusedConv2d(m, relu=False, winograd=winograd)
        return None

    rest = replace_children(model, plain)
    if hasattr(model, "use_channels_last"):
        model.use_channels_last(weights=False)  # the fused convolutions keep their own layout
    logger.debug("fused %d modules and %d other convolutions", fused, len(rest))
    return model


def inference_copy(
    model: nn.Module,
    fold: bool = True,
    fuse: bool = False,
    channels_last: bool = False,
    winograd: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """An eval-mode copy of ``model`` for fast inference; ``model`` itself is left untouched.

    Args:
        fold: fold frozen BN into the convolutions (:func:`~resdet.layers.fold.fold_frozen_bn`).
        fuse: also run conv + bias + ReLU (+ residual add) as single oneDNN calls in
            channels_last (:func:`fuse_for_inference`; implies ``fold``). The fastest CPU path
            measured in ``BENCHMARKS.md``.
        winograd: with ``fuse``, 3x3 stride-1 convolutions run as NNPACK Winograd
            convolutions where available.
        channels_last: NHWC activations and weights without fusing (:func:`to_channels_last`).
        inplace: change ``model`` itself instead of a copy (the benchmark, which holds one
            model per mode).
    """
    if fold or fuse:
        model = fold_frozen_bn(model, inplace=inplace)
    elif not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if fuse:
        model = fuse_for_inference(model, winograd=winograd)
    elif channels_last:
        model = to_channels_last(model)
    return model
