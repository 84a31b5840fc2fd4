"""Top-k classification error, the metric of the paper's ImageNet and CIFAR tables.

Errors are fractions in [0, 1] (the paper prints percentages). With fewer classes than k
(e.g. ``top5_err`` on a 3-class problem), k is clamped to the number of classes C, so every
sample is a hit and the error is 0; the key keeps the requested k.
"""

from __future__ import annotations

import logging
from typing import Dict, Sequence

import torch

logger = logging.getLogger(__name__)


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [N, C], got {tuple(logits.shape)}")
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must have shape [N] = [{logits.shape[0]}], got {tuple(targets.shape)}"
        )
    if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(
            f"targets must lie in 0..{logits.shape[1] - 1}, "
            f"got range {int(targets.min())}..{int(targets.max())}"
        )


def topk_correct(
    logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> torch.Tensor:
    """Number of samples whose target is among the ``k`` highest logits, for each ``k``.

    Args:
        logits: ``float[N, C]`` class scores (logits or probabilities; only the order matters).
        targets: ``int64[N]`` class indices in ``0..C-1``.
        ks: the ``k`` values; each is clamped to ``C``.

    Returns:
        ``int64[len(ks)]`` counts, on the CPU.
    """
    _check(logits, targets)
    kmax = min(max(ks), logits.shape[1])
    # Ties are broken by torch.topk's order, as in every reference implementation.
    pred = logits.detach().topk(kmax, dim=1).indices  # [N, kmax]
    hits = pred == targets.detach().view(-1, 1).to(pred.device)  # at most one hit per row
    return torch.stack([hits[:, : min(k, kmax)].sum() for k in ks]).to("cpu", torch.int64)


def topk_errors(
    logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> Dict[str, float]:
    """Top-k error fractions of one batch: ``{"top1_err": .., "top5_err": ..}``.

    Args: see :func:`topk_correct`. With ``N == 0`` the errors are ``nan``.
    """
    correct = topk_correct(logits, targets, ks)
    n = targets.shape[0]
    return {
        f"top{k}_err": (1.0 - c / n) if n else float("nan") for k, c in zip(ks, correct.tolist())
    }


class ClassificationMeter:
    """Accumulates top-k hit counts over batches (and across ranks) for an exact dataset error.

    Summing counts, not averaging per-batch errors, keeps the result exact when the last
    batch is smaller. :meth:`compute` sums the counts over all ranks when
    ``torch.distributed`` is initialized; every rank must then call it.
    """

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.reset()

    def reset(self) -> None:
        self.correct = torch.zeros(len(self.ks), dtype=torch.int64)
        self.num_samples = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch: ``logits`` ``float[N, C]``, ``targets`` ``int64[N]``."""
        self.correct += topk_correct(logits, targets, self.ks)
        self.num_samples += int(targets.shape[0])

    def compute(self) -> Dict[str, float]:
        """Error fractions over everything seen (on all ranks): ``{"top{k}_err": ...}``.

        The local counts are left as they are, so calling it twice gives the same answer.
        """
        counts = torch.cat([self.correct, torch.tensor([self.num_samples], dtype=torch.int64)])
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # NCCL only reduces CUDA tensors; gloo reduces CPU ones.
            device = (
                torch.device("cuda", torch.cuda.current_device())
                if dist.get_backend() == "nccl"
                else torch.device("cpu")
            )
            counts = counts.to(device)
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
            counts = counts.cpu()
        n = int(counts[-1])
        if n == 0:
            logger.warning("ClassificationMeter.compute() with no samples: errors are nan")
        return {
            f"top{k}_err": (1.0 - int(c) / n) if n else float("nan")
            for k, c in zip(self.ks, counts[:-1].tolist())
        }
