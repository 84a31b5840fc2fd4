"""RPN: proposal count and placement, losses, and crowd regions ignored in matching."""

from __future__ import annotations

from typing import List

import torch
from torchvision.ops import box_iou

import resdet.modeling.detection.rpn as rpn_module
from resdet.modeling.detection.anchors import AnchorGenerator
from resdet.modeling.detection.box_coder import BoxCoder
from resdet.modeling.detection.rpn import RPN, RPNHead
from resdet.modeling.detection.sampling import IGNORE, Matcher

SIZES = [(128, 128), (96, 120)]  # (h, w) of each image before padding to 128x128


def _rpn(post_nms=(50, 20), stride: int = 16) -> RPN:
    torch.manual_seed(0)
    anchors = AnchorGenerator([[32, 64]], aspect_ratios=[0.5, 1.0, 2.0], strides=[stride])
    return RPN(
        ["res4"],
        RPNHead(16, num_anchors=anchors.num_anchors),
        anchors,
        BoxCoder(),
        Matcher([0.3, 0.7], allow_low_quality_matches=True),
        batch_size_per_image=64,
        positive_fraction=0.5,
        pre_nms_topk=(300, 200),
        post_nms_topk=post_nms,
    )


def _features() -> dict:
    return {"res4": torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))}


def _targets() -> List[dict]:
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[30.0, 30.0, 90.0, 70.0], [0, 0, 20, 20]]),
         "labels": torch.tensor([1, 2])},
    ]  # fmt: skip


def _check_proposals(proposals: List[torch.Tensor], limit: int) -> None:
    assert len(proposals) == 2
    for p, (h, w) in zip(proposals, SIZES):
        assert 0 < len(p) <= limit
        assert p.shape[1] == 4 and not p.requires_grad
        assert (p[:, 0] >= 0).all() and (p[:, 1] >= 0).all()
        assert (p[:, 2] <= w).all() and (p[:, 3] <= h).all()
        assert (p[:, 2] > p[:, 0]).all() and (p[:, 3] > p[:, 1]).all()


def test_eval_proposals_are_bounded_and_inside_the_image() -> None:
    rpn = _rpn().eval()
    with torch.no_grad():
        proposals, losses = rpn(SIZES, _features())
    assert losses == {}
    _check_proposals(proposals, 20)


def test_train_losses_and_gradients() -> None:
    rpn = _rpn().train()
    proposals, losses = rpn(SIZES, _features(), _targets())
    _check_proposals(proposals, 50)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    for v in losses.values():
        assert v.dim() == 0 and torch.isfinite(v)
    # At init objectness is ~0 logits: BCE ~ log 2 per sampled anchor, normalised by 2 * 64.
    assert 0.3 < losses["loss_rpn_cls"].item() < 0.75
    assert losses["loss_rpn_loc"].item() > 0
    sum(losses.values()).backward()
    assert rpn.head.objectness.weight.grad.abs().sum() > 0
    assert rpn.head.deltas.weight.grad.abs().sum() > 0


def test_no_objects_gives_zero_box_loss() -> None:
    rpn = _rpn().train()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    _, losses = rpn(SIZES, _features(), empty)
    assert losses["loss_rpn_loc"].item() == 0.0
    assert losses["loss_rpn_cls"].item() > 0


def test_crowd_anchors_are_ignored_not_negative(monkeypatch) -> None:
    seen: List[torch.Tensor] = []
    real = rpn_module.subsample_labels

    def spy(labels, *args):
        seen.append(labels.clone())
        return real(labels, *args)

    monkeypatch.setattr(rpn_module, "subsample_labels", spy)
    rpn = _rpn().train()
    crowd_box = torch.tensor([[40.0, 40.0, 100.0, 100.0]])
    target = {
        "boxes": torch.cat([torch.tensor([[0.0, 0.0, 24.0, 24.0]]), crowd_box]),
        "labels": torch.tensor([0, 1]),
        "iscrowd": torch.tensor([False, True]),
    }
    rpn(SIZES[:1], {"res4": _features()["res4"][:1]}, [target])
    labels = seen[-1]
    (anchors,) = rpn.anchor_generator.grid_anchors([(8, 8)])
    near_crowd = box_iou(crowd_box, anchors)[0] > 0.3
    assert near_crowd.sum() > 0
    assert (labels[near_crowd] == IGNORE).all()
    # Without the crowd flag those same anchors would take part (as positives or negatives).
    seen.clear()
    plain = {**target, "iscrowd": torch.tensor([False, False])}
    rpn(SIZES[:1], {"res4": _features()["res4"][:1]}, [plain])
    assert (seen[-1][near_crowd] != IGNORE).any()
