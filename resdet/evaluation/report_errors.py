"""Where the AP goes: the TIDE error breakdown (Bolya et al., "TIDE: A General Toolbox for
Identifying Object Detection Errors", ECCV 2020), computed with pycocotools.

Definitions (TIDE's, with its thresholds: foreground ``t_f = 0.5``, background ``t_b = 0.1``).
Every false positive of COCOeval's matching at IoU ``t_f`` (area "all", 100 detections, crowd
matches ignored) gets one type, tested in this order against the image's non-crowd objects:

* **Loc**: its best IoU with an object *of its class* is in ``[t_b, t_f]``;
* **Cls**: its best IoU with an object *of another class* is ``>= t_f``;
* **Dupe**: its best IoU with an object of its class *already matched* by a higher-scoring
  detection is ``>= t_f``;
* **Bkg**: its best IoU with any object is ``<= t_b`` (or the image has no objects);
* **Both**: anything else (wrong class and poorly localised).

**Miss**: an object that no detection matched and that no Cls or Loc error points at.

Each type's **dAP** is the AP50 gained by fixing that type alone (the others left as they are),
re-scored by COCOeval: a Cls or Loc error becomes a true positive of its object -- it takes the
object's class and box (at IoU 0.5 the box only makes COCOeval's matching land on that object)
-- when the object is free and this is the highest-scoring such error on it, and is removed
otherwise; Dupe, Bkg and Both errors are removed; missed objects are removed from the ground
truth. Fixing every false positive ("FalsePos") and every missed object ("FalseNeg", all
unmatched objects removed) give TIDE's two summary numbers. The dAPs overlap and need not add
up to ``1 - AP50``. The tidecv package computes the same with its own AP code; this module uses
pycocotools' so that the baseline is exactly the reported AP50.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from resdet.evaluation.coco import load_coco_results
from resdet.evaluation.report_data import ReportData

__all__ = ["ERROR_TYPES", "ErrorBreakdown", "classify_errors", "error_breakdown", "plot_errors"]

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL_TYPES = ("FalsePos", "FalseNeg")
DESCRIPTIONS = {
    "Cls": "right place, wrong class (IoU >= 0.5 with an object of another class)",
    "Loc": "right class, poorly localised (IoU 0.1-0.5 with an object of its class)",
    "Both": "wrong class and poorly localised",
    "Dupe": "a second detection of an object already found",
    "Bkg": "detection on background (IoU <= 0.1 with every object)",
    "Miss": "object not detected at all",
    "FalsePos": "all false positives removed",
    "FalseNeg": "all unmatched objects removed",
}


@dataclass
class ErrorBreakdown:
    """Attributes:
    ap50: the baseline AP50 (fraction), COCOeval's.
    counts: number of errors per type (``ERROR_TYPES``).
    dap: AP50 gained by fixing each type alone (fraction), also for ``SPECIAL_TYPES``.
    dt_type: false-positive detection id -> its type.
    dt_target: Cls/Loc detection id -> the object id it points at.
    missed: ids of the objects of type Miss.
    fixer: free object id -> the highest-scoring Cls/Loc detection pointing at it (the one a
        fix turns into its true positive).
    """

    ap50: float
    counts: Dict[str, int]
    dap: Dict[str, float]
    dt_type: Dict[int, str] = field(default_factory=dict)
    dt_target: Dict[int, int] = field(default_factory=dict)
    missed: List[int] = field(default_factory=list)
    fixer: Dict[int, int] = field(default_factory=dict)


def classify_errors(data: ReportData, t_f: float = 0.5, t_b: float = 0.1) -> ErrorBreakdown:
    """Type every false positive and missed object (no dAP yet; see :func:`error_breakdown`)."""
    m = data.matching(t_f)
    out = ErrorBreakdown(float("nan"), {t: 0 for t in ERROR_TYPES}, {})
    claimed = out.fixer
    for img_id in data.image_ids:
        gt, dt = data.gt_arrays(img_id), data.dt_arrays(img_id)
        g_keep = ~gt["crowd"]
        g_boxes, g_labels, g_ids = gt["boxes"][g_keep], gt["labels"][g_keep], gt["ids"][g_keep]
        used = np.array([m.gt_match.get(int(i), 0) > 0 for i in g_ids], bool)
        ious = box_iou(torch.from_numpy(dt["boxes"]), torch.from_numpy(g_boxes)).numpy()
        for d, dt_id in enumerate(dt["ids"].tolist()):
            if m.dt_match.get(dt_id, -1) != 0 or dt_id in m.dt_ignored:
                continue  # a true positive, ignored, or beyond the 100 evaluated
            iou = ious[d]
            same = g_labels == dt["labels"][d]
            kind, target = "Both", 0
            if not len(g_ids):
                kind = "Bkg"
            elif t_b <= np.max(np.where(same, iou, -1.0)) <= t_f:
                kind, target = "Loc", int(g_ids[np.argmax(np.where(same, iou, -1.0))])
            elif np.max(np.where(~same, iou, -1.0)) >= t_f:
                kind, target = "Cls", int(g_ids[np.argmax(np.where(~same, iou, -1.0))])
            elif np.max(np.where(same & used, iou, -1.0)) >= t_f:
                kind = "Dupe"
            elif np.max(iou) <= t_b:
                kind = "Bkg"
            out.dt_type[dt_id] = kind
            out.counts[kind] += 1
            if target:
                out.dt_target[dt_id] = target
                # Detections come high score first: the first claim on a free object wins.
                if m.gt_match.get(target, 0) == 0:
                    claimed.setdefault(target, dt_id)
        for gt_id in g_ids.tolist():
            if m.gt_match.get(gt_id, 0) == 0 and gt_id not in m.gt_ignored:
                if gt_id not in claimed:
                    out.missed.append(gt_id)
    out.counts["Miss"] = len(out.missed)
    return out


def ap50(coco_gt: COCO, results: List[Dict[str, Any]], img_ids: List[int], t_f: float) -> float:
    """COCOeval's AP at one IoU (area "all", 100 detections), as a fraction."""
    coco_dt = load_coco_results(coco_gt, results)
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(coco_gt, coco_dt, iouType="bbox")
        e.params.imgIds = list(img_ids)
        e.params.iouThrs = np.array([t_f])
        e.params.areaRng, e.params.areaRngLbl = [[0, 1e10]], ["all"]
        e.params.maxDets = [100]
        e.evaluate()
        e.accumulate()
    p = e.eval["precision"][0, :, :, 0, 0]  # [R, K]
    per_class = [p[:, k].mean() for k in range(p.shape[1]) if (p[:, k] > -1).any()]
    return float(np.mean(per_class)) if per_class else float("nan")


def _without_annotations(coco_gt: COCO, drop: set) -> COCO:
    data = dict(coco_gt.dataset)
    data["annotations"] = [a for a in coco_gt.dataset["annotations"] if a["id"] not in drop]
    with contextlib.redirect_stdout(io.StringIO()):
        out = COCO()
        out.dataset = data
        out.createIndex()
    return out


def error_breakdown(
    data: ReportData, t_f: float = 0.5, t_b: float = 0.1, types: Optional[List[str]] = None
) -> ErrorBreakdown:
    """:func:`classify_errors` plus each type's dAP (fractions of AP), by COCOeval re-runs."""
    out = classify_errors(data, t_f, t_b)
    m = data.matching(t_f)
    evaluated = [data.coco_dt.anns[i] for i in m.dt_match]  # what COCOeval scored
    img_ids = data.image_ids

    def detections(kind: str) -> List[Dict[str, Any]]:
        dets = []
        for ann in evaluated:
            det = {k: ann[k] for k in ("image_id", "category_id", "bbox", "score")}
            t = out.dt_type.get(ann["id"])
            if kind == "FalsePos" and t is not None:
                continue
            if t == kind:
                target = out.dt_target.get(ann["id"])
                if target is None or out.fixer.get(target) != ann["id"]:
                    continue  # removed
                obj = data.coco_gt.anns[target]
                det["category_id"], det["bbox"] = obj["category_id"], list(obj["bbox"])
            dets.append(det)
        return dets

    base = [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in evaluated]
    out.ap50 = ap50(data.coco_gt, base, img_ids, t_f)
    for kind in types or (*ERROR_TYPES, *SPECIAL_TYPES):
        if kind in ("Miss", "FalseNeg"):
            drop = set(out.missed)
            if kind == "FalseNeg":
                drop = {g for g, d in m.gt_match.items() if d == 0 and g not in m.gt_ignored}
            fixed = ap50(_without_annotations(data.coco_gt, drop), base, img_ids, t_f)
        else:
            fixed = ap50(data.coco_gt, detections(kind), img_ids, t_f)
        out.dap[kind] = fixed - out.ap50
    return out


def plot_errors(breakdown: ErrorBreakdown, path: str) -> str:
    """Horizontal bars of dAP (AP50 points) per error type, with the error counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    kinds = [k for k in (*ERROR_TYPES, *SPECIAL_TYPES) if k in breakdown.dap]
    values = [100 * breakdown.dap[k] for k in kinds]
    labels = [f"{k} ({breakdown.counts[k]})" if k in breakdown.counts else k for k in kinds]
    colors = ["C3", "C1", "C4", "C2", "C7", "C0", "0.5", "0.5"][: len(kinds)]
    y = np.arange(len(kinds))[::-1]
    ax.barh(y, values, color=colors)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:.2f}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("dAP50 (AP points gained by fixing that error type alone)")
    ax.set_title(f"TIDE error breakdown; AP50 = {100 * breakdown.ap50:.2f}", fontsize=10)
    ax.set_xlim(0, max(values + [1.0]) * 1.2)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path
