"""COCO-style box evaluation with pycocotools.

The COCO boundary on the way out: detections arrive as resdet dicts (absolute ``xyxy`` pixels,
contiguous labels ``0..K-1``) and leave as COCO results (``xywh``, dataset category ids).

Units: every AP returned here is a **fraction in [0, 1]** (pycocotools' own unit), not a
percentage as detectron2 reports; the human-readable tables show percentages and say so.
An AP that cannot be defined (no ground truth for a category or an area range) is ``nan``
and, as in pycocotools' ``summarize``, is left out of the means.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import sys
from typing import Any, Dict, List, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resdet.data.records import DatasetError
from resdet.evaluation.coco_io import (  # noqa: F401 (re-exported: callers import them here)
    load_coco_gt,
    load_coco_results,
    read_coco_gt,
    read_coco_results,
    records_to_coco_gt,
)
from resdet.evaluation.evaluator import PerImageEvaluator

logger = logging.getLogger(__name__)

# Order of COCOeval.stats[0:6] for bbox evaluation.
_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array."""
    # torch is not imported here so tools/coco_eval.py starts in a fraction of a second; a
    # tensor can only exist if someone else has imported torch already.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_detections(det: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
    """Validate one image's detections and return them as numpy arrays.

    Args:
        det: ``{"image_id": int, "boxes": [N, 4] xyxy, "scores": [N], "labels": [N]}``; the
            arrays may be numpy arrays or torch tensors.
        num_classes: ``K``; labels must lie in ``0..K-1``.

    Returns:
        ``{"image_id": int, "boxes": float64[N, 4], "scores": float64[N], "labels": int64[N]}``.

    Raises:
        DatasetError: a missing key, mismatched lengths or a label outside ``0..K-1``.
    """
    for key in ("image_id", "boxes", "scores", "labels"):
        if key not in det:
            raise DatasetError(f"detections: missing key {key!r} in {sorted(det)}")
    image_id = int(to_numpy(det["image_id"]))
    where = f"detections for image id {image_id}"
    boxes = to_numpy(det["boxes"]).astype(np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DatasetError(f"{where}: 'boxes' must have shape [N, 4], got {boxes.shape}")
    scores = to_numpy(det["scores"]).astype(np.float64).reshape(-1)
    labels = to_numpy(det["labels"]).astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise DatasetError(
            f"{where}: boxes/scores/labels lengths differ: {len(boxes)}/{len(scores)}/{len(labels)}"
        )
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DatasetError(
            f"{where}: label {int(labels[bad][0])} is outside the contiguous range "
            f"0..{num_classes - 1}"
        )
    return {"image_id": image_id, "boxes": boxes, "scores": scores, "labels": labels}


def detections_to_coco_results(
    detections: Sequence[Dict[str, Any]], category_ids: Sequence[int]
) -> List[Dict[str, Any]]:
    """resdet detections → a COCO results list (what ``loadRes`` and the COCO server take).

    Args:
        detections: per image ``{"image_id", "boxes" [N, 4] xyxy pixels, "scores" [N],
            "labels" [N] in 0..K-1}`` (numpy or torch).
        category_ids: dataset category id per contiguous label (``DatasetMeta.category_ids``).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``, rounded to
        1e-3 pixels / 1e-5 score to keep the json small.
    """
    results: List[Dict[str, Any]] = []
    for det in detections:
        d = check_detections(det, len(category_ids))
        xywh = d["boxes"].copy()
        xywh[:, 2:] -= xywh[:, :2]
        for box, score, label in zip(xywh.tolist(), d["scores"].tolist(), d["labels"].tolist()):
            results.append(
                {
                    "image_id": d["image_id"],
                    "category_id": int(category_ids[label]),
                    "bbox": [round(v, 3) for v in box],
                    "score": round(score, 5),
                }
            )
    return results


def _nan_if_undefined(x: float) -> float:
    # pycocotools marks "no ground truth" with -1.
    return float("nan") if x < 0 else float(x)


def json_safe(obj: Any) -> Any:
    """Copy of nested dicts/lists with float nan → None, so files are strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _percent(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.2f}"


def format_coco_metrics(metrics: Dict[str, Any]) -> str:
    """Markdown tables (in percent) of the summary APs and of the per-class APs."""
    head = "| " + " | ".join(_STAT_NAMES) + " |"
    lines = [
        "COCO bbox AP (%)",
        "",
        head,
        "|" + "---|" * len(_STAT_NAMES),
        "| " + " | ".join(_percent(metrics[k]) for k in _STAT_NAMES) + " |",
    ]
    return "\n".join(lines) + "\n\n" + format_per_class(metrics.get("per_class", {}))


def format_per_class(per_class: Dict[str, float]) -> str:
    """One markdown row per class: ``| class | AP (%) |``."""
    lines = ["| class | AP (%) |", "|---|---|"]
    lines += [f"| {name} | {_percent(ap)} |" for name, ap in per_class.items()]
    return "\n".join(lines) + "\n"


def evaluate_bbox(
    coco_gt: COCO, results: List[Dict[str, Any]], img_ids: Sequence[int] | None = None
) -> COCOeval:
    """pycocotools' bbox ``COCOeval`` with ``evaluate()`` and ``accumulate()`` done.

    Default parameters (IoU 0.50:0.05:0.95, areas all/small/medium/large, 1/10/100
    detections); ``img_ids`` restricts the images (default: every gt image). Its ``eval`` and
    ``evalImgs`` are what :func:`run_coco_eval` and the evaluation report read.

    Raises:
        DatasetError: a result (or an entry of ``img_ids``) refers to an image id that is not
            in the ground truth.
    """
    unknown = sorted(set(img_ids or ()) - set(coco_gt.getImgIds()))
    if unknown:
        raise DatasetError(
            f"processed images refer to {len(unknown)} image ids absent from the ground "
            f"truth, e.g. {unknown[:5]}; were they made on a different dataset split?"
        )
    coco_dt = load_coco_results(coco_gt, results)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if img_ids is not None:
            coco_eval.params.imgIds = sorted(set(int(i) for i in img_ids))
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def run_coco_eval(
    coco_gt: COCO,
    results: List[Dict[str, Any]],
    img_ids: Sequence[int] | None = None,
    class_names: Dict[int, str] | None = None,
    output_dir: str | None = None,
) -> Dict[str, Any]:
    """Run pycocotools COCOeval (bbox) and collect the metrics.

    Args:
        coco_gt: indexed ground truth.
        results: COCO results list (``xywh``, category ids); may be empty.
        img_ids: restrict evaluation to these images (default: every gt image).
        class_names: category id → name for the per-class table (default: the gt's names).
        output_dir: if given, ``coco_metrics.json`` and ``coco_per_class.md`` are written there.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as fractions in [0, 1] (``nan`` when no
        gt falls in the category/area range) and ``"per_class": {name: AP}``, AP averaged over
        IoU 0.50:0.95, area "all", 100 detections, as detectron2 computes it.

    Raises:
        DatasetError: a result (or an entry of ``img_ids``) refers to an image id that is not
            in the ground truth.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_eval = evaluate_bbox(coco_gt, results, img_ids)
        coco_eval.summarize()
    logger.info("pycocotools output:\n%s", out.getvalue().rstrip())

    metrics: Dict[str, Any] = {
        name: _nan_if_undefined(coco_eval.stats[i]) for i, name in enumerate(_STAT_NAMES)
    }
    names = class_names or {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    # precision: [T IoUs, R recall thresholds, K categories, A area ranges, M max dets];
    # K follows params.catIds, so index by category id rather than assume an order.
    precision = coco_eval.eval["precision"]
    cat_index = {cid: k for k, cid in enumerate(coco_eval.params.catIds)}
    per_class: Dict[str, float] = {}
    for cid, name in names.items():
        if cid not in cat_index:
            per_class[name] = float("nan")
            continue
        p = precision[:, :, cat_index[cid], 0, -1]
        p = p[p > -1]
        per_class[name] = float(np.mean(p)) if p.size else float("nan")
    metrics["per_class"] = per_class
    logger.info("\n%s", format_coco_metrics(metrics))

    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "coco_metrics.json"), "w", encoding="utf-8") as f:
            json.dump(json_safe(metrics), f, indent=2)
        with open(os.path.join(output_dir, "coco_per_class.md"), "w", encoding="utf-8") as f:
            f.write(format_coco_metrics(metrics))
    return metrics


class COCOEvaluator(PerImageEvaluator[List[Dict[str, Any]]]):
    """Accumulate detections over a dataset, then score them with pycocotools.

    Ground truth: ``meta.json_file`` when it exists (the exact annotations COCO scores are
    defined on, crowd regions included), otherwise :func:`records_to_coco_gt`. Only images
    passed to :meth:`process` are evaluated (so a subset can be scored); if nothing was
    processed every image counts, with no detections.

    In a distributed run every rank calls :meth:`process` on its shard; :meth:`evaluate`
    gathers to rank 0, which evaluates and writes files; other ranks get ``{}``. Each processed
    image keeps its COCO results list.
    """

    def process(self, detections: List[Dict[str, Any]]) -> None:
        """Add a batch of per-image detection dicts (see :func:`detections_to_coco_results`)."""
        assert self.meta.category_ids is not None
        for det in detections:
            results = detections_to_coco_results([det], self.meta.category_ids)
            self._per_image.append((int(to_numpy(det["image_id"])), results))

    def _load_gt(self) -> COCO:
        return load_coco_gt(self.records, self.meta)

    def evaluate(self) -> Dict[str, Any]:
        """Score everything processed so far; see :func:`run_coco_eval` for the returned dict.

        Writes ``coco_results.json`` (the COCO results list), ``coco_metrics.json`` and
        ``coco_per_class.md`` into ``output_dir`` when it is set.
        """
        by_image = self._gather()
        if by_image is None:
            return {}
        results = [r for part in by_image.values() for r in part]
        img_ids = sorted(by_image)
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, "coco_results.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(results, f)
            logger.info("wrote %d detections to %s", len(results), path)
        coco_gt = self._load_gt()
        self._log_coverage(len(img_ids))
        if not img_ids:
            img_ids = sorted(coco_gt.getImgIds())
        assert self.meta.category_ids is not None
        class_names = dict(zip(self.meta.category_ids, self.meta.class_names))
        return run_coco_eval(coco_gt, results, img_ids, class_names, self.output_dir)


def evaluate_coco_files(
    gt_json: str,
    dt_json: str,
    output_dir: str | None = None,
    allow_unknown_categories: bool = False,
) -> Dict[str, Any]:
    """Score a COCO results json against a COCO gt json (see :func:`run_coco_eval`).

    Every gt image is evaluated, including those without detections. Every result is
    validated first (:func:`resdet.evaluation.results_check.check_coco_results`); with
    ``allow_unknown_categories`` results of categories absent from the gt are dropped with a
    warning instead of failing.

    Raises:
        DatasetError: a missing or malformed file; ``ResultsError`` (a ``DatasetError``) for
            results with wrong types, non-finite numbers, or unknown image / category ids.
    """
    coco_gt = read_coco_gt(gt_json)
    results = read_coco_results(dt_json, coco_gt, allow_unknown_categories)
    return run_coco_eval(coco_gt, results, None, None, output_dir)
