"""COCO-format json → detection records.

The COCO boundary: this is the one place where ``xywh`` boxes and sparse category ids exist.
Boxes leave here as absolute ``xyxy`` float pixels and labels as contiguous ``0..K-1``
(categories sorted by id); :class:`DatasetMeta.category_ids` keeps the label → id map so the
evaluator can map detections back.

Validation is strict by default (``on_error="raise"``): a bad annotation is a
:class:`DatasetError` naming the json file, the annotation/image id and the problem. With
``on_error="skip"`` the bad annotation (or image) is dropped instead, and every dropped item is
listed in one warning, never silently. Note that the official ``instances_train2017.json``
holds two annotations with zero height (ids 918 and 2206849, cocodataset/cocoapi#355), so the
catalog loads the standard COCO splits with ``on_error="skip"``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from pycocotools.coco import COCO

from resdet.data.box_bounds import ClippedBoxes
from resdet.data.problems import ProblemLog, collect_problems, note_problem  # noqa: F401 (re-exported)
from resdet.data.records import DatasetError, DatasetMeta, DetectionRecord

logger = logging.getLogger(__name__)


def _read_json(json_file: str) -> Dict[str, Any]:
    if not os.path.isfile(json_file):
        raise DatasetError(
            f"{json_file}: COCO annotation file not found (see datasets/README.md for the layout)"
        )
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_file}: not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{json_file}: not a UTF-8 text file: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{json_file}: top level must be a JSON object, got {type(data)}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{json_file}: missing top-level key {key!r}")
        if not isinstance(data[key], list):
            raise DatasetError(f"{json_file}: {key!r} must be a list, got {type(data[key])}")
    return data


def _build_coco(data: Dict[str, Any]) -> COCO:
    """Index an already parsed json with pycocotools (which prints; keep library output quiet)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def _categories(json_file: str, cats: Sequence[Dict[str, Any]]) -> Tuple[List[int], List[str]]:
    ids: List[int] = []
    names: Dict[int, str] = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DatasetError(f"{json_file}: categories[{i}] needs 'id' and 'name': {cat!r}")
        if not isinstance(cat["id"], int) or isinstance(cat["id"], bool):
            raise DatasetError(f"{json_file}: categories[{i}]: id must be an integer: {cat!r}")
        if cat["id"] in names:
            raise DatasetError(f"{json_file}: categories[{i}]: duplicate category id {cat['id']}")
        ids.append(cat["id"])
        names[cat["id"]] = str(cat["name"])
    if not ids:
        raise DatasetError(f"{json_file}: 'categories' is empty")
    ids.sort()
    return ids, [names[i] for i in ids]


def read_coco_categories(json_file: str) -> Tuple[List[int], List[str]]:
    """``(category ids, class names)`` of a COCO json, sorted by id (the label order
    :func:`load_coco_json` uses), without indexing its images and annotations."""
    return _categories(json_file, _read_json(json_file)["categories"])


def _image_problem(img: Dict[str, Any]) -> str:
    """Why an image entry is unusable, or "" when it is fine."""
    for key in ("id", "file_name", "height", "width"):
        if key not in img:
            return f"missing key {key!r}"
    try:
        h, w = int(img["height"]), int(img["width"])
    except (TypeError, ValueError):
        return f"height/width must be integers, got {img['height']!r}/{img['width']!r}"
    if h <= 0 or w <= 0:
        return f"non-positive size height={h} width={w}"
    return ""


def _convert_box(
    ann: Dict[str, Any], width: int, height: int, cat_to_label: Dict[int, int]
) -> Tuple[np.ndarray, int, str]:
    """COCO ``[x, y, w, h]`` → clipped ``xyxy``; returns (box, label, problem or "")."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return np.zeros(4, np.float32), -1, f"'bbox' must be [x, y, w, h], got {bbox!r}"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return np.zeros(4, np.float32), -1, f"'bbox' has non-numeric values {bbox!r}"
    if not np.isfinite([x, y, w, h]).all():
        return np.zeros(4, np.float32), -1, f"'bbox' has non-finite values {bbox!r}"
    if ann.get("category_id") not in cat_to_label:
        return np.zeros(4, np.float32), -1, f"unknown category_id {ann.get('category_id')!r}"
    if w <= 0 or h <= 0:
        return np.zeros(4, np.float32), -1, f"box with zero/negative size bbox={bbox!r}"
    box = np.array([x, y, x + w, y + h], np.float64)
    clipped = box.copy()
    clipped[[0, 2]] = clipped[[0, 2]].clip(0, width)
    clipped[[1, 3]] = clipped[[1, 3]].clip(0, height)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return (
            np.zeros(4, np.float32),
            -1,
            f"box entirely outside the {width}x{height} image, bbox={bbox!r}",
        )
    return clipped.astype(np.float32), cat_to_label[ann["category_id"]], ""


def load_coco_json(
    json_file: str, image_root: str, name: str = "", on_error: str = "raise"
) -> Tuple[List[DetectionRecord], DatasetMeta]:
    """Load a COCO instances json into records.

    Args:
        json_file: path of the COCO json (``images``, ``annotations``, ``categories``).
        image_root: directory the images' ``file_name`` entries are relative to.
        name: dataset name stored in the meta (defaults to the json file's stem).
        on_error: ``"raise"`` (default) raises :class:`DatasetError` on the first bad
            annotation or image; ``"skip"`` drops it and logs one warning listing all of them.

    Returns:
        ``(records, meta)``: one :class:`DetectionRecord` per image, in increasing image id.
        ``boxes`` are ``float32[N, 4]`` absolute xyxy pixels (``x2 = x + w``, no ``-1``),
        clipped to the image; ``labels`` index the categories sorted by id; ``iscrowd`` is kept
        (crowd regions stay in the record with the flag set). Images without annotations are
        kept with empty boxes; use :func:`filter_empty` for training.
        ``meta.category_ids[label]`` is the json category id; ``meta.evaluator == "coco"``.

    Raises:
        DatasetError: missing file, invalid JSON, missing top-level keys, or (in "raise" mode)
            an annotation with a zero/negative-size box, a box entirely outside its image, an
            unknown category id or an unknown image id; an image entry without size/file name.
    """
    problems = ProblemLog(json_file, on_error)
    data = _read_json(json_file)
    cat_ids, class_names = _categories(json_file, data["categories"])
    cat_to_label = {cid: i for i, cid in enumerate(cat_ids)}

    images: Dict[Any, Dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            problems.report(f"images[{i}]", f"must be an object, got {img!r}")
            continue
        where = f"image id {img.get('id')!r} (images[{i}])"
        problem = _image_problem(img)
        if not problem and img["id"] in images:
            problem = "duplicate image id"
        if problem:
            problems.report(where, problem)
            continue
        images[img["id"]] = img
    # Only well-formed images and annotations reach pycocotools, whose index would otherwise
    # silently overwrite duplicates and drop annotations of unknown images.
    good_anns = []
    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann:
            problems.report(f"annotations[{i}]", f"needs 'id' and 'image_id', got {ann!r}")
            continue
        where = f"annotation id {ann['id']!r} (image id {ann['image_id']!r})"
        if ann["id"] in ann_ids:
            problems.report(where, "duplicate annotation id")
            continue
        if ann["image_id"] not in images:
            # Either the image entry does not exist or it was skipped above.
            problems.report(where, "image id not found among the valid 'images' entries")
            continue
        ann_ids.add(ann["id"])
        good_anns.append(ann)

    coco = _build_coco(
        {
            "images": list(images.values()),
            "annotations": good_anns,
            "categories": data["categories"],
        }
    )

    records: List[DetectionRecord] = []
    clipped = ClippedBoxes(json_file)
    for img_id in sorted(coco.getImgIds()):
        img = coco.imgs[img_id]
        height, width = int(img["height"]), int(img["width"])
        boxes, labels, crowd = [], [], []
        for ann in coco.imgToAnns.get(img_id, []):
            where = f"annotation id {ann['id']!r} (image id {img_id!r})"
            box, label, problem = _convert_box(ann, width, height, cat_to_label)
            if problem:
                problems.report(where, problem)
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            clipped.add(
                json_file, where, [x, y, x + w, y + h], width, height, f"bbox={ann['bbox']}"
            )
            boxes.append(box)
            labels.append(label)
            crowd.append(bool(ann.get("iscrowd", 0)))
        records.append(
            DetectionRecord(
                file_name=os.path.join(image_root, img["file_name"]),
                image_id=int(img_id),
                height=height,
                width=width,
                boxes=np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
                labels=np.array(labels, np.int64),
                iscrowd=np.array(crowd, bool),
            )
        )
    problems.log("images/annotations")
    clipped.log()
    meta = DatasetMeta(
        name=name or os.path.splitext(os.path.basename(json_file))[0],
        class_names=class_names,
        category_ids=cat_ids,
        evaluator="coco",
        json_file=json_file,
    )
    logger.info(
        "%s: %d images, %d annotations, %d classes",
        json_file,
        len(records),
        sum(len(r.boxes) for r in records),
        len(class_names),
    )
    return records, meta


def filter_empty(records: Sequence[DetectionRecord]) -> List[DetectionRecord]:
    """Drop images that have no non-crowd box (they give the detector nothing to learn from).

    Returns a new list; logs how many images were dropped.
    """
    kept = [r for r in records if int((~r.iscrowd).sum()) > 0]
    dropped = len(records) - len(kept)
    if dropped:
        logger.info(
            "filter_empty: dropped %d of %d images without non-crowd boxes", dropped, len(records)
        )
    return kept
