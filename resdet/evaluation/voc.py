"""PASCAL VOC box evaluation: the devkit's AP at IoU > 0.5, 11-point (VOC2007) and area (VOC2010+).

This follows the devkit's ``VOCevaldet.m`` as ported in py-faster-rcnn's ``voc_eval.py``:
per class, detections from all images are sorted by score; each is matched to the gt box of
its image with the largest IoU; IoU > 0.5 with a not-yet-matched gt is a true positive, with
an already matched gt (a duplicate) a false positive, and with a *difficult* gt neither; below
0.5 it is a false positive. Recall is over the non-difficult gt boxes (``npos``).

One deliberate difference: IoU is computed on resdet's continuous 0-based ``xyxy`` boxes,
``area = (x2 - x1) * (y2 - y1)``, with :func:`torchvision.ops.box_iou`. The devkit (and
detectron2's ``PascalVOCDetectionEvaluator``) treat coordinates as inclusive pixel indices and
add 1 to widths and heights, which gives slightly larger IoUs for small boxes, so numbers can
differ from the official ones by a small amount.

Units: APs are fractions in [0, 1]. A class without any non-difficult gt among the evaluated
images has AP ``nan`` (the devkit divides by zero there) and is left out of the means.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from typing import Any, Dict, List

import numpy as np
import torch
from torchvision.ops import box_iou

from resdet.data.records import DatasetError, DetectionRecord
from resdet.evaluation.coco import check_detections, json_safe
from resdet.evaluation.evaluator import PerImageEvaluator

logger = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """Average precision from a precision/recall curve, exactly as the VOC devkit.

    Args:
        rec: ``float[D]`` recall after each detection (non-decreasing).
        prec: ``float[D]`` precision after each detection.
        use_07_metric: VOC2007's 11-point interpolated AP (mean over recall thresholds
            0, 0.1, ..., 1 of the best precision at recall >= t); otherwise VOC2010+'s area
            under the monotone precision envelope at every recall change.
    """
    rec = np.asarray(rec, np.float64)
    prec = np.asarray(prec, np.float64)
    if use_07_metric:
        ap = 0.0
        # np.arange (not linspace) keeps the devkit's thresholds bit for bit, e.g. 0.3 is
        # 0.30000000000000004 there too.
        for t in np.arange(0.0, 1.1, 0.1):
            p = np.max(prec[rec >= t]) if np.any(rec >= t) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    # Precision envelope: the best precision at this recall or any higher one.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _match_class(
    gt_boxes: List[np.ndarray],
    gt_ignore: List[np.ndarray],
    det_img: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
) -> tuple:
    """TP/FP flags of one class's detections in descending score order.

    Args:
        gt_boxes: per evaluated image, ``float[G_i, 4]`` gt boxes of this class.
        gt_ignore: per image, ``bool[G_i]`` difficult (or crowd) flags.
        det_img: ``int[D]`` index into the image lists for each detection.
        det_boxes: ``float[D, 4]``; det_scores: ``float[D]``.

    Returns:
        ``(tp, fp)``, ``float[D]`` each, sorted by descending score (stable for ties).
    """
    order = np.argsort(-det_scores, kind="stable")
    det_img, det_boxes = det_img[order], det_boxes[order]
    n = len(order)
    ovmax = np.full(n, -np.inf)
    jmax = np.zeros(n, np.int64)
    for img in np.unique(det_img):
        sel = np.nonzero(det_img == img)[0]
        if len(gt_boxes[img]) == 0:
            continue
        iou = box_iou(torch.from_numpy(det_boxes[sel]), torch.from_numpy(gt_boxes[img])).numpy()
        ovmax[sel] = iou.max(axis=1)
        jmax[sel] = iou.argmax(axis=1)  # first maximum, as np.argmax in the devkit port
    hit = ovmax > IOU_THRESHOLD
    ignored = np.zeros(n, bool)
    ignored[hit] = [gt_ignore[i][j] for i, j in zip(det_img[hit], jmax[hit])]
    # Among detections hitting the same non-difficult gt, the highest scored (first in
    # order) is the TP and the rest are duplicates. The devkit's greedy loop matches to the
    # arg-max gt even if it is already taken, so the first-occurrence rule is exact.
    cand = np.nonzero(hit & ~ignored)[0]
    max_g = max((len(g) for g in gt_boxes), default=0) + 1
    keys = det_img[cand].astype(np.int64) * max_g + jmax[cand]
    _, first = np.unique(keys, return_index=True)
    tp = np.zeros(n)
    tp[cand[first]] = 1.0
    fp = (~ignored).astype(np.float64) - tp
    return tp, fp


def _format_table(metrics: Dict[str, Any]) -> str:
    def pct(x: float) -> str:
        return "nan" if math.isnan(x) else f"{100 * x:.2f}"

    lines = [
        "VOC AP at IoU > 0.5 (%)",
        "",
        "| class | AP (VOC07 11-point) | AP (area) |",
        "|---|---|---|",
    ]
    for name, ap in metrics["per_class"].items():
        lines.append(f"| {name} | {pct(ap['ap07'])} | {pct(ap['ap'])} |")
    lines.append(f"| **mean** | {pct(metrics['mAP07'])} | {pct(metrics['mAP'])} |")
    return "\n".join(lines) + "\n"


def _nanmean(values: List[float]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan → nan, on purpose
        return float(np.nanmean(values)) if values else float("nan")


class VOCEvaluator(PerImageEvaluator[Dict[str, Any]]):
    """Accumulate detections, then compute the VOC devkit's per-class AP and the mean.

    Only images passed to :meth:`process` are evaluated (a subset can be scored; their gt
    still counts towards recall); if nothing was processed every record counts. Crowd boxes
    are treated like difficult ones (ignored). In a distributed run :meth:`evaluate` gathers
    to rank 0, which returns the metrics and writes files; other ranks get ``{}``.
    """

    def process(self, detections: List[Dict[str, Any]]) -> None:
        """Add per-image ``{"image_id", "boxes" [N, 4] xyxy, "scores" [N], "labels" [N]}``."""
        k = len(self.meta.class_names)
        for d in detections:
            checked = check_detections(d, k)
            self._per_image.append((checked["image_id"], checked))

    def evaluate(self) -> Dict[str, Any]:
        """Returns ``{"mAP07", "mAP", "AP50", "per_class": {name: {"ap07", "ap"}}}``.

        ``mAP07`` is the mean 11-point AP (VOC2007 test protocol), ``mAP`` the mean area AP
        (VOC2010+), ``AP50`` equals ``mAP`` (named for comparison with COCO's AP50). Writes
        ``voc_metrics.json`` and ``voc_per_class.md`` into ``output_dir`` when set.

        Raises:
            DatasetError: detections for an image id that is not among the records.
        """
        dets = self._gather()
        if dets is None:
            return {}
        by_id = {int(r.image_id): r for r in self.records}
        for image_id in dets:
            if image_id not in by_id:
                raise DatasetError(
                    f"{self.meta.name}: detections for image id {image_id}, "
                    "which is not among the dataset's records"
                )
        records = [r for r in self.records if int(r.image_id) in dets]
        self._log_coverage(len(records))
        if not dets:
            records = self.records

        per_class: Dict[str, Dict[str, float]] = {}
        for c, name in enumerate(self.meta.class_names):
            per_class[name] = self._eval_class(c, name, records, dets)
        metrics: Dict[str, Any] = {
            "mAP07": _nanmean([v["ap07"] for v in per_class.values()]),
            "mAP": _nanmean([v["ap"] for v in per_class.values()]),
        }
        metrics["AP50"] = metrics["mAP"]
        metrics["per_class"] = per_class
        table = _format_table(metrics)
        logger.info("\n%s", table)
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "voc_metrics.json"), "w") as f:
                json.dump(json_safe(metrics), f, indent=2)
            with open(os.path.join(self.output_dir, "voc_per_class.md"), "w") as f:
                f.write(table)
        return metrics

    def _eval_class(
        self,
        c: int,
        name: str,
        records: List[DetectionRecord],
        dets: Dict[int, Dict[str, Any]],
    ) -> Dict[str, float]:
        gt_boxes, gt_ignore = [], []
        det_img, det_boxes, det_scores = [], [], []
        for i, rec in enumerate(records):
            m = rec.labels == c
            gt_boxes.append(rec.boxes[m].astype(np.float64))
            gt_ignore.append((rec.difficult | rec.iscrowd)[m])
            d = dets.get(int(rec.image_id))
            if d is not None:
                dm = d["labels"] == c
                det_img.append(np.full(int(dm.sum()), i, np.int64))
                det_boxes.append(d["boxes"][dm])
                det_scores.append(d["scores"][dm])
        npos = int(sum(int((~g).sum()) for g in gt_ignore))
        if npos == 0:
            logger.warning(
                "%s: class %r has no non-difficult gt box: AP is nan", self.meta.name, name
            )
            return {"ap07": float("nan"), "ap": float("nan")}
        if not det_img:
            return {"ap07": 0.0, "ap": 0.0}
        tp, fp = _match_class(
            gt_boxes,
            gt_ignore,
            np.concatenate(det_img),
            np.concatenate(det_boxes).reshape(-1, 4),
            np.concatenate(det_scores),
        )
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / float(npos)
        # The devkit's guard: a leading ignored detection has tp + fp == 0.
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        return {"ap07": voc_ap(rec, prec, True), "ap": voc_ap(rec, prec, False)}
