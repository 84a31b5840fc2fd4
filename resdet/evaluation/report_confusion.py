"""A confusion matrix of detections against ground truth, with a background row and column.

COCOeval only matches a detection with objects of its own class, so which class a wrongly
labelled detection was mistaken for is not in its output; this module matches across classes
with ``torchvision.ops.box_iou``, per image, greedily by score, in two passes:

1. **class-aware**, as COCOeval does: each detection (score >= the threshold, at most 100 per
   image and class, highest score first) takes the unmatched object of its own class it
   overlaps most, if that IoU is >= ``iou`` (0.5). A detection left over that covers a crowd
   region of its class (intersection over the detection's area >= ``iou``, as COCOeval
   measures crowds) is ignored, as COCOeval ignores it. These matches are the diagonal, so the
   diagonal equals COCOeval's true positives at that threshold (tested) -- up to ties between
   equally overlapping objects, which may be broken differently;
2. **across classes**: each detection still unmatched (highest score first) takes the unmatched
   object of another class it overlaps most, if IoU >= ``iou``: an off-diagonal cell.

What is left: detections in the **background row** (false detections: duplicates, poor
localisation, nothing there) and objects in the **background column** (missed). Rows are the
ground truth (classes, then background), columns the prediction; crowd objects are not counted.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.ops import box_iou

from resdet.evaluation.report_data import ReportData

__all__ = ["confusion_matrix", "normalize_rows", "plot_confusion"]

MAX_DETS = 100  # COCOeval's maxDets[-1]: detections per image and class that are evaluated


def _top_per_class(labels: np.ndarray, max_dets: int) -> np.ndarray:
    """Mask keeping the first ``max_dets`` detections of each class (input sorted by score)."""
    keep = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:max_dets]] = True
    return keep


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[:, 2:] -= out[:, :2]
    return out


def _greedy(
    iou: np.ndarray,
    allowed: np.ndarray,
    dt_free: np.ndarray,
    gt_free: np.ndarray,
    thresh: float,
) -> List[Tuple[int, int]]:
    """Greedy matching: detections in index order (high score first) take the free, allowed
    object of highest IoU >= ``thresh``. Updates ``dt_free``/``gt_free``; returns pairs."""
    pairs = []
    for d in range(iou.shape[0]):
        if not dt_free[d]:
            continue
        cand = np.where(allowed[d] & gt_free, iou[d], -1.0)
        if not len(cand):
            continue
        g = int(np.argmax(cand))
        if cand[g] >= thresh:
            pairs.append((d, g))
            dt_free[d] = False
            gt_free[g] = False
    return pairs


def image_confusion(
    data: ReportData, img_id: int, score_thresh: float, iou: float = 0.5
) -> np.ndarray:
    """One image's confusion counts, ``int64[K + 1, K + 1]`` (see the module docstring)."""
    k = data.num_classes
    cm = np.zeros((k + 1, k + 1), np.int64)
    gt, dt = data.gt_arrays(img_id), data.dt_arrays(img_id)
    keep = dt["scores"] >= score_thresh
    keep &= _top_per_class(dt["labels"], MAX_DETS)
    d_boxes, d_labels = dt["boxes"][keep], dt["labels"][keep]
    crowd = gt["crowd"]
    g_boxes, g_labels = gt["boxes"][~crowd], gt["labels"][~crowd]
    ious = box_iou(torch.from_numpy(d_boxes), torch.from_numpy(g_boxes)).numpy()
    dt_free = np.ones(len(d_boxes), bool)
    gt_free = np.ones(len(g_boxes), bool)
    same = d_labels[:, None] == g_labels[None, :]
    for d, g in _greedy(ious, same, dt_free, gt_free, iou):
        cm[g_labels[g], d_labels[d]] += 1
    if crowd.any() and dt_free.any():
        # COCOeval's crowd overlap: intersection over the detection's area (iscrowd=1).
        c_boxes, c_labels = gt["boxes"][crowd], gt["labels"][crowd]
        ioa = np.asarray(
            mask_utils.iou(_xywh(d_boxes), _xywh(c_boxes), [1] * len(c_boxes))
        ).reshape(len(d_boxes), len(c_boxes))
        on_crowd = ((ioa >= iou) & (d_labels[:, None] == c_labels[None, :])).any(axis=1)
        dt_free &= ~on_crowd
    for d, g in _greedy(ious, ~same, dt_free, gt_free, iou):
        cm[g_labels[g], d_labels[d]] += 1
    np.add.at(cm, (k, d_labels[dt_free]), 1)  # false detections
    np.add.at(cm, (g_labels[gt_free], k), 1)  # missed objects
    return cm


def confusion_matrix(
    data: ReportData,
    score_thresh: float,
    iou: float = 0.5,
    img_ids: Optional[List[int]] = None,
) -> np.ndarray:
    """Counts ``int64[K + 1, K + 1]``: row = true class (last: background), column = predicted
    class (last: background), summed over ``img_ids`` (default: every evaluated image)."""
    k = data.num_classes
    cm = np.zeros((k + 1, k + 1), np.int64)
    for img_id in img_ids if img_ids is not None else data.image_ids:
        cm += image_confusion(data, img_id, score_thresh, iou)
    return cm


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows without any count stay 0)."""
    sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros(cm.shape, np.float64), where=sums > 0)


def plot_confusion(
    cm: np.ndarray, class_names: List[str], score_thresh: float, path: str, iou: float = 0.5
) -> str:
    """Counts and row-normalised matrices side by side, each cell annotated."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(class_names) + ["background"]
    n = len(names)
    side = max(4.5, 0.55 * n + 2.0)
    fig = Figure(figsize=(2 * side + 1, side), dpi=100)
    FigureCanvasAgg(fig)
    for i, (matrix, title, fmt) in enumerate(
        ((cm, "counts", "{:d}"), (normalize_rows(cm), "row-normalised", "{:.2f}"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        shown = matrix.astype(np.float64)
        ax.imshow(shown / max(shown.max(), 1e-12), cmap="Blues", vmin=0, vmax=1)
        for r in range(n):
            for c in range(n):
                v = matrix[r, c]
                if v == 0:
                    continue
                text = fmt.format(int(v) if fmt == "{:d}" else float(v))
                dark = shown[r, c] > 0.6 * shown.max()
                ax.text(
                    c,
                    r,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("ground truth")
        ax.set_title(f"{title} (IoU {iou:.2f}, score >= {score_thresh:.3f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path
