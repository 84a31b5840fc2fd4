"""Matching predictions to ground truth by IoU, and balanced sampling of the matches."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

IGNORE = -1
NEGATIVE = 0
POSITIVE = 1


class Matcher:
    """Assign each of N predictions (anchors or proposals) to at most one of G ground truths.

    Args:
        thresholds: ``[low, high]``: IoU < low is negative, IoU >= high positive, in between
            ignored (RPN: 0.3 / 0.7). With ``low == high`` there is no ignore band (heads: 0.5).
        allow_low_quality_matches: also make positive, for each ground truth, the predictions
            with the highest IoU to it, even below ``high`` (Faster R-CNN Sec. 3.1.2), so that
            every object gets at least one anchor.
    """

    def __init__(
        self, thresholds: Sequence[float], allow_low_quality_matches: bool = False
    ) -> None:
        self.low, self.high = float(thresholds[0]), float(thresholds[1])
        if self.low > self.high:
            raise ValueError(f"Matcher thresholds must be ordered, got {thresholds}")
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Args: ``iou`` ``float[G, N]``. Returns ``(matched_idx int64[N], labels int8[N])``:
        the index of the best ground truth per prediction (0 when G == 0) and its label
        (1 positive, 0 negative, -1 ignore)."""
        n = iou.shape[1]
        if iou.shape[0] == 0:
            # No objects in the image: every prediction is background.
            return (
                torch.zeros(n, dtype=torch.int64, device=iou.device),
                torch.zeros(n, dtype=torch.int8, device=iou.device),
            )
        best, matched = iou.max(dim=0)
        labels = torch.full((n,), IGNORE, dtype=torch.int8, device=iou.device)
        labels[best < self.low] = NEGATIVE
        labels[best >= self.high] = POSITIVE
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            # Ties count: every prediction reaching a ground truth's best IoU becomes positive.
            # A ground truth with IoU 0 everywhere gets no forced match.
            is_best = (iou == best_per_gt) & (best_per_gt > 0)
            labels[is_best.any(dim=0)] = POSITIVE
        return matched, labels


def subsample_labels(
    labels: torch.Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pick up to ``num_samples`` indices with at most ``positive_fraction`` positives.

    Args:
        labels: ``int64[N]``: ``-1`` ignore, ``bg_label`` background, anything else foreground.
    Returns:
        ``(pos_idx, neg_idx)``: int64 indices. Negatives fill what positives leave free.
    """
    positive = torch.nonzero((labels != IGNORE) & (labels != bg_label)).squeeze(1)
    negative = torch.nonzero(labels == bg_label).squeeze(1)
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pos = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return pos, neg
