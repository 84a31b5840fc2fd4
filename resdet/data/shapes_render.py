"""Rendering one scene of the embedded shapes dataset (see :mod:`resdet.data.shapes`).

Classes differ by SHAPE only: colour and texture are drawn independently of the class, and each
object's colour keeps a minimum distance from what lies under it. Every object keeps a mask of
its visible pixels; an object that would leave an earlier one less than 60% visible is moved or
dropped, so every drawn object is annotated and its box is the tight box of its VISIBLE pixels.
Each scene uses its own generator seeded with ``(seed, split, index)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import cv2
import numpy as np

GENERATOR_VERSION = 1
SHAPES_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent")
BACKGROUND_CLASS = "background"
_SPLITS = {"train": 0, "val": 1}
_MIN_VISIBLE = 0.6  # an earlier object must keep this fraction of its pixels visible
_MIN_CONTRAST = 80.0  # min RGB distance between an object colour and what lies under it
# (probability, min, max) of the longer box side: aimed at COCO small / medium / large areas.
_SIZE_BANDS = ((0.2, 12.0, 30.0), (0.45, 36.0, 90.0), (0.35, 108.0, 150.0))
_TEXT_CHARS = "abcdefghkmnprsuvwyzEFGHKLMNRSWZ3579"  # no O, X, T, + ... that mimic a class
_AA = cv2.LINE_AA
_PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # crops are tiny; favour speed
_SHIFT = 4  # fillPoly sub-pixel bits: vertices are placed to 1/16 px


@dataclass
class ShapesScene:
    """One rendered scene.

    Attributes:
        image: ``uint8[H, W, 3]`` RGB.
        boxes: ``float32[N, 4]`` xyxy pixel-edge boxes of the visible part of each object.
        labels: ``int64[N]`` indices into :data:`SHAPES_CLASSES`.
        visible: ``float32[N]`` visible fraction of each object's pixels (>= 0.6).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    visible: np.ndarray


def _unit_shape(label: int, rng: np.random.Generator) -> List[Tuple[np.ndarray, int]]:
    """Polygons ``(points[P, 2], fill)`` of one shape around the origin, radius ~1.

    A fill of 0 cuts a hole (ring, crescent) into what was filled before.
    """
    name = SHAPES_CLASSES[label]
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    if name == "circle":
        return [(circle, 255)]
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64), 255)]
    if name == "triangle":
        a = np.deg2rad([90, 210, 330])
        return [(np.stack([np.cos(a), np.sin(a)], 1), 255)]
    if name == "star":
        a = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return [(np.stack([r * np.cos(a), r * np.sin(a)], 1), 255)]
    if name == "cross":
        w = rng.uniform(0.3, 0.45)
        p = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w)]
        p += [(-1, w), (-1, -w), (-w, -w)]
        return [(np.array(p, np.float64), 255)]
    if name == "ring":
        return [(circle, 255), (circle * rng.uniform(0.45, 0.65), 0)]
    if name == "crescent":
        d = rng.uniform(0.4, 0.65)
        return [(circle, 255), (circle * rng.uniform(0.8, 0.95) + [d, 0.0], 0)]
    raise ValueError(f"unknown shape label {label}")


def _object_mask(label: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased ``uint8[h, w]`` mask of one object whose longer nominal side is ``size``."""
    polys = _unit_shape(label, rng)
    aspect = np.exp(rng.uniform(-np.log(1.3), np.log(1.3)))
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    lin = np.diag([np.sqrt(aspect), 1 / np.sqrt(aspect)]) @ rot.T
    polys = [(p @ lin, f) for p, f in polys]
    outer = polys[0][0]
    scale = size / (outer.max(0) - outer.min(0)).max()
    # A random sub-pixel origin, then a 2 px margin on every side for the anti-aliased edge.
    origin = outer.min(0) * scale - 2 - rng.uniform(0, 1, 2)
    w, h = np.ceil(outer.max(0) * scale - origin + 2).astype(int)
    mask = np.zeros((h, w), np.uint8)
    for p, fill in polys:
        pts = np.round((p * scale - origin) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(mask, [pts], fill, lineType=_AA, shift=_SHIFT)
    return mask


def _noise(shape: Tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean pixel noise of std ``sigma``: uniform, as it samples 3x faster than normal."""
    return (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(sigma * 12**0.5)


def _ramp(h: int, w: int, angle: float) -> np.ndarray:
    """``float32[h, w]`` position along direction ``angle`` (pixels; separable, so cheap)."""
    xs = np.arange(w, dtype=np.float32) * np.float32(np.cos(angle))
    ys = np.arange(h, dtype=np.float32) * np.float32(np.sin(angle))
    return ys[:, None] + xs[None, :]


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``float32[h, w, 3]`` blurred textured background: gradient, blotches, stripes/checkers."""
    t = _ramp(h, w, rng.uniform(0, 2 * np.pi))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    c2 = np.clip(c1 + rng.normal(0, 60, 3), 0, 255).astype(np.float32)
    img = c1 + t[..., None] * (c2 - c1)
    blotch = rng.normal(0, 1, (rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.float32)
    blotch = cv2.resize(blotch, (w, h), interpolation=cv2.INTER_CUBIC)
    img += blotch * np.float32(rng.uniform(8, 25))
    kind = rng.choice(["none", "stripes", "checker"], p=[0.3, 0.4, 0.3])
    if kind != "none":
        period = rng.uniform(6, 36)
        if kind == "stripes":
            wave = np.sin(_ramp(h, w, rng.uniform(0, np.pi)) * np.float32(2 * np.pi / period))
        else:
            cx = (np.arange(w) // period % 2).astype(np.float32)
            cy = (np.arange(h) // period % 2).astype(np.float32)
            wave = np.abs(cy[:, None] - cx[None, :]) * 2 - 1
        img += wave[..., None] * (rng.uniform(8, 35) * rng.uniform(-1, 1, 3)).astype(np.float32)
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 2.0))


def _draw_clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    """Draw things that are not objects (in place): lines, curves, blobs and text."""
    h, w = img.shape[:2]
    n = int(rng.integers(2, 8) * (h * w) / 240**2) + 1
    for _ in range(n):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.choice(["line", "curve", "blob", "text"])
        if kind == "line":
            p, q = (tuple(int(v) for v in pt) for pt in rng.uniform(0, [w, h], (2, 2)))
            cv2.line(img, p, q, color, int(rng.integers(1, 3)), _AA)
        elif kind == "curve":
            steps = rng.normal(0, 4, (int(rng.integers(8, 30)), 2)).cumsum(0)
            steps += rng.normal(0, 3, 2) * np.arange(len(steps))[:, None]
            pts = (steps + rng.uniform(0, [w, h])).astype(np.int32)
            cv2.polylines(img, [pts], False, color, int(rng.integers(1, 3)), _AA)
        elif kind == "blob":
            k = int(rng.integers(5, 10))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            r = rng.uniform(3, 9) * rng.uniform(0.4, 1.0, k)
            pts = np.stack([r * np.cos(ang), r * np.sin(ang)], 1) + rng.uniform(0, [w, h])
            cv2.fillPoly(img, [pts.astype(np.int32)], color, _AA)
        else:
            text = "".join(rng.choice(list(_TEXT_CHARS), int(rng.integers(2, 7))))
            org = (int(rng.integers(0, w - 10)), int(rng.integers(10, h)))
            cv2.putText(
                img, text, org, cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.3, 0.6), color, 1, _AA
            )


def _object_texture(h: int, w: int, color: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``float32[h, w, 3]``: a colour with a gradient, noise and sometimes stripes."""
    ramp = _ramp(h, w, rng.uniform(0, 2 * np.pi)) / np.float32(max(h, w, 1))
    tex = color.astype(np.float32) + ramp[..., None] * np.float32(rng.uniform(-40, 40))
    if rng.random() < 0.3:
        b, period = rng.uniform(0, np.pi), rng.uniform(3, 10)
        wave = np.sin(_ramp(h, w, b) * np.float32(2 * np.pi / period))
        tex += wave[..., None] * np.float32(rng.uniform(8, 20))
    return tex + _noise(tex.shape, rng.uniform(2, 10), rng)


def _pick_color(under: List[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A random colour at least ``_MIN_CONTRAST`` from every mean colour in ``under``."""
    best, best_d = None, -1.0
    for _ in range(40):
        c = rng.uniform(0, 255, 3)
        d = min((float(np.linalg.norm(c - u)) for u in under), default=np.inf)
        if d >= _MIN_CONTRAST:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _sample_size(h: int, w: int, rng: np.random.Generator) -> float:
    probs = [b[0] for b in _SIZE_BANDS]
    _, lo, hi = _SIZE_BANDS[rng.choice(len(_SIZE_BANDS), p=probs)]
    hi = min(hi, min(h, w) - 12.0)
    return float(np.exp(rng.uniform(np.log(min(lo, hi)), np.log(hi))))


@dataclass
class _Drawn:
    """An object already on the canvas: its visible pixels shrink as later objects cover it."""

    label: int
    visible: np.ndarray  # bool[h, w]
    count: int  # visible pixels now
    area: int  # pixels when it was drawn


def _find_position(
    shape: Tuple[int, int], solid: np.ndarray, drawn: List[_Drawn], rng: np.random.Generator
) -> Tuple[slice, slice] | None:
    """A window for ``solid`` inside the image leaving every drawn object >= 60% visible."""
    (h, w), (mh, mw) = shape, solid.shape
    for _ in range(25):
        y0, x0 = int(rng.integers(0, h - mh + 1)), int(rng.integers(0, w - mw + 1))
        win = (slice(y0, y0 + mh), slice(x0, x0 + mw))
        left = (d.count - np.count_nonzero(d.visible[win] & solid) for d in drawn)
        if all(n >= _MIN_VISIBLE * d.area for n, d in zip(left, drawn)):
            return win
    return None


def _draw_object(
    canvas: np.ndarray,
    drawn: List[_Drawn],
    label: int,
    mask: np.ndarray,
    win: Tuple[slice, slice],
    rng: np.random.Generator,
) -> None:
    """Composite one textured object into ``canvas`` (in place) and update the visibility."""
    solid = mask >= 128
    patch = canvas[win]
    # Contrast against the background and against every earlier object it overlaps.
    occupied = np.zeros_like(solid)
    under = []
    for d in drawn:
        below = solid & d.visible[win]
        occupied |= below
        if np.count_nonzero(below) >= 4:
            under.append(patch[below].mean(0))
    if np.count_nonzero(solid & ~occupied):
        under.append(patch[solid & ~occupied].mean(0))
    color = _pick_color(under, rng)
    alpha = mask.astype(np.float32)[..., None] / np.float32(255)
    canvas[win] = patch * (1 - alpha) + _object_texture(*solid.shape, color, rng) * alpha
    for d in drawn:
        d.visible[win] &= ~solid
        d.count = int(np.count_nonzero(d.visible))
    full = np.zeros(canvas.shape[:2], bool)
    full[win] = solid
    area = int(np.count_nonzero(solid))
    drawn.append(_Drawn(label, full, area, area))


def render_scene(
    seed: int, split: str, index: int, min_size: int = 160, max_size: int = 320
) -> ShapesScene:
    """Render scene ``index`` of ``split`` ("train" or "val"); depends only on these arguments."""
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    canvas = np.clip(_background(h, w, rng), 0, 255).astype(np.uint8)
    _draw_clutter(canvas, rng)  # on uint8: cv2.putText draws on 8-bit images only
    canvas = canvas.astype(np.float32)
    drawn: List[_Drawn] = []
    for _ in range(int(rng.integers(1, 9))):
        label = int(rng.integers(len(SHAPES_CLASSES)))
        mask = _object_mask(label, _sample_size(h, w, rng), rng)
        win = _find_position((h, w), mask >= 128, drawn, rng)
        if win is not None:  # else no position keeps the others visible enough: drop it
            _draw_object(canvas, drawn, label, mask, win, rng)
    canvas += _noise(canvas.shape, rng.uniform(1, 4), rng)
    boxes = np.zeros((len(drawn), 4), np.float32)
    for i, d in enumerate(drawn):
        rows, cols = np.flatnonzero(d.visible.any(1)), np.flatnonzero(d.visible.any(0))
        boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return ShapesScene(
        image=np.clip(canvas, 0, 255).astype(np.uint8),
        boxes=boxes,
        labels=np.asarray([d.label for d in drawn], np.int64),
        visible=np.asarray([d.count / d.area for d in drawn], np.float32),
    )


# --------------------------------------------------------------------------- crops


def make_scene(size: Tuple[int, int], index: int = 0, seed: int = 0) -> Tuple[np.ndarray, ...]:
    """A val scene of :func:`render_scene` resized to ``size`` = (h, w): ``(uint8[H, W, 3] RGB,
    float32[N, 4] xyxy boxes in ``size``'s pixels, int64[N] labels)``. Deterministic in
    ``(size, index, seed)``: a real-looking image of any size for timings and parity checks."""
    scene = render_scene(seed, "val", index)
    h0, w0 = scene.image.shape[:2]
    h, w = size
    image = cv2.resize(scene.image, (w, h), interpolation=cv2.INTER_LINEAR)
    boxes = scene.boxes * np.array([w / w0, h / h0, w / w0, h / h0], np.float32)
    return image, boxes, scene.labels
