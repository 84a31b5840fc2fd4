"""Galleries of the validation images a detector gets most wrong.

Per image, at IoU 0.5 and a score threshold, COCOeval's own matching
(:meth:`ReportData.matching`) gives the false positives (detections scoring at least the
threshold that matched no object of their class) and the missed objects (no such detection
matched them). The images with the most of each are drawn with
:func:`resdet.utils.visualization.draw_detections`: true-positive detections in green,
false positives in red (solid, with class and score), found objects dashed white, missed
objects dashed yellow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from resdet.data.image_io import read_image
from resdet.data.records import DatasetError
from resdet.evaluation.report_data import ReportData
from resdet.utils.visualization import draw_detections, save_image, tile_images

logger = logging.getLogger(__name__)

__all__ = ["ImageErrors", "draw_gallery", "image_errors", "worst_images"]

TP_COLOR = (40, 200, 40)
FP_COLOR = (230, 30, 30)
FOUND_COLOR = (255, 255, 255)
MISSED_COLOR = (255, 220, 0)


@dataclass
class ImageErrors:
    """One image's counts at the report's score threshold (IoU 0.5)."""

    image_id: int
    false_positives: int
    missed: int


def _status(data: ReportData, img_id: int, score_thresh: float, iou: float):
    """Per detection kept (score >= threshold, evaluated, not ignored): true positive?;
    per non-crowd object: found? -- from COCOeval's matching."""
    m = data.matching(iou)
    gt, dt = data.gt_arrays(img_id), data.dt_arrays(img_id)
    keep = np.array(
        [
            s >= score_thresh and int(i) in m.dt_match and int(i) not in m.dt_ignored
            for s, i in zip(dt["scores"], dt["ids"])
        ],
        bool,
    )
    tp = np.array([m.dt_match[int(i)] > 0 for i in dt["ids"][keep]], bool)
    # An object is found if its match scores at least the threshold (greedy matching by score
    # means thresholding first would give the same matches).
    found = np.array(
        [
            m.gt_match.get(int(g), 0) > 0 and data.score_of(m.gt_match[int(g)]) >= score_thresh
            for g in gt["ids"]
        ],
        bool,
    )
    return gt, dt, keep, tp, found


def image_errors(data: ReportData, score_thresh: float, iou: float = 0.5) -> Dict[int, ImageErrors]:
    """False positives and missed objects of every evaluated image."""
    out = {}
    for img_id in data.image_ids:
        gt, _, _, tp, found = _status(data, img_id, score_thresh, iou)
        missed = int((~found & ~gt["crowd"]).sum())
        out[img_id] = ImageErrors(img_id, int((~tp).sum()), missed)
    return out


def worst_images(errors: Dict[int, ImageErrors], key: str, n: int) -> List[ImageErrors]:
    """The ``n`` images with the most ``key`` ("false_positives" or "missed"), more first, ties
    by image id; images with none are left out."""
    ranked = sorted(errors.values(), key=lambda e: (-getattr(e, key), e.image_id))
    return [e for e in ranked[:n] if getattr(e, key) > 0]


def _draw(
    data: ReportData,
    img_id: int,
    image: np.ndarray,
    score_thresh: float,
    iou: float,
    max_side: int,
) -> np.ndarray:
    gt, dt, keep, tp, found = _status(data, img_id, score_thresh, iou)
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale < 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    names = data.class_names
    g_boxes, d_boxes = gt["boxes"] * scale, dt["boxes"][keep] * scale
    for mask, color in ((found, FOUND_COLOR), (~found & ~gt["crowd"], MISSED_COLOR)):
        image = draw_detections(
            image, g_boxes[mask], gt["labels"][mask], None, names, color=color, dashed=True
        )
    d_labels, d_scores = dt["labels"][keep], dt["scores"][keep]
    for mask, color in ((tp, TP_COLOR), (~tp, FP_COLOR)):
        image = draw_detections(
            image, d_boxes[mask], d_labels[mask], d_scores[mask], names, color=color
        )
    return image


def draw_gallery(
    data: ReportData,
    entries: List[ImageErrors],
    score_thresh: float,
    path: str,
    image_path: Callable[[int], Optional[str]],
    iou: float = 0.5,
    max_side: int = 320,
    cols: int = 4,
) -> Tuple[Optional[str], List[str]]:
    """Draw ``entries``' images into one tiled PNG at ``path``.

    Args:
        image_path: image id -> file to read (``None``: unknown). Unreadable images are left
            out and reported.
        max_side: each image is downscaled to at most this many pixels on its longer side.

    Returns:
        ``(path or None when no image could be drawn, problems)``: one line per image left out,
        naming the file and why.
    """
    tiles, problems = [], []
    for e in entries:
        file = image_path(e.image_id)
        if not file:
            problems.append(f"image id {e.image_id}: no image file known")
            continue
        try:
            image = read_image(file)
        except DatasetError as err:
            problems.append(str(err))
            continue
        tiles.append(_draw(data, e.image_id, image, score_thresh, iou, max_side))
    if problems:
        logger.warning(
            "evaluation report gallery %s: %d of %d images not drawn, e.g. %s",
            os.path.basename(path), len(problems), len(entries), problems[0],
        )  # fmt: skip
    if not tiles:
        return None, problems
    save_image(path, tile_images(tiles, cols=min(cols, len(tiles))))
    return path, problems
