"""Test-time augmentation: the fusion of the views' detections, the views a config asks for,
and the wrapper that resizes, mirrors and maps back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from resdet.config import load_config
from resdet.config.load import ConfigError
from resdet.evaluation.tta import DIHEDRAL, DetectorWithTTA, fuse_detections, tta_views


def _dets(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


FUSE = {"fuse_iou": 0.55, "nms_thresh": 0.5}


def test_one_view_comes_back_unchanged_and_sorted():
    view = _dets([[0, 0, 10, 10], [50, 50, 70, 80], [5, 5, 15, 15]], [0.3, 0.9, 0.6], [0, 1, 0])
    out = fuse_detections([view], **FUSE)
    order = [1, 2, 0]
    torch.testing.assert_close(out["boxes"], view["boxes"][order])
    torch.testing.assert_close(out["scores"], view["scores"][order])
    assert out["labels"].tolist() == [1, 0, 0]


def test_scores_are_the_mean_vote_and_boxes_the_score_weighted_mean():
    a = _dets([[0, 0, 10, 10]], [0.9], [2])
    b = _dets([[1, 0, 11, 10]], [0.6], [2])  # IoU 9/11 with a: votes
    out = fuse_detections([a, b], **FUSE)
    assert out["labels"].tolist() == [2]
    assert out["scores"].item() == pytest.approx(0.75)
    expected = (0.9 * torch.tensor([0, 0, 10, 10.0]) + 0.6 * torch.tensor([1, 0, 11, 10.0])) / 1.5
    torch.testing.assert_close(out["boxes"][0], expected)


def test_a_box_one_view_alone_sees_keeps_its_box_at_a_fraction_of_its_score():
    seen = _dets([[0, 0, 10, 10], [40, 40, 60, 60]], [0.8, 0.9], [0, 0])
    other_class = _dets([[0, 0, 10, 10]], [0.7], [1])  # same place, another class: no vote
    far = _dets([[4, 4, 14, 14]], [0.7], [0])  # IoU 36/164 with the first: under fuse_iou
    out = fuse_detections([seen, other_class, far], **FUSE)
    rows = zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist())
    got = {(lab, tuple(round(v, 4) for v in b)): s for b, s, lab in rows}
    assert got[(0, (40.0, 40.0, 60.0, 60.0))] == pytest.approx(0.9 / 3)
    assert got[(0, (0.0, 0.0, 10.0, 10.0))] == pytest.approx(0.8 / 3)
    assert got[(1, (0.0, 0.0, 10.0, 10.0))] == pytest.approx(0.7 / 3)
    assert got[(0, (4.0, 4.0, 14.0, 14.0))] == pytest.approx(0.7 / 3)
    assert (out["scores"][:-1] >= out["scores"][1:]).all()


def test_threshold_cap_and_empty_views():
    a = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.5, 0.1], [0, 0, 0])
    empty = _dets([], [], [])
    out = fuse_detections([a, empty], score_thresh=0.1, max_detections=1, **FUSE)
    assert out["scores"].tolist() == pytest.approx([0.45])  # 0.05 is under the threshold
    assert len(fuse_detections([empty, empty], **FUSE)["scores"]) == 0
    with pytest.raises(ValueError, match="at least one view"):
        fuse_detections([], **FUSE)


def test_views_start_with_the_plain_one():
    opts = ["INPUT.MIN_SIZE_TEST", "288", "INPUT.MAX_SIZE_TEST", "400"]
    cfg = load_config(None, opts + ["TEST.AUG.MIN_SIZES", "[256, 288, 256]"])
    plain, mirror = (False, False, False), (False, False, True)
    expected = [(288, 400, plain), (256, 400, plain), (288, 400, mirror), (256, 400, mirror)]
    assert tta_views(cfg) == expected  # each size once
    # TEST.AUG.MAX_SIZE caps the other sizes only: the plain view stays the test transform.
    cfg.TEST.AUG.MAX_SIZE = 500
    assert tta_views(cfg)[:2] == [(288, 400, plain), (256, 500, plain)]
    cfg.TEST.AUG.FLIP = False
    assert tta_views(cfg) == [(288, 400, plain), (256, 500, plain)]
    cfg.TEST.AUG.DIHEDRAL = True  # every 90-degree rotation and its mirror, at each size
    views = tta_views(cfg)
    assert len(views) == 16 and views[0] == (288, 400, plain) and len(set(views)) == 16


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MIN_SIZES", [0], "TEST.AUG.MIN_SIZES must be positive"),
        ("FUSE_IOU", 0.0, r"TEST.AUG.FUSE_IOU must be in \(0, 1\]"),
        ("FUSE_IOU", 1.5, r"TEST.AUG.FUSE_IOU must be in \(0, 1\]"),
        ("MAX_SIZE", -1, "TEST.AUG.MAX_SIZE must be >= 0"),
    ],
)
def test_bad_settings_name_the_key(key, value, message):
    cfg = load_config(None, [])
    setattr(cfg.TEST.AUG, key, value)
    with pytest.raises(ConfigError, match=message):
        tta_views(cfg)


class _BrightBox(nn.Module):
    """A stand-in detector: the box around the bright pixels of its input, scaled to
    ``orig_size`` as a detector's output is; records the inputs it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def forward(self, inputs):
        out = []
        for x in inputs:
            img = x["image"]
            self.seen.append(img.clone())
            ys, xs = torch.nonzero(img[0] > 127, as_tuple=True)
            h, w = img.shape[-2:]
            oh, ow = x["orig_size"]
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            box = box * torch.tensor([ow / w, oh / h, ow / w, oh / h])
            out.append(_dets(box.tolist(), [0.9], [0]))
        return out


KW = {"fuse_iou": 0.55, "nms_thresh": 0.5, "score_thresh": 0.05, "max_detections": 100}


def test_wrapper_resizes_mirrors_and_maps_back():
    image = np.zeros((40, 80, 3), np.uint8)
    image[6:30, 8:24] = 255  # off-centre both ways: a flipped view finds it at x 56..72
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    model = _BrightBox().eval()
    views = [(20, 1000, (0, 0, 0)), (40, 1000, (0, 0, 0)), (20, 1000, (0, 0, 1))]
    tta = DetectorWithTTA(model, views + [(40, 1000, o) for o in DIHEDRAL[2:]], **KW)
    assert not tta.training
    (out,) = tta([{"image": tensor, "orig_size": (40, 80)}])
    sizes = [(20, 40), (40, 80), (20, 40)] + [(40, 80)] * 2 + [(80, 40)] * 4
    assert [tuple(t.shape[-2:]) for t in model.seen] == sizes
    # The mirrored view saw the box on the other side, and its answer came back unmirrored;
    # so did the up-down flipped and the transposed (rotated) ones.
    torch.testing.assert_close(model.seen[2], model.seen[0].flip(-1))
    torch.testing.assert_close(model.seen[3], model.seen[1].flip(-2))  # (0, 1, 0)
    torch.testing.assert_close(model.seen[5], model.seen[1].transpose(-1, -2))  # (1, 0, 0)
    torch.testing.assert_close(model.seen[8], model.seen[1].transpose(-1, -2).flip(-1, -2))
    expected = torch.tensor([[8.0, 6.0, 24.0, 30.0]])
    torch.testing.assert_close(out["boxes"], expected)
    torch.testing.assert_close(out["plain"]["boxes"], expected)
    assert out["scores"].tolist() == pytest.approx([0.9])
    # The views are contiguous CHW, as the test loader's images are.
    assert all(t.is_contiguous() for t in model.seen)
    # The wrapper takes its model's mode and leaves it alone; it runs in eval mode only.
    assert DetectorWithTTA(_BrightBox().train(), [(20, 40, (0, 0, 0))], **KW).training
    with pytest.raises(RuntimeError, match="eval mode"):
        tta.train()([{"image": tensor, "orig_size": (40, 80)}])
