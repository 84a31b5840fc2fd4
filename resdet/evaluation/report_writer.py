"""The evaluation report: every analysis of :mod:`resdet.evaluation` for one dataset, written
as ``report.md`` + PNGs, a self-contained ``report.html`` and the numbers in ``report.json``.

Entry points: :func:`write_report` (from a :class:`ReportData`), :func:`report_from_files`
(a COCO gt json + a COCO results json: ``tools/coco_eval.py --report``) and
:func:`report_for_dataset` (records of a resdet dataset + the evaluator's
``coco_results.json``: ``tools/eval_det.py --report`` and ``TEST.REPORT`` after training).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from resdet.data.records import DatasetMeta, DetectionRecord
from resdet.evaluation.coco import json_safe, load_coco_gt, read_coco_gt, read_coco_results
from resdet.evaluation.report_confusion import confusion_matrix, normalize_rows, plot_confusion
from resdet.evaluation.report_curves import (
    F1Point,
    best_f1,
    plot_pr_curves,
    plot_threshold_curves,
    pr_curves,
    threshold_curves,
)
from resdet.evaluation.report_data import ReportData, build_report_data
from resdet.evaluation.report_doc import ReportDoc
from resdet.evaluation.report_errors import (
    DESCRIPTIONS,
    ERROR_TYPES,
    SPECIAL_TYPES,
    error_breakdown,
    plot_errors,
)
from resdet.evaluation.report_gallery import draw_gallery, image_errors, worst_images

logger = logging.getLogger(__name__)

__all__ = ["ap_table", "report_for_dataset", "report_from_files", "write_report"]

AREAS = ("all", "small", "medium", "large")
DEFAULT_SCORE_THRESH = 0.5  # used only when there is no detection to pick a best-F1 threshold


def _mean_defined(p: np.ndarray) -> float:
    p = p[p > -1]
    return float(p.mean()) if p.size else float("nan")


def ap_table(data: ReportData) -> Dict[str, Any]:
    """APs from ``eval["precision"]`` (fractions, nan when undefined): ``{"by_size": {area:
    {"AP", "AP50"}}, "per_class": {name: {"AP", "AP50", "AP75"}}}`` at 100 detections."""
    prec = data.cocoeval.eval["precision"]  # [T, R, K, A, M]
    t50, t75 = data.iou_index(0.5), data.iou_index(0.75)
    by_size = {
        area: {
            "AP": _mean_defined(prec[:, :, :, a, -1]),
            "AP50": _mean_defined(prec[t50, :, :, a, -1]),
        }
        for a, area in enumerate(AREAS)
    }
    per_class = {
        name: {
            "AP": _mean_defined(prec[:, :, k, 0, -1]),
            "AP50": _mean_defined(prec[t50, :, k, 0, -1]),
            "AP75": _mean_defined(prec[t75, :, k, 0, -1]),
        }
        for k, name in enumerate(data.class_names)
    }
    return {"by_size": by_size, "per_class": per_class}


def _plot_ap_bars(
    groups: Dict[str, Dict[str, float]], keys: Sequence[str], title: str, path: str
) -> str:
    """Grouped bars (percent), one group per entry of ``groups``; nan bars are left empty."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(groups)
    fig = Figure(figsize=(max(5.0, 0.9 * len(names) + 2.5), 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(keys)
    x = np.arange(len(names))
    for i, key in enumerate(keys):
        values = np.array([100 * groups[n][key] for n in names], np.float64)
        bars = ax.bar(
            x + (i - (len(keys) - 1) / 2) * width,
            np.nan_to_num(values),
            width,
            label=key,
            color=f"C{i}",
        )
        for bar, v in zip(bars, values):
            label = "n/a" if math.isnan(v) else f"{v:.1f}"
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                bar.get_height(),
                label,
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30 if len(names) > 6 else 0, ha="right", fontsize=8)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _num(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def _curves_section(data: ReportData, doc: ReportDoc, folder: str) -> Dict[str, F1Point]:
    pr = {iou: pr_curves(data, iou) for iou in (0.5, 0.75)}
    plot_pr_curves(pr, os.path.join(folder, "pr_curves.png"))
    doc.heading("Precision-recall curves")
    doc.text(
        "COCOeval's interpolated precision at its 101 recall points (eval['precision'], area "
        "all, 100 detections); 'all classes' is their mean, whose mean is the mAP."
    )
    doc.image("pr_curves.png", "precision-recall curves at IoU 0.5 and 0.75")
    best = best_f1(data)
    plot_threshold_curves(
        threshold_curves(data), best, os.path.join(folder, "threshold_curves.png")
    )
    doc.heading("Precision, recall and F1 against the score threshold")
    doc.text(
        "At IoU 0.5, keeping detections with score >= threshold. The best threshold "
        "maximises F1 (exactly, over every detection score); 'all classes' pools the "
        "counts of every class: one threshold for the whole detector."
    )
    doc.image("threshold_curves.png", "precision, recall and F1 against the score threshold")
    doc.table(
        ["class", "best threshold", "precision", "recall", "F1", "objects"],
        [
            [n, _num(b.threshold), _num(b.precision), _num(b.recall), _num(b.f1), b.num_gt]
            for n, b in best.items()
        ],
    )
    return best


def _confusion_section(
    data: ReportData, doc: ReportDoc, folder: str, score_thresh: float, how: str
) -> Dict[str, Any]:
    cm = confusion_matrix(data, score_thresh)
    plot_confusion(cm, data.class_names, score_thresh, os.path.join(folder, "confusion_matrix.png"))
    names = [*data.class_names, "background"]
    doc.heading("Confusion matrix")
    doc.text(
        f"IoU 0.5, score >= {score_thresh:.3f} ({how}). Rows: ground truth; columns: "
        "prediction. Background row: false detections; background column: missed objects. "
        "Detections are matched greedily by score, first to objects of their own class "
        "(COCOeval's rule, so the diagonal is COCOeval's true positives), then to objects of "
        "other classes (torchvision.ops.box_iou)."
    )
    doc.image("confusion_matrix.png", "confusion matrix, counts and row-normalised")
    doc.table(["truth \\ predicted", *names], [[n, *row] for n, row in zip(names, cm.tolist())])
    return {"labels": names, "counts": cm.tolist(), "row_normalised": normalize_rows(cm).tolist()}


def _errors_section(data: ReportData, doc: ReportDoc, folder: str) -> Dict[str, Any]:
    errors = error_breakdown(data)
    plot_errors(errors, os.path.join(folder, "errors.png"))
    doc.heading("Where the AP50 goes (TIDE error breakdown)")
    doc.text(
        "TIDE's definitions (Bolya et al. 2020; foreground IoU 0.5, background IoU 0.1): each "
        "false positive and missed object gets one error type; dAP is the AP50 gained by "
        "fixing that type alone, re-scored with pycocotools. The dAPs overlap: they need not "
        f"add up to 100 - AP50. Baseline AP50 {_pct(errors.ap50)}."
    )
    doc.image("errors.png", "dAP50 per error type")
    doc.table(
        ["type", "what", "count", "dAP50"],
        [
            [k, DESCRIPTIONS[k], errors.counts.get(k, "-"), _pct(errors.dap[k])]
            for k in (*ERROR_TYPES, *SPECIAL_TYPES)
        ],
    )
    return {"ap50": errors.ap50, "counts": errors.counts, "dap": errors.dap}


def _ap_section(aps: Dict[str, Any], doc: ReportDoc, folder: str) -> None:
    _plot_ap_bars(
        aps["by_size"],
        ("AP", "AP50"),
        "AP by object size (COCO areas)",
        os.path.join(folder, "ap_by_size.png"),
    )
    _plot_ap_bars(
        aps["per_class"],
        ("AP", "AP50", "AP75"),
        "AP per class",
        os.path.join(folder, "ap_per_class.png"),
    )
    doc.heading("AP by object size and per class")
    doc.text(
        "Small < 32x32 pixels < medium < 96x96 pixels < large (COCO's areas); AP is the mean "
        "over IoU 0.50:0.95, n/a where there is no object of that size or class."
    )
    doc.image("ap_by_size.png", "AP by object size")
    doc.image("ap_per_class.png", "AP per class")
    doc.table(
        ["class", "AP", "AP50", "AP75"],
        [[n, _pct(v["AP"]), _pct(v["AP50"]), _pct(v["AP75"])] for n, v in aps["per_class"].items()],
    )


def _gallery_section(
    data: ReportData,
    doc: ReportDoc,
    folder: str,
    score_thresh: float,
    image_path: Optional[Callable[[int], Optional[str]]],
    size: int,
) -> Dict[str, List[Dict[str, Any]]]:
    per_image = image_errors(data, score_thresh)
    galleries: Dict[str, List[Dict[str, Any]]] = {}
    doc.heading("The images with the most errors")
    doc.text(
        "Detections are drawn green when right and red when wrong (class and score), objects "
        "dashed white when found and dashed yellow when missed."
    )
    for key, file, what in (
        ("false_positives", "gallery_false_positives.png", "false positives"),
        ("missed", "gallery_missed.png", "missed objects"),
    ):
        worst = worst_images(per_image, key, size)
        galleries[key] = [e.__dict__ for e in worst]
        if not worst:
            doc.text(f"No image has {what} at score >= {score_thresh:.3f}.")
            continue
        doc.text(f"Most {what} (score >= {score_thresh:.3f}, IoU 0.5), in the order of the table.")
        if image_path is None:
            drawn, problems = None, ["no image folder given"]
        else:
            path = os.path.join(folder, file)
            drawn, problems = draw_gallery(data, worst, score_thresh, path, image_path)
        if drawn:
            doc.image(file, f"images with the most {what}")
        for p in problems[:5]:
            doc.text(f"Not drawn: {p}")
        doc.table(
            ["file", "image id", "false positives", "missed"],
            [[data.image_file(e.image_id), e.image_id, e.false_positives, e.missed] for e in worst],
        )
    return galleries


def write_report(
    data: ReportData,
    output_dir: str,
    score_thresh: Optional[float] = None,
    image_path: Optional[Callable[[int], Optional[str]]] = None,
    gallery_size: int = 8,
    title: str = "Evaluation report",
) -> Dict[str, Any]:
    """Write the report into ``output_dir`` and return its numbers (also ``report.json``).

    Args:
        data: ground truth, detections and their COCOeval.
        score_thresh: threshold of the confusion matrix and the galleries; ``None`` (or < 0)
            takes the one maximising F1 over all classes.
        image_path: image id -> image file, for the galleries; ``None`` skips them.
        gallery_size: images per gallery.
    """
    os.makedirs(output_dir, exist_ok=True)
    doc = ReportDoc(title)
    m = data.matching(0.5)
    n_img, n_det = len(data.image_ids), len(m.dt_match)
    n_gt = sum(1 for g in m.gt_match if g not in m.gt_ignored)
    aps = ap_table(data)
    doc.text(
        f"{n_img} images, {n_gt} objects, {n_det} detections evaluated, {data.num_classes} "
        f"classes. AP {_pct(aps['by_size']['all']['AP'])}, AP50 "
        f"{_pct(aps['by_size']['all']['AP50'])} (pycocotools, percent). Every count below "
        "uses COCOeval's matching (greedy by score, one detection per object, crowd regions "
        "ignored, at most 100 detections per image and class) unless it says otherwise."
    )
    best = _curves_section(data, doc, output_dir)
    if score_thresh is None or score_thresh < 0:
        score_thresh = best["all classes"].threshold
        how = "the threshold of best F1 over all classes"
        if math.isnan(score_thresh):
            score_thresh, how = DEFAULT_SCORE_THRESH, "a default (no detection to choose by)"
    else:
        how = "as asked"
    summary = {
        "images": n_img,
        "objects": n_gt,
        "detections": n_det,
        "AP": aps["by_size"]["all"]["AP"],
        "AP50": aps["by_size"]["all"]["AP50"],
        "ap": aps,
        "best_f1": {n: b.__dict__ for n, b in best.items()},
        "score_thresh": score_thresh,
        "confusion_matrix": _confusion_section(data, doc, output_dir, score_thresh, how),
        "errors": _errors_section(data, doc, output_dir),
    }
    _ap_section(aps, doc, output_dir)
    summary["galleries"] = _gallery_section(
        data, doc, output_dir, score_thresh, image_path, gallery_size
    )
    doc.heading("Files")
    doc.text("report.json holds these numbers; the PNGs are next to this file.")
    with open(os.path.join(output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(json_safe(summary), f, indent=2)
    with open(os.path.join(output_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(doc.markdown())
    with open(os.path.join(output_dir, "report.html"), "w", encoding="utf-8") as f:
        f.write(doc.html(output_dir))
    logger.info("wrote the evaluation report to %s", os.path.join(output_dir, "report.md"))
    return summary


def report_from_files(
    gt_json: str,
    dt_json: str,
    output_dir: str,
    image_root: Optional[str] = None,
    score_thresh: Optional[float] = None,
) -> Dict[str, Any]:
    """The report of a COCO results json against a COCO gt json; galleries drawn when
    ``image_root`` holds the gt's ``file_name``s.

    Raises:
        DatasetError: a missing or malformed file (named), or results for unknown images.
    """
    coco_gt = read_coco_gt(gt_json)
    data = build_report_data(coco_gt, read_coco_results(dt_json, coco_gt))

    def image_path(img_id: int) -> Optional[str]:
        name = data.image_file(img_id)
        return os.path.join(image_root, name) if image_root and name else None

    return write_report(
        data,
        output_dir,
        score_thresh,
        image_path if image_root else None,
        title=f"Evaluation report: {os.path.basename(dt_json)}",
    )


def report_for_dataset(
    records: Sequence[DetectionRecord],
    meta: DatasetMeta,
    results_json: str,
    output_dir: str,
    score_thresh: Optional[float] = None,
) -> Dict[str, Any]:
    """The report of a resdet test set from the evaluator's ``coco_results.json``: ground truth
    as the COCO evaluator scores it, images from the records.

    Raises:
        DatasetError: ``results_json`` is missing or malformed (named).
    """
    coco_gt = load_coco_gt(records, meta)
    files = {int(r.image_id): r.file_name for r in records}
    data = build_report_data(
        coco_gt, read_coco_results(results_json, coco_gt), img_ids=sorted(files)
    )
    return write_report(
        data, output_dir, score_thresh, files.get, title=f"Evaluation report: {meta.name}"
    )
