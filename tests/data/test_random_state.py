"""Augmentation steps must draw independent random numbers (albumentations' per-step seeding
gives every step the same stream; resdet shares one generator pair instead)."""

import albumentations as A
import numpy as np

from resdet.data.det_transforms import build_det_transforms
from resdet.data.random_state import seed_compose


def _size_and_flip(tf, n=300):
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :20] = 255  # a marker on the left edge shows whether the image was flipped
    out = []
    for _ in range(n):
        im, _, _ = tf(img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        out.append((im.shape[0], bool(im[:, -1].mean() > 128)))
    return out


def _flip_rate_per_size(pairs):
    rates = {}
    for size in {s for s, _ in pairs}:
        flips = [f for s, f in pairs if s == size]
        rates[size] = float(np.mean(flips))
    return rates


def test_flip_is_independent_of_the_size_choice():
    tf = build_det_transforms((64, 96), 1000, flip_prob=0.5, is_train=True, seed=1)
    rates = _flip_rate_per_size(_size_and_flip(tf))
    assert set(rates) == {64, 96}
    for size, rate in rates.items():
        assert 0.3 < rate < 0.7, (size, rate)


def test_shared_generator_differs_from_per_step_seeding():
    steps = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    per_step = A.Compose(steps, seed=3)  # albumentations: both steps draw the same numbers
    img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1).repeat(3, axis=2)
    same = [per_step(image=img)["image"] for _ in range(50)]
    # With identical streams the two flips always agree: result is either img or rot180(img).
    assert all(np.array_equal(o, img) or np.array_equal(o, img[::-1, ::-1]) for o in same)

    shared = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    seed_compose(shared, 3)
    outs = [shared(image=img)["image"] for _ in range(50)]
    one_flip = [o for o in outs if np.array_equal(o, img[:, ::-1]) or np.array_equal(o, img[::-1])]
    assert len(one_flip) > 5  # independent draws: sometimes only one of the two flips fires
