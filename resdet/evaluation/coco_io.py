"""The COCO boundary on the way in: ground truth and results files read, checked and indexed.

Ground truth comes from a COCO json (``read_coco_gt``) or from resdet records
(``records_to_coco_gt``: absolute ``xyxy`` boxes and contiguous labels become ``xywh`` and the
dataset's category ids); a results json is validated entry by entry against the ground truth
(``read_coco_results``) before pycocotools sees it. ``resdet.evaluation.coco`` scores them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from typing import Any, Dict, List, Sequence

from pycocotools.coco import COCO

from resdet.data.records import DatasetError, DatasetMeta, DetectionRecord
from resdet.evaluation.results_check import check_coco_results

__all__ = [
    "load_coco_gt",
    "load_coco_results",
    "read_coco_gt",
    "read_coco_results",
    "records_to_coco_gt",
]


def records_to_coco_gt(records: Sequence[DetectionRecord], meta: DatasetMeta) -> Dict[str, Any]:
    """Build a COCO-format ground-truth dict from records (for data that has no COCO json).

    ``bbox`` is ``xywh`` from the records' xyxy boxes and ``area`` is the box area (COCO uses
    the mask area; there is no mask here). VOC ``difficult`` objects become ``iscrowd=1``:
    pycocotools' only "ignore" mechanism, so a detection on a difficult object is neither a
    true nor a false positive, as in the VOC devkit. (pycocotools matches crowd regions by
    intersection over *detection* area and lets several detections share one, which is more
    lenient than the devkit's IoU > 0.5 rule.)
    """
    assert meta.category_ids is not None  # filled in by DatasetMeta.__post_init__
    images, annotations = [], []
    for rec in records:
        images.append(
            {
                "id": int(rec.image_id),
                "file_name": os.path.basename(rec.file_name),
                "height": int(rec.height),
                "width": int(rec.width),
            }
        )
        ignore = rec.iscrowd | rec.difficult
        for box, label, crowd in zip(rec.boxes.tolist(), rec.labels.tolist(), ignore.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(rec.image_id),
                    "category_id": int(meta.category_ids[label]),
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
    categories = [
        {"id": int(cid), "name": name} for cid, name in zip(meta.category_ids, meta.class_names)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _read_json(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: {what} file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: {what} file is not valid JSON: {e}") from e


def _coco_from_dict(data: Dict[str, Any], source: str) -> COCO:
    """Index a gt dict with pycocotools, quietly, filling fields COCOeval needs but some
    hand-made jsons omit (``iscrowd``, ``area``)."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{source}: ground truth needs a list under {key!r}")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DatasetError(f"{source}: annotations[{i}] must be an object, got {ann!r}")
        if not isinstance(ann.get("bbox"), (list, tuple)) or len(ann["bbox"]) != 4:
            raise DatasetError(f"{source}: annotations[{i}]: 'bbox' must be [x, y, w, h]")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def load_coco_gt(records: Sequence[DetectionRecord], meta: DatasetMeta) -> COCO:
    """The ground truth a dataset is scored on: ``meta.json_file`` when it exists (crowd
    regions included), otherwise :func:`records_to_coco_gt`."""
    if meta.json_file and os.path.isfile(meta.json_file):
        return read_coco_gt(meta.json_file)
    return _coco_from_dict(records_to_coco_gt(records, meta), meta.name)


def load_coco_results(coco_gt: COCO, results: List[Dict[str, Any]]) -> COCO:
    """Index a COCO results list against ``coco_gt`` (``loadRes``), quietly; may be empty.

    Raises:
        DatasetError: a result refers to an image id that is not in the ground truth.
    """
    unknown = sorted({r["image_id"] for r in results} - set(coco_gt.getImgIds()))
    if unknown:
        raise DatasetError(
            f"detections refer to {len(unknown)} image ids absent from the ground truth, "
            f"e.g. {unknown[:5]}; were they made on a different dataset split?"
        )
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            # loadRes adds fields to the dicts it gets; keep the caller's list untouched.
            return coco_gt.loadRes(copy.deepcopy(results))
        # loadRes crashes on an empty list (it reads anns[0]); an empty result set with the
        # gt's images evaluates to AP 0 for every category that has ground truth.
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "categories": copy.deepcopy(coco_gt.dataset["categories"]),
            "annotations": [],
        }
        coco_dt.createIndex()
    return coco_dt


def read_coco_gt(gt_json: str) -> COCO:
    """Read and index a COCO ground-truth json (``iscrowd`` and ``area`` filled in if absent).

    Raises:
        DatasetError: the file is missing, not JSON, or lacks images/annotations/categories.
    """
    return _coco_from_dict(_read_json(gt_json, "COCO gt"), gt_json)


def read_coco_results(
    dt_json: str, coco_gt: COCO, allow_unknown_categories: bool = False
) -> List[Dict[str, Any]]:
    """Read a COCO results json (a list of ``{"image_id", "category_id", "bbox", "score"}``)
    and validate every entry against ``coco_gt``'s image and category ids
    (:func:`resdet.evaluation.results_check.check_coco_results`: types, 4 finite numbers,
    finite score, known ids), so nothing malformed reaches pycocotools.

    Raises:
        DatasetError: the file is missing or not JSON; ``ResultsError`` (a ``DatasetError``)
            naming ``results[i]`` and the problem.
    """
    return check_coco_results(
        _read_json(dt_json, "COCO results"),
        dt_json,
        coco_gt.getImgIds(),
        coco_gt.getCatIds(),
        allow_unknown_categories,
    )
