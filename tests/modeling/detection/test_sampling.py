"""Matcher and balanced sampling."""

from __future__ import annotations

import pytest
import torch

from resdet.modeling.detection.sampling import (
    IGNORE,
    NEGATIVE,
    POSITIVE,
    Matcher,
    subsample_labels,
)


def test_no_ground_truth_means_all_negative() -> None:
    matched, labels = Matcher([0.3, 0.7])(torch.zeros(0, 5))
    assert labels.tolist() == [NEGATIVE] * 5
    assert matched.tolist() == [0] * 5


def test_threshold_bands() -> None:
    # Predictions' best IoU: 0.1 (neg), 0.3 (ignore: low is inclusive), 0.5 (ignore),
    # 0.7 (pos: high is inclusive), 0.9 (pos, matched to gt 1).
    iou = torch.tensor([[0.1, 0.3, 0.5, 0.7, 0.2], [0.0, 0.1, 0.2, 0.3, 0.9]])
    matched, labels = Matcher([0.3, 0.7])(iou)
    assert labels.tolist() == [NEGATIVE, IGNORE, IGNORE, POSITIVE, POSITIVE]
    assert matched.tolist() == [0, 0, 0, 0, 1]
    # low == high: no ignore band (the RoI heads' 0.5).
    _, labels = Matcher([0.5, 0.5])(iou)
    assert labels.tolist() == [NEGATIVE, NEGATIVE, POSITIVE, POSITIVE, POSITIVE]
    with pytest.raises(ValueError, match="ordered"):
        Matcher([0.7, 0.3])


def test_allow_low_quality_matches() -> None:
    # gt 0's best prediction has IoU 0.4 (< 0.7), tied by two predictions; gt 1 has none.
    iou = torch.tensor([[0.4, 0.4, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0]])
    _, strict = Matcher([0.3, 0.7])(iou)
    assert strict.tolist() == [IGNORE, IGNORE, NEGATIVE, NEGATIVE]
    matched, lowq = Matcher([0.3, 0.7], allow_low_quality_matches=True)(iou)
    assert lowq.tolist() == [POSITIVE, POSITIVE, NEGATIVE, NEGATIVE]
    assert matched[:2].tolist() == [0, 0]
    # Each gt gets its own best prediction even when another gt scores higher elsewhere.
    iou = torch.tensor([[0.9, 0.2, 0.0], [0.0, 0.25, 0.1]])
    _, labels = Matcher([0.3, 0.7], allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [POSITIVE, POSITIVE, NEGATIVE]


def _labels(num_pos: int, num_neg: int, num_ignore: int, bg: int) -> torch.Tensor:
    return torch.cat(
        [
            torch.full((num_pos,), 1 if bg != 1 else 0),
            torch.full((num_neg,), bg),
            torch.full((num_ignore,), IGNORE),
        ]
    )[torch.randperm(num_pos + num_neg + num_ignore)]


@pytest.mark.parametrize("bg", [0, 3])  # RPN: 0 is background; heads: K (=3) is background
def test_subsample_respects_num_and_fraction(bg: int) -> None:
    torch.manual_seed(0)
    labels = _labels(100, 1000, 50, bg)
    pos, neg = subsample_labels(labels, 64, 0.25, bg)
    assert len(pos) == 16 and len(neg) == 48
    assert (labels[pos] != bg).all() and (labels[pos] != IGNORE).all()
    assert (labels[neg] == bg).all()
    assert len(set(pos.tolist()) | set(neg.tolist())) == 64  # no duplicates


def test_subsample_fills_with_negatives_and_handles_edge_cases() -> None:
    torch.manual_seed(0)
    labels = _labels(5, 1000, 10, 0)
    pos, neg = subsample_labels(labels, 64, 0.5, 0)
    assert len(pos) == 5 and len(neg) == 59
    pos, neg = subsample_labels(_labels(0, 100, 10, 0), 64, 0.5, 0)
    assert len(pos) == 0 and len(neg) == 64
    # Too few of everything: take all there is, never an ignored one.
    labels = _labels(3, 7, 20, 0)
    pos, neg = subsample_labels(labels, 64, 0.5, 0)
    assert len(pos) == 3 and len(neg) == 7
    # Seeded: the same draw twice.
    torch.manual_seed(1)
    a = subsample_labels(_labels(50, 500, 0, 0), 32, 0.5, 0)
    torch.manual_seed(1)
    b = subsample_labels(_labels(50, 500, 0, 0), 32, 0.5, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
