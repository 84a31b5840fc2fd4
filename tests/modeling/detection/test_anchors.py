"""Anchors: cell shapes (area and ratio), grid placement and order, multi-level counts."""

from __future__ import annotations

import pytest
import torch

from resdet.modeling.detection.anchors import AnchorGenerator, cell_anchors


def test_cell_anchor_square() -> None:
    torch.testing.assert_close(cell_anchors([32], [1.0]), torch.tensor([[-16.0, -16, 16, 16]]))


@pytest.mark.parametrize("ratio", [0.5, 2.0])
def test_cell_anchor_ratio_keeps_area(ratio: float) -> None:
    (box,) = cell_anchors([64], [ratio])
    w, h = box[2] - box[0], box[3] - box[1]
    assert float(w * h) == pytest.approx(64.0**2, rel=1e-5)
    assert float(h / w) == pytest.approx(ratio, rel=1e-5)  # ratio is h / w
    assert float(box[0] + box[2]) == pytest.approx(0.0, abs=1e-4)  # centred at the origin
    assert float(box[1] + box[3]) == pytest.approx(0.0, abs=1e-4)


def test_cell_anchor_order_is_size_major() -> None:
    cells = cell_anchors([32, 64], [0.5, 1.0, 2.0])
    widths = (cells[:, 2] - cells[:, 0]).tolist()
    heights = (cells[:, 3] - cells[:, 1]).tolist()
    areas = [w * h for w, h in zip(widths, heights)]
    assert areas[:3] == pytest.approx([32.0**2] * 3, rel=1e-5)
    assert areas[3:] == pytest.approx([64.0**2] * 3, rel=1e-5)
    assert [h / w for w, h in zip(widths, heights)][:3] == pytest.approx([0.5, 1.0, 2.0])


def test_grid_anchors_hand_computed() -> None:
    # A 2x3 map (H=2, W=3) at stride 16 with two square anchors (sizes 16 and 32).
    gen = AnchorGenerator([[16, 32]], aspect_ratios=[1.0], strides=[16])
    (anchors,) = gen.grid_anchors([(2, 3)])
    expected = []
    for y in range(2):
        for x in range(3):
            cx, cy = 16.0 * x, 16.0 * y
            for half in (8.0, 16.0):
                expected.append([cx - half, cy - half, cx + half, cy + half])
    torch.testing.assert_close(anchors, torch.tensor(expected))
    assert gen.num_anchors == 2


def test_multi_level_counts_and_forward() -> None:
    gen = AnchorGenerator([[32], [64], [128]], aspect_ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16])
    feats = [torch.zeros(2, 8, 16, 12), torch.zeros(2, 8, 8, 6), torch.zeros(2, 8, 4, 3)]
    anchors = gen(feats)
    assert [len(a) for a in anchors] == [16 * 12 * 3, 8 * 6 * 3, 4 * 3 * 3]
    # Level l's anchors have the size of level l.
    for a, size in zip(anchors, (32, 64, 128)):
        areas = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
        torch.testing.assert_close(areas, torch.full_like(areas, size**2.0))
    # The last anchor of level 0 sits on the last feature pixel: (11 * 4, 15 * 4).
    last = anchors[0][-1]
    assert float((last[0] + last[2]) / 2) == pytest.approx(44.0)
    assert float((last[1] + last[3]) / 2) == pytest.approx(60.0)


def test_single_size_list_broadcasts_and_mismatch_errors() -> None:
    gen = AnchorGenerator([[32, 64]], aspect_ratios=[1.0], strides=[8, 16])
    a8, a16 = gen.grid_anchors([(1, 1), (1, 1)])
    torch.testing.assert_close(a8, a16)
    with pytest.raises(ValueError, match="SIZES has 2 levels but the RPN reads 3"):
        AnchorGenerator([[32], [64]], aspect_ratios=[1.0], strides=[4, 8, 16])
    with pytest.raises(ValueError, match="same number of anchor sizes"):
        AnchorGenerator([[32], [64, 128]], aspect_ratios=[1.0], strides=[4, 8])
