"""The one place that decides and applies a model's fast paths, for training and for inference.

Training, evaluation, the :class:`~resdet.predictor.Predictor`, export and the benchmark all
call this module; none of them assembles a fast path itself.

- :func:`prepare_for_training` changes a detector in place for training: frozen BN applied to
  the weights on the fly (``SOLVER.FOLD_FROZEN_BN``), then the CPU's convolution path
  (:func:`cpu_training_path`: Winograd or channels_last). Parameters, state-dict keys and the
  optimizer stay as they are.
- :func:`inference_model` / :func:`inference_copy` make an eval-mode copy for inference: BN
  folded into the convolutions, on CPU conv + bias + ReLU (+ residual add) fused into single
  oneDNN calls (:func:`fuse_for_inference`) and, where it pays, 3x3 convolutions as Winograd
  convolutions. The model itself is left untouched (it may be training).

How each part folds or fuses is said by the modules themselves: folding by the layout of
(conv, norm) pairs (:mod:`resdet.layers.fold`), fusing by a ``fuse(winograd)`` method on the
modules that own the convolutions (the ResNet blocks and stem, the FPN, the RPN head; a module
that only fuses when folded says so with ``can_fuse()``); :func:`fuse_for_inference` walks a
model applying them. The kernels are in :mod:`resdet.layers`.

The decision rules are fixed by CPU capability as measured on two machines (``BENCHMARKS.md``):
:func:`winograd_pays` and :func:`channels_last_pays_for_training`.
"""

from __future__ import annotations

import copy
import logging
from typing import Dict, Optional

import torch
import torch.nn as nn

from resdet.config.schema import Config
from resdet.layers.fold import fold_frozen_bn, fold_frozen_bn_training_
from resdet.layers.fuse import FusedConv2d
from resdet.layers.replace import replace_children
from resdet.layers.winograd import winograd_available, winograd_training_

__all__ = [
    "channels_last_pays_for_training",
    "cpu_training_path",
    "fuse_for_inference",
    "inference_copy",
    "inference_model",
    "prepare_for_training",
    "to_channels_last",
    "training_paths_",
    "winograd_pays",
]

logger = logging.getLogger(__name__)


def winograd_pays() -> bool:
    """Whether NNPACK's Winograd convolutions beat oneDNN on this CPU: where the best vector ISA
    is AVX2.

    Measured on R50-FPN at 800x1333 (``BENCHMARKS.md``): on an AVX2-only CPU Winograd makes
    inference 1.65x torchvision's speed against 1.20x without, and the training step 1.61x; on
    an AVX-512 CPU (with AMX) oneDNN's own kernels are as fast per layer, inference is slower
    with Winograd (1.30x against 1.68x) and training is fastest channels_last without it
    (1.42x against 1.26x: :func:`channels_last_pays_for_training`).
    """
    return winograd_available() and torch.backends.cpu.get_cpu_capability() == "AVX2"


def channels_last_pays_for_training() -> bool:
    """Whether oneDNN's channels_last (NHWC) kernels are the fastest way to train on this CPU:
    AVX-512 CPUs (R50-FPN step 1.42x torchvision in NHWC, 1.12x NCHW, 1.26x with Winograd;
    ``BENCHMARKS.md``). On the AVX2-only CPU measured, NHWC training was slower than NCHW."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def cpu_training_path(cfg: Config, device: torch.device) -> str:
    """How the detector's convolutions train on this device: ``"winograd"`` (``SOLVER.WINOGRAD``
    on CPUs where NNPACK beats oneDNN: AVX2-only ones), ``"channels_last"``
    (``SOLVER.CPU_CHANNELS_LAST`` on CPUs where oneDNN's NHWC kernels are fastest: AVX-512 ones;
    nothing to do when ``MODEL.CHANNELS_LAST`` already asks for it) or ``"none"``."""
    if device.type != "cpu":
        return "none"
    if cfg.SOLVER.WINOGRAD and winograd_pays():
        return "winograd"
    if cfg.SOLVER.CPU_CHANNELS_LAST and not cfg.MODEL.CHANNELS_LAST:
        if channels_last_pays_for_training():
            return "channels_last"
    return "none"


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
    (:func:`~resdet.layers.fold.fold_frozen_bn_training_`); ``winograd``: 3x3 stride-1
    convolutions as Winograd convolutions (:func:`~resdet.layers.winograd.winograd_training_`);
    ``channels_last``: NHWC (:func:`to_channels_last`). Returns how many convolutions each
    switch changed (``{"fold": n, "winograd": n}``).
    """
    done = {"fold": 0, "winograd": 0}
    if fold:
        done["fold"] = fold_frozen_bn_training_(model)
    if winograd:
        done["winograd"] = len(winograd_training_(model))
    if channels_last:
        to_channels_last(model)  # in place: the optimizer's tensors stay
    return done


def prepare_for_training(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """The detector ``model`` (in place) with the training fast paths ``cfg`` asks for and this
    device pays for: ``SOLVER.FOLD_FROZEN_BN``, then :func:`cpu_training_path`. Returns it."""
    path = cpu_training_path(cfg, device)
    done = training_paths_(
        model,
        fold=cfg.SOLVER.FOLD_FROZEN_BN,
        winograd=path == "winograd",
        channels_last=path == "channels_last",
    )
    if cfg.SOLVER.FOLD_FROZEN_BN:
        logger.info("frozen BN applied to the weights of %d convolutions (SOLVER.FOLD_FROZEN_BN)",
                    done["fold"])  # fmt: skip
    if path == "winograd":
        logger.info("%d convolutions train as Winograd convolutions (SOLVER.WINOGRAD)",
                    done["winograd"])  # fmt: skip
    elif path == "channels_last":
        logger.info("the detector trains channels_last (SOLVER.CPU_CHANNELS_LAST)")
    return model


def fuse_for_inference(model: nn.Module, winograd: bool = False) -> nn.Module:
    """Fuse a *folded* model's convolutions for CPU inference, in place; returns it.

    Every module with a ``fuse(winograd)`` method (and ``can_fuse()`` true where it has one)
    fuses its own convolutions: the residual blocks (conv + bias + ReLU, the last with the
    residual add), the ResNet stem and the RPN head (ReLU inside), the FPN (top-down add inside
    the lateral convolution). Every other ``nn.Conv2d`` becomes a
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


def inference_model(model: nn.Module, cfg: Config) -> nn.Module:
    """The model to run evaluation and inference with .

    With ``TEST.FAST_INFERENCE`` (the default) an eval-mode copy of ``model`` with BN folded
    into the convolutions and, on CPU, conv + bias + ReLU (+ residual add) fused into single
    oneDNN calls and (``TEST.WINOGRAD``, on CPUs where it is the faster path:
    :func:`winograd_pays`) 3x3 convolutions run as Winograd convolutions
    (:func:`inference_copy`); it gives the same detections within float rounding. ``model``
    itself is left as it is (it may be training). Without it, ``model`` itself.
    """
    if not cfg.TEST.FAST_INFERENCE:
        return model
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    winograd = on_cpu and cfg.TEST.WINOGRAD and winograd_pays()
    return inference_copy(model, fuse=on_cpu, winograd=winograd)
