"""Losses shared by the RPN and the RoI heads (Ren et al. 2015, Sec. 3.1.2; Girshick 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["box_regression_loss"]


def box_regression_loss(
    pred: torch.Tensor, target: torch.Tensor, loss_type: str, beta: float
) -> torch.Tensor:
    """Summed smooth-L1 (``beta`` > 0) or L1 loss between ``[M, 4]`` deltas.

    The sum is normalised by the caller (the RPN by its sampled anchors, the RoI heads by their
    sampled regions), as the two papers do.
    """
    if loss_type == "smooth_l1" and beta > 0:
        return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
    if loss_type in ("smooth_l1", "l1"):
        return F.l1_loss(pred, target, reduction="sum")
    raise ValueError(f"unknown box loss '{loss_type}'; use 'smooth_l1' or 'l1'")
