"""What every part of an evaluation report starts from: ground truth, detections, and one
pycocotools evaluation of them, indexed per image and per class.

Everything the report counts as a true positive, a false positive or a missed object comes from
this one ``COCOeval`` (its ``evalImgs``: greedy matching by score, IoU >= threshold, crowd
regions ignored, at most 100 detections per image and class), so the report's curves and counts
are the AP's own. Only the confusion matrix and the error breakdown need overlaps *across*
classes, which COCOeval does not compute; they take them from ``torchvision.ops.box_iou``.

Conventions: boxes handed out here are absolute ``xyxy`` float pixels (COCO ``xywh`` is
converted on the way in); labels are contiguous ``0..K-1`` in the order of ``cat_ids`` (the
sorted category ids of the ground truth, as ``COCOeval.params.catIds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resdet.evaluation.coco import evaluate_bbox, read_coco_gt, read_coco_results

__all__ = ["Matching", "ReportData", "build_report_data", "load_report_data", "xywh_to_xyxy"]


def xywh_to_xyxy(boxes: Any) -> np.ndarray:
    """COCO ``[x, y, w, h]`` boxes (``[N, 4]``) as ``float64[N, 4]`` xyxy."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, 2:] += b[:, :2]
    return b


@dataclass
class Matching:
    """COCOeval's class-aware matching at one IoU threshold, area "all", 100 detections.

    Attributes:
        iou: the IoU threshold.
        dt_match: evaluated detection id -> matched gt annotation id (0: a false positive).
            Detections beyond the 100 best of their image and class are not evaluated by
            COCOeval and are absent.
        dt_ignored: detections matched to a crowd region: neither true nor false positives.
        gt_match: gt annotation id -> matching detection id (0: missed).
        gt_ignored: crowd (or otherwise ignored) gt annotations.
    """

    iou: float
    dt_match: Dict[int, int] = field(default_factory=dict)
    dt_ignored: Set[int] = field(default_factory=set)
    gt_match: Dict[int, int] = field(default_factory=dict)
    gt_ignored: Set[int] = field(default_factory=set)


@dataclass
class ReportData:
    """Ground truth, detections and their ``COCOeval`` (default bbox parameters: IoU
    0.50:0.05:0.95, areas all/small/medium/large, 1/10/100 detections; ``evaluate()`` and
    ``accumulate()`` done).

    Attributes:
        coco_gt, coco_dt: pycocotools indexes of the ground truth and of the detections.
        cocoeval: the evaluation (``eval["precision"]``: ``[T, R, K, A, M]``).
        results: the COCO results list the detections came from.
        cat_ids: category id per contiguous label ``0..K-1``.
        class_names: name per contiguous label.
    """

    coco_gt: COCO
    coco_dt: COCO
    cocoeval: COCOeval
    results: List[Dict[str, Any]]
    cat_ids: List[int]
    class_names: List[str]
    _matchings: Dict[float, Matching] = field(default_factory=dict, repr=False)
    _labels: Dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._labels = {c: k for k, c in enumerate(self.cat_ids)}

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def image_ids(self) -> List[int]:
        # COCOeval.evaluate() turns params.imgIds into numpy integers.
        return [int(i) for i in self.cocoeval.params.imgIds]

    def label(self, cat_id: int) -> int:
        """Contiguous label of a category id."""
        return self._labels[cat_id]

    def iou_index(self, iou: float) -> int:
        """Index of ``iou`` in ``params.iouThrs`` (the ``T`` axis of ``eval["precision"]``)."""
        hits = np.flatnonzero(np.isclose(self.cocoeval.params.iouThrs, iou))
        if not hits.size:
            raise ValueError(f"IoU {iou} is not one of COCOeval's {self.cocoeval.params.iouThrs}")
        return int(hits[0])

    def gt_arrays(self, img_id: int) -> Dict[str, np.ndarray]:
        """One image's gt: ``boxes`` float64[G, 4] xyxy, ``labels`` int64[G], ``crowd``
        bool[G], ``ids`` int64[G] (annotation ids), in annotation order."""
        anns = self.coco_gt.loadAnns(self.coco_gt.getAnnIds(imgIds=[img_id]))
        anns = [a for a in anns if a["category_id"] in self._labels]
        return {
            "boxes": xywh_to_xyxy([a["bbox"] for a in anns]),
            "labels": np.array([self.label(a["category_id"]) for a in anns], np.int64),
            "crowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], bool),
            "ids": np.array([a["id"] for a in anns], np.int64),
        }

    def dt_arrays(self, img_id: int) -> Dict[str, np.ndarray]:
        """One image's detections, by score high to low (a stable sort, as COCOeval's):
        ``boxes`` float64[D, 4] xyxy, ``scores`` float64[D], ``labels`` int64[D], ``ids``."""
        anns = self.coco_dt.loadAnns(self.coco_dt.getAnnIds(imgIds=[img_id]))
        anns = [a for a in anns if a["category_id"] in self._labels]
        scores = np.array([a["score"] for a in anns], np.float64)
        order = np.argsort(-scores, kind="mergesort")
        anns = [anns[i] for i in order]
        return {
            "boxes": xywh_to_xyxy([a["bbox"] for a in anns]),
            "scores": scores[order],
            "labels": np.array([self.label(a["category_id"]) for a in anns], np.int64),
            "ids": np.array([a["id"] for a in anns], np.int64),
        }

    def matching(self, iou: float = 0.5) -> Matching:
        """COCOeval's own matches at ``iou`` (read from ``evalImgs``, area "all")."""
        if iou in self._matchings:
            return self._matchings[iou]
        t = self.iou_index(iou)
        p = self.cocoeval.params
        n_area, n_img = len(p.areaRng), len(p.imgIds)
        out = Matching(iou)
        # evalImgs is laid out [K][A][I], flattened; area index 0 is "all".
        for k in range(len(p.catIds)):
            for i in range(n_img):
                e = self.cocoeval.evalImgs[k * n_area * n_img + i]
                if e is None:
                    continue
                for j, dt_id in enumerate(e["dtIds"]):
                    out.dt_match[int(dt_id)] = int(e["dtMatches"][t, j])
                    if e["dtIgnore"][t, j]:
                        out.dt_ignored.add(int(dt_id))
                for j, gt_id in enumerate(e["gtIds"]):
                    out.gt_match[int(gt_id)] = int(e["gtMatches"][t, j])
                    if e["gtIgnore"][j]:
                        out.gt_ignored.add(int(gt_id))
        self._matchings[iou] = out
        return out

    def score_of(self, dt_id: int) -> float:
        return float(self.coco_dt.anns[dt_id]["score"])

    def class_of_dt(self, dt_id: int) -> int:
        return self.label(self.coco_dt.anns[dt_id]["category_id"])

    def class_of_gt(self, gt_id: int) -> int:
        return self.label(self.coco_gt.anns[gt_id]["category_id"])

    def image_file(self, img_id: int) -> str:
        return str(self.coco_gt.imgs[img_id].get("file_name", ""))


def build_report_data(
    coco_gt: COCO,
    results: List[Dict[str, Any]],
    class_names: Optional[Sequence[str]] = None,
    img_ids: Optional[Sequence[int]] = None,
) -> ReportData:
    """Evaluate ``results`` against ``coco_gt`` once and index both for the report.

    Args:
        coco_gt: indexed ground truth.
        results: COCO results list (``xywh``, category ids, scores); may be empty.
        class_names: name per category of the gt in sorted-id order (default: the gt's own
            category names).
        img_ids: restrict the evaluation to these images (default: every gt image).

    Raises:
        DatasetError: results for images absent from the ground truth.
        ValueError: ``class_names`` of the wrong length.
    """
    cocoeval = evaluate_bbox(coco_gt, results, img_ids)
    cat_ids = [int(c) for c in cocoeval.params.catIds]
    if class_names is None:
        class_names = [str(coco_gt.cats[c].get("name", c)) for c in cat_ids]
    if len(class_names) != len(cat_ids):
        raise ValueError(f"{len(class_names)} class names for {len(cat_ids)} gt categories")
    return ReportData(coco_gt, cocoeval.cocoDt, cocoeval, list(results), cat_ids, list(class_names))


def load_report_data(gt_json: str, dt_json: str) -> ReportData:
    """:func:`build_report_data` from a COCO gt json and a COCO results json.

    Raises:
        DatasetError: a missing or malformed file (named, with the entry), or results for images
            absent from the ground truth.
    """
    coco_gt = read_coco_gt(gt_json)
    return build_report_data(coco_gt, read_coco_results(dt_json, coco_gt))


def per_class_counts(
    data: ReportData, iou: float = 0.5
) -> Tuple[List[np.ndarray], List[np.ndarray], np.ndarray]:
    """Per class, the evaluated non-ignored detections' scores (high to low, stable) and
    true-positive flags at ``iou``, and the number of non-ignored gt objects ``int64[K]``:
    exactly what ``COCOeval.accumulate`` sorts and sums before it interpolates."""
    m = data.matching(iou)
    scores: List[List[float]] = [[] for _ in range(data.num_classes)]
    tps: List[List[bool]] = [[] for _ in range(data.num_classes)]
    for dt_id, gt_id in m.dt_match.items():
        if dt_id in m.dt_ignored:
            continue
        k = data.class_of_dt(dt_id)
        scores[k].append(data.score_of(dt_id))
        tps[k].append(gt_id > 0)
    n_gt = np.zeros(data.num_classes, np.int64)
    for gt_id in m.gt_match:
        if gt_id not in m.gt_ignored:
            n_gt[data.class_of_gt(gt_id)] += 1
    out_scores, out_tps = [], []
    for s, t in zip(scores, tps):
        s_arr = np.asarray(s, np.float64)
        order = np.argsort(-s_arr, kind="mergesort")
        out_scores.append(s_arr[order])
        out_tps.append(np.asarray(t, bool)[order])
    return out_scores, out_tps, n_gt
