"""Normalization layers: the choice of BN, frozen BN (the paper's fine-tuning) or SyncBN."""

from __future__ import annotations

import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["FrozenBatchNorm2d", "get_norm", "freeze_batchnorm"]

NORMS = ("BN", "FrozenBN", "SyncBN")


def get_norm(name: str, channels: int) -> nn.Module:
    """Build a 2-D norm layer by config name ("BN", "FrozenBN" or "SyncBN")."""
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "FrozenBN":
        # torchvision's FrozenBatchNorm2d: the affine y = x * scale + shift with fixed
        # statistics, as the paper fine-tunes for detection (Appendix A).
        return FrozenBatchNorm2d(channels)
    if name == "SyncBN":
        # Statistics over the global batch across DDP ranks; a single process is plain BN.
        return nn.SyncBatchNorm(channels)
    raise ValueError(f"unknown norm '{name}'; choose one of {NORMS}")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d/SyncBatchNorm in ``module`` by a FrozenBatchNorm2d in place.

    Statistics and affine parameters are copied, so outputs in eval mode are unchanged.
    Returns the (possibly new) module, as a top-level BN is replaced rather than mutated.
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen.to(module.weight.device if module.affine else "cpu")
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
