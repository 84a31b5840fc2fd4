"""Detection transforms: Detectron resize rule, flips, box/label alignment, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from resdet.data.det_transforms import build_det_transforms, resize_scale


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_scale_rule() -> None:
    assert resize_scale(100, 200, 600, 1000) == pytest.approx(6.0 * 5 / 6)  # long side caps
    assert resize_scale(100, 200, 50, 1000) == 0.5
    assert resize_scale(300, 100, 600, 1000) == pytest.approx(1000 / 300)


def test_test_time_resize_scales_boxes_exactly() -> None:
    t = build_det_transforms((50, 400), max_size=1000, flip_prob=1.0, is_train=False)
    boxes = np.array([[10, 20, 110, 60], [0, 0, 200, 100]], np.float32)
    image, out, labels = t(_image(100, 200), boxes, np.array([4, 2]))
    # Test time: first size, never flipped (flip_prob is ignored): scale 0.5.
    assert image.shape == (50, 100, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(out, boxes * 0.5, atol=1e-4)
    assert out.dtype == np.float32 and labels.tolist() == [4, 2]


def test_max_size_caps_long_side() -> None:
    t = build_det_transforms(100, max_size=200, flip_prob=0.0, is_train=False)
    image, out, _ = t(_image(100, 400), np.array([[40, 10, 400, 100]]), np.array([0]))
    assert image.shape == (50, 200, 3)  # scale = min(100/100, 200/400) = 0.5
    np.testing.assert_allclose(out, [[20, 5, 200, 50]], atol=1e-4)


def test_flip_formula_after_resize() -> None:
    t = build_det_transforms((60,), max_size=1000, flip_prob=1.0, is_train=True, seed=0)
    src = _image(30, 50)
    boxes = np.array([[5, 2, 15, 12], [30, 0, 50, 30]], np.float32)
    image, out, labels = t(src, boxes, np.array([1, 0]))
    assert image.shape == (60, 100, 3)
    scaled = boxes * 2
    width = image.shape[1]
    expected = np.stack([width - scaled[:, 2], scaled[:, 1], width - scaled[:, 0], scaled[:, 3]], 1)
    np.testing.assert_allclose(out, expected, atol=1e-4)  # x1' = W - x2, x2' = W - x1
    assert labels.tolist() == [1, 0]
    # The pixels flip with the boxes.
    no_flip = build_det_transforms((60,), 1000, 0.0, is_train=True)(src, boxes, np.array([1, 0]))
    np.testing.assert_array_equal(image, no_flip[0][:, ::-1])


def test_many_boxes_stay_aligned_with_labels_and_index() -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 80, (50, 2))
    wh = rng.uniform(0.5, 40, (50, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [120, 90])], 1).astype(np.float32)
    labels = np.arange(50, dtype=np.int64)[::-1].copy()
    t = build_det_transforms((45, 90, 135), max_size=400, flip_prob=0.5, is_train=True, seed=3)
    for _ in range(10):
        image, out, out_labels, index = t(_image(90, 120), boxes, labels, return_index=True)
        sx, sy = image.shape[1] / 120, image.shape[0] / 90
        assert index.tolist() == list(range(50)) and out_labels.tolist() == labels.tolist()
        flipped = np.allclose(out[:, 0], image.shape[1] - boxes[:, 2] * sx, atol=1e-3)
        ref = boxes * [sx, sy, sx, sy]
        if flipped:
            ref = np.stack(
                [image.shape[1] - ref[:, 2], ref[:, 1], image.shape[1] - ref[:, 0], ref[:, 3]], 1
            )
        np.testing.assert_allclose(out, ref, atol=1e-3)


def test_training_sizes_random_but_seeded() -> None:
    def sizes(seed: int):
        t = build_det_transforms((40, 60, 80), 1000, flip_prob=0.5, is_train=True, seed=seed)
        return [t(_image(20, 30), np.zeros((0, 4)), np.zeros(0))[0].shape[0] for _ in range(30)]

    first = sizes(7)
    assert set(first) == {40, 60, 80}
    assert sizes(7) == first  # the same seed replays the same sizes
    assert sizes(8) != first


def test_flip_probability_is_respected() -> None:
    t = build_det_transforms(10, 100, flip_prob=0.3, is_train=True, seed=0)
    box = np.array([[0, 0, 2, 10]], np.float32)
    flips = [t(_image(10, 10), box, np.array([0]))[1][0, 0] > 0 for _ in range(400)]
    assert 0.22 < np.mean(flips) < 0.38


def test_empty_boxes_and_bad_args() -> None:
    t = build_det_transforms(20, 100, 0.5, is_train=True, seed=0)
    image, boxes, labels = t(_image(10, 10), np.zeros((0, 4)), np.zeros(0))
    assert image.shape == (20, 20, 3) and boxes.shape == (0, 4) and labels.shape == (0,)
    with pytest.raises(ValueError, match="boxes but"):
        t(_image(10, 10), np.zeros((2, 4)), np.zeros(1))
    with pytest.raises(ValueError, match="flip_prob"):
        build_det_transforms(20, 100, 1.5, is_train=True)
