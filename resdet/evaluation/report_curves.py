"""Precision-recall curves, and precision / recall / F1 against the score threshold.

Both come from the COCO evaluation itself (:mod:`resdet.evaluation.report_data`), never from
a second matcher:

* the precision-recall curves are ``COCOeval.eval["precision"][t, :, k, 0, -1]`` (area "all",
  100 detections) against ``params.recThrs``: COCO's interpolated precision (the running
  maximum to the right), whose mean is the AP. "all classes" is the mean over the classes that
  have ground truth, point by point, so its mean is the mAP;
* the threshold curves count COCOeval's matches at IoU 0.5 (``evalImgs``' ``dtMatches``) among
  the detections scoring at least the threshold: precision ``TP / (TP + FP)``, recall
  ``TP / #gt``, ``F1 = 2PR / (P + R)``, without interpolation. Greedy matching by score makes a
  detection's match independent of every lower-scoring detection, so these counts are what
  COCOeval would give on the thresholded detections. "all classes" pools the counts of every
  class (one threshold for the whole detector).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from resdet.evaluation.report_data import ReportData, per_class_counts

logger = logging.getLogger(__name__)

__all__ = [
    "F1Point",
    "best_f1",
    "plot_pr_curves",
    "plot_threshold_curves",
    "pr_curves",
    "threshold_curves",
]

# Score thresholds at which the threshold curves are drawn.
THRESHOLD_GRID = np.linspace(0.0, 1.0, 101)


def pr_curves(data: ReportData, iou: float) -> Dict[str, np.ndarray]:
    """Interpolated precision at COCO's 101 recall thresholds, per class and overall.

    Returns:
        ``{"recall": float[R], "<class name>": float[R] (nan when the class has no gt),
        "all classes": float[R]}``, taken from ``eval["precision"]`` at IoU ``iou``.
    """
    t = data.iou_index(iou)
    precision = data.cocoeval.eval["precision"][t, :, :, 0, -1]  # [R, K]
    out: Dict[str, np.ndarray] = {"recall": np.asarray(data.cocoeval.params.recThrs)}
    curves = []
    for k, name in enumerate(data.class_names):
        p = precision[:, k].astype(np.float64)
        if (p < 0).all():  # -1: no ground truth for this class
            out[name] = np.full_like(p, np.nan)
            continue
        out[name] = p
        curves.append(p)
    out["all classes"] = np.mean(curves, axis=0) if curves else np.full(len(out["recall"]), np.nan)
    return out


@dataclass
class F1Point:
    """The score threshold that maximises F1 (detections kept: score >= threshold)."""

    threshold: float
    precision: float
    recall: float
    f1: float
    num_gt: int


def _prf(scores: np.ndarray, tps: np.ndarray, num_gt: int, thresholds: np.ndarray):
    """Precision, recall and F1 at each threshold (``scores`` sorted high to low)."""
    # Number of detections kept at each threshold: scores >= t. searchsorted wants ascending.
    kept = len(scores) - np.searchsorted(scores[::-1], thresholds, side="left")
    cum_tp = np.concatenate([[0], np.cumsum(tps)])
    tp = cum_tp[kept].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(kept > 0, tp / np.maximum(kept, 1), np.nan)
        recall = tp / num_gt if num_gt else np.full(len(thresholds), np.nan)
        f1 = np.where(tp > 0, 2 * tp / (kept + num_gt), 0.0)
    return precision, recall, f1


def _count_sets(data: ReportData, iou: float):
    """``(names, scores, tp flags, #gt)`` per class plus "all classes" (every class pooled),
    scores sorted high to low."""
    scores, tps, n_gt = per_class_counts(data, iou)
    pooled = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-pooled, kind="mergesort")
    scores.append(pooled[order])
    tps.append((np.concatenate(tps) if tps else np.zeros(0, bool))[order])
    names = list(data.class_names) + ["all classes"]
    return names, scores, tps, [int(n) for n in n_gt] + [int(n_gt.sum())]


def threshold_curves(data: ReportData, iou: float = 0.5) -> Dict[str, Dict[str, np.ndarray]]:
    """Precision, recall and F1 on :data:`THRESHOLD_GRID`, per class and "all classes".

    Returns:
        ``{name: {"threshold", "precision", "recall", "f1"}}`` (float arrays of the grid's
        length; precision is nan where no detection is kept, recall where there is no gt).
    """
    names, scores, tps, totals = _count_sets(data, iou)
    out = {}
    for name, s, tp, n in zip(names, scores, tps, totals):
        p, r, f = _prf(s, tp, int(n), THRESHOLD_GRID)
        out[name] = {"threshold": THRESHOLD_GRID, "precision": p, "recall": r, "f1": f}
    return out


def best_f1(data: ReportData, iou: float = 0.5) -> Dict[str, F1Point]:
    """Per class and for "all classes": the threshold with the highest F1.

    Every distinct detection score is a candidate (the exact optimum, not a grid point); ties go
    to the higher threshold (fewer detections for the same F1). A class without detections
    or without ground truth gets threshold nan and F1 0.
    """
    names, scores, tps, totals = _count_sets(data, iou)
    out: Dict[str, F1Point] = {}
    for name, s, tp, n in zip(names, scores, tps, totals):
        candidates = np.unique(s)[::-1]  # high to low
        if not len(candidates) or n == 0:
            out[name] = F1Point(float("nan"), float("nan"), float("nan"), 0.0, int(n))
            continue
        p, r, f = _prf(s, tp, int(n), candidates)
        i = int(np.argmax(f))  # first maximum = highest threshold
        out[name] = F1Point(float(candidates[i]), float(p[i]), float(r[i]), float(f[i]), int(n))
    return out


def _class_colors(n: int) -> List[str]:
    return [f"C{i % 10}" for i in range(n)]


def plot_pr_curves(curves_by_iou: Dict[float, Dict[str, np.ndarray]], path: str) -> str:
    """One panel per IoU threshold: each class thin, "all classes" bold, AP in the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(curves_by_iou), 4.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, (iou, curves) in enumerate(curves_by_iou.items()):
        ax = fig.add_subplot(1, len(curves_by_iou), i + 1)
        names = [n for n in curves if n not in ("recall", "all classes")]
        for name, color in zip(names, _class_colors(len(names))):
            p = curves[name]
            if np.isnan(p).all():
                continue
            ax.plot(curves["recall"], p, color=color, lw=1.0, label=f"{name} {np.mean(p):.3f}")
        p = curves["all classes"]
        ax.plot(curves["recall"], p, color="k", lw=2.5, label=f"all classes {np.nanmean(p):.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"precision-recall at IoU {iou:.2f} (legend: AP)")
        ax.grid(True, alpha=0.3)
        # Upper right: high precision at high recall is rare; "best" costs seconds per figure.
        ax.legend(loc="upper right", fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_threshold_curves(
    curves: Dict[str, Dict[str, np.ndarray]], best: Dict[str, F1Point], path: str
) -> str:
    """Three panels (precision, recall, F1 against the score threshold); the best-F1 threshold
    of "all classes" marked on each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    names = [n for n in curves if n != "all classes"]
    overall = best["all classes"]
    for i, key in enumerate(("precision", "recall", "f1")):
        ax = fig.add_subplot(1, 3, i + 1)
        for name, color in zip(names, _class_colors(len(names))):
            c = curves[name]
            ax.plot(c["threshold"], c[key], color=color, lw=1.0, label=name)
        c = curves["all classes"]
        ax.plot(c["threshold"], c[key], color="k", lw=2.5, label="all classes")
        if not np.isnan(overall.threshold):
            ax.axvline(overall.threshold, color="k", ls=":", lw=1.0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("score threshold")
        ax.set_title(f"{'F1' if key == 'f1' else key} at IoU 0.50")
        ax.grid(True, alpha=0.3)
        if key == "f1":
            ax.legend(loc="lower left", fontsize=7, frameon=False)
    if not np.isnan(overall.threshold):
        fig.suptitle(
            f"best F1 (all classes) {overall.f1:.3f} at score >= {overall.threshold:.3f}",
            fontsize=10,
        )
    fig.tight_layout()
    fig.savefig(path)
    return path
