"""RoI heads: proposal sampling (with gt and crowd boxes), losses, inference, C4 and FPN
box heads, RoIPool."""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch
from torchvision.ops import box_iou

from resdet.modeling.backbone.resnet import ResNet
from resdet.modeling.detection.box_coder import BoxCoder
from resdet.modeling.detection.box_heads import C4BoxHead, FPNBoxHead
from resdet.modeling.detection.roi_heads import BoxPredictor, ROIHeads
from resdet.modeling.detection.sampling import Matcher

K = 3  # classes; K itself is the background index
SIZES = [(64, 64), (64, 48)]


def _fpn_heads(batch: int = 32, thresh: float = 0.05, dets: int = 10) -> ROIHeads:
    torch.manual_seed(0)
    box_head = FPNBoxHead(["p2", "p3"], in_channels=8, first_stride=4, resolution=7, fc_dim=32)
    return ROIHeads(
        box_head, BoxPredictor(32, num_classes=K), K, BoxCoder((10.0, 10.0, 5.0, 5.0)),
        Matcher([0.5, 0.5]),
        batch_size_per_image=batch, positive_fraction=0.25, score_thresh=thresh,
        detections_per_image=dets,
    )  # fmt: skip


def _c4_heads(pooler: str = "ROIAlign") -> ROIHeads:
    torch.manual_seed(0)
    trunk = ResNet(depth=18, width=8, num_classes=0, out_features=["res4"])
    box_head = C4BoxHead(
        "res4", trunk.stage("res5"), stride=16, out_channels=64, resolution=14, pooler_type=pooler
    )
    heads = ROIHeads(
        box_head, BoxPredictor(64, num_classes=K), K, BoxCoder((10.0, 10.0, 5.0, 5.0)),
        Matcher([0.5, 0.5]),
        batch_size_per_image=16,
    )  # fmt: skip
    heads.trunk = trunk  # keep res5's owner alive and in train/eval mode with the heads
    return heads


def _fpn_features() -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "p2": torch.randn(2, 8, 16, 16, generator=g),
        "p3": torch.randn(2, 8, 8, 8, generator=g),
    }


def _proposals(n: int = 40, seed: int = 3) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in SIZES:
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 16.0, h - 16.0])
        wh = torch.rand(n, 2, generator=g) * 30 + 8
        box = torch.cat([xy, xy + wh], 1)
        box[:, 2].clamp_(max=w)
        box[:, 3].clamp_(max=h)
        out.append(box)
    return out


def _targets() -> List[Dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 30.0], [20.0, 30.0, 46.0, 60.0]]),
         "labels": torch.tensor([0, 1])},
    ]  # fmt: skip


def test_sample_proposals_balance_and_targets() -> None:
    heads = _fpn_heads(batch=32)
    torch.manual_seed(0)
    boxes, classes, reg = heads.sample_proposals(_proposals(), _targets())
    assert [len(b) for b in boxes] == [32, 32]
    assert classes.shape == (64,) and reg.shape == (64, 4)
    fg = classes < K
    assert ((classes >= 0) & (classes <= K)).all()
    # Ground truth joins the proposals, so every image has positives; at most 25% of 32.
    for i, cls in enumerate(classes.split(32)):
        assert 1 <= int((cls < K).sum()) <= 8, i
    assert (reg[~fg] == 0).all()
    # A positive's regression target decodes back to its ground-truth box.
    decoded = heads.box_coder.decode(reg[:32][classes[:32] < K], boxes[0][classes[:32] < K])
    gt = _targets()[0]["boxes"]
    torch.testing.assert_close(decoded, gt.expand_as(decoded), atol=1e-3, rtol=1e-4)
    assert set(classes[:32][classes[:32] < K].tolist()) == {2}


def test_crowd_proposals_are_ignored() -> None:
    heads = _fpn_heads(batch=64)
    crowd = torch.tensor([[30.0, 30.0, 60.0, 60.0]])
    props = [
        torch.tensor([[31.0, 31.0, 60.0, 59.0], [30.0, 32.0, 58.0, 60.0], [0.0, 0.0, 8.0, 8.0]])
    ]
    target = {
        "boxes": torch.cat([torch.tensor([[0.0, 0.0, 20.0, 20.0]]), crowd]),
        "labels": torch.tensor([0, 1]),
        "iscrowd": torch.tensor([False, True]),
    }
    torch.manual_seed(0)
    boxes, classes, _ = heads.sample_proposals(props, [target])
    assert (box_iou(crowd, boxes[0])[0] < 0.5).all()  # near-crowd proposals never sampled
    assert 1 not in classes.tolist()  # the crowd box is no training target
    # The same box without the crowd flag makes those proposals positives of class 1.
    plain = {**target, "iscrowd": torch.tensor([False, False])}
    boxes, classes, _ = heads.sample_proposals(props, [plain])
    assert (classes == 1).sum() == 3  # two proposals + the gt box itself


def test_train_losses_fpn_and_c4() -> None:
    for heads, feats in ((_fpn_heads(), _fpn_features()),
                         (_c4_heads(), {"res4": torch.randn(2, 32, 4, 4)})):  # fmt: skip
        heads.train()
        dets, losses = heads(feats, _proposals(), SIZES, _targets())
        assert dets == []
        assert set(losses) == {"loss_cls", "loss_box_reg"}
        for v in losses.values():
            assert v.dim() == 0 and torch.isfinite(v)
        # Near-uniform scores at init: cross entropy ~ log(K + 1).
        assert abs(losses["loss_cls"].item() - torch.log(torch.tensor(K + 1.0)).item()) < 0.2
        sum(losses.values()).backward()
        assert heads.predictor.bbox_pred.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs targets"):
        heads(feats, _proposals(), SIZES)


def test_inference_contract() -> None:
    heads = _fpn_heads(thresh=0.2, dets=5).eval()
    with torch.no_grad():
        dets, losses = heads(_fpn_features(), _proposals(), SIZES)
    assert losses == {} and len(dets) == 2
    for d, (h, w) in zip(dets, SIZES):
        assert len(d["boxes"]) <= 5
        assert d["boxes"].shape[1:] == (4,) and d["labels"].dtype == torch.int64
        assert ((d["labels"] >= 0) & (d["labels"] < K)).all()
        assert (d["scores"] >= 0.2).all()
        assert (d["boxes"][:, 2] <= w).all() and (d["boxes"][:, 3] <= h).all()


def test_inference_hand_made_scores() -> None:
    heads = _fpn_heads(thresh=0.5, dets=10)
    props = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [11.0, 10.0, 31.0, 30.0], [0, 0, 8, 8]])]
    logits = torch.tensor([[0.0, 8.0, 0.0, 0.0], [0.0, 7.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0]])
    deltas = torch.zeros(3, 4 * K)
    deltas[0, 4:8] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # class 1: dx = 1 / 10 -> 0.1 * w = 2 px
    (det,) = heads.inference(logits, deltas, props, [(40, 40)])
    # Proposal 1 is suppressed by proposal 0 (same class, IoU > 0.5); proposal 2 is background.
    assert det["labels"].tolist() == [1]
    torch.testing.assert_close(det["boxes"], torch.tensor([[12.0, 10.0, 32.0, 30.0]]))
    assert det["scores"].item() == pytest.approx(torch.softmax(logits[0], 0)[1].item())


def test_c4_roipool_and_roialign() -> None:
    feats = {"res4": torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(5))}
    outs = {}
    for pooler in ("ROIAlign", "ROIPool"):
        heads = _c4_heads(pooler).eval()
        with torch.no_grad():
            x = heads.box_head(feats, _proposals(6), SIZES)
            dets, _ = heads(feats, _proposals(6), SIZES)
        assert x.shape == (12, 64)
        assert len(dets) == 2
        outs[pooler] = x
    assert not torch.allclose(outs["ROIAlign"], outs["ROIPool"])
    # res5 is borrowed, not registered: its parameters stay the backbone's.
    assert not any(k.startswith("box_head.res5") for k in _c4_heads().state_dict())
    with pytest.raises(ValueError, match="POOLER_TYPE"):
        C4BoxHead("res4", torch.nn.Identity(), stride=16, out_channels=8, pooler_type="ROIMax")


def test_no_rois_at_all_gives_zero_not_nan() -> None:
    heads = _fpn_heads()
    heads.train()
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    no_objects = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in SIZES
    ]
    _, losses = heads(_fpn_features(), empty, SIZES, no_objects)
    assert all(torch.isfinite(v) and v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()  # still part of the graph
    assert heads.predictor.cls_score.weight.grad is not None
