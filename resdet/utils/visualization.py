"""Pictures of what was found: boxes, class names and scores drawn on images (opencv)."""

from __future__ import annotations

import colorsys
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np


def class_color(label: int) -> Tuple[int, int, int]:
    """A stable, well-separated RGB colour per class (golden-ratio hue steps)."""
    h = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: Optional[np.ndarray] = None,
    class_names: Optional[Sequence[str]] = None,
    score_thresh: float = 0.0,
    color: Optional[Tuple[int, int, int]] = None,
    thickness: int = 0,
    dashed: bool = False,
) -> np.ndarray:
    """Return a copy of ``image`` (``uint8[H, W, 3]`` RGB) with boxes drawn.

    Args:
        boxes: ``float[N, 4]`` xyxy pixels of this image. labels: ``int[N]`` in ``0..K-1``.
        scores: ``float[N]`` or None (ground truth): shown after the class name.
        color: one colour for all boxes (e.g. ground truth); default is a colour per class.
        thickness: line width; 0 picks one from the image size.
        dashed: draw dashed outlines (used for ground truth next to predictions).
    """
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thickness = thickness or max(1, round(min(h, w) / 250))
    font_scale = max(0.35, min(h, w) / 900)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    for i, (box, label) in enumerate(zip(boxes, labels)):
        score = None if scores is None else float(scores[i])
        if score is not None and score < score_thresh:
            continue
        c = color or class_color(int(label))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        if dashed:
            _dashed_rect(out, (x1, y1), (x2, y2), c, thickness)
        else:
            cv2.rectangle(out, (x1, y1), (x2, y2), c, thickness, cv2.LINE_AA)
        name = class_names[int(label)] if class_names is not None else str(int(label))
        text = name if score is None else f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y2 + th + 2, h - 1)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 1), c, -1)
        cv2.putText(
            out, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
            (0, 0, 0), 1, cv2.LINE_AA,
        )  # fmt: skip
    return out


def _dashed_rect(img: np.ndarray, p1, p2, color, thickness: int, dash: int = 6) -> None:
    (x1, y1), (x2, y2) = p1, p2
    for a, b in (
        ((x1, y1), (x2, y1)),
        ((x2, y1), (x2, y2)),
        ((x2, y2), (x1, y2)),
        ((x1, y2), (x1, y1)),
    ):
        length = int(np.hypot(b[0] - a[0], b[1] - a[1]))
        for s in range(0, max(length, 1), dash * 2):
            t0, t1 = s / max(length, 1), min(s + dash, length) / max(length, 1)
            pa = (int(a[0] + (b[0] - a[0]) * t0), int(a[1] + (b[1] - a[1]) * t0))
            pb = (int(a[0] + (b[0] - a[0]) * t1), int(a[1] + (b[1] - a[1]) * t1))
            cv2.line(img, pa, pb, color, thickness, cv2.LINE_AA)


def tile_images(images: Sequence[np.ndarray], cols: int = 4, pad: int = 4) -> np.ndarray:
    """Tile RGB images of different sizes into one grid image (white background)."""
    if not images:
        raise ValueError("tile_images: no images")
    rows = (len(images) + cols - 1) // cols
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    grid = np.full((rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
        grid[y : y + im.shape[0], x : x + im.shape[1]] = im
    return grid


def save_image(path: str, image_rgb: np.ndarray) -> None:
    """Write an RGB image (PNG or JPEG by extension); raises OSError when it cannot."""
    if not cv2.imwrite(path, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write image (bad folder or extension?)")
