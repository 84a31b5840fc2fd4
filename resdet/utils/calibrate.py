"""Random weights that behave like trained ones: detections to compare without a download.

With random weights a detector is degenerate: all class scores are about ``1/(K+1)``, below the
0.05 test threshold, so it produces no detections and its NMS does no work. Timing it, or
checking that two implementations (plain and fused paths, resdet and a converted torchvision or
detectron2 model) give the same detections, then says nothing. :func:`calibrate_` sets every
frozen BN's statistics from one real input (activations stay unit-scale through the whole trunk,
like a trained network's) and scales the class logits, so the model produces its configured
number of proposals and detections. Used by the benchmark (``resdet_apps.benchmark``) and the
parity tests of folding, fusing and weight conversion.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch
import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["calibrate_"]


@torch.no_grad()
def calibrate_(model: nn.Module, run: Callable[[], Any], logit_std: float = 2.0) -> nn.Module:
    """Make randomly initialised weights behave like trained ones, in place (see the module doc).

    1. Every ``FrozenBatchNorm2d`` gets the mean and variance of its own input on one forward
       pass of ``run`` (set by a pre-hook just before it normalises, so later layers already
       see calibrated inputs): activations stay unit-scale through any depth.
    2. Every ``cls_score`` layer is scaled so its logits have standard deviation ``logit_std``:
       some classes clear the score threshold and the detector produces detections.

    ``run`` runs the model in eval mode on a representative input. Returns ``model``.
    """
    was_training = model.training
    model.eval()

    def set_stats(bn: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
        x = args[0].float()
        bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(x.var(dim=(0, 2, 3)).clamp_min(1e-4))

    logits: Dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(set_stats) for m in model.modules()
               if isinstance(m, FrozenBatchNorm2d)]  # fmt: skip
    cls = {n: m for n, m in model.named_modules() if n.endswith("cls_score")}
    for name, m in cls.items():
        handles.append(m.register_forward_hook(lambda mod, i, o, n=name: logits.update({n: o})))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name, m in cls.items():
        if name in logits:
            std = float(logits[name].float().std())
            m.weight.mul_(logit_std / max(std, 1e-12))
    return model
