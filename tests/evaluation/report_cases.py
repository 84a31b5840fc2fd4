"""Generated detection sets for the evaluation-report tests (imported by them; the test
directory is on ``sys.path`` during the session).

The known set: five 100x100 images, three classes, nine objects (ids 1-9). The detections are
the objects' boxes with these errors built in (every other detection is an exact copy):

* image 2: object 3 (class a) detected as class c, same box            -> Cls
* image 3: object 5 (class b) detected 20 px to the right (IoU 1/3)     -> Loc
* image 3: object 6 (class a) detected twice, the copy scoring 0.60     -> Dupe
* image 4: object 7 (class c) not detected                              -> Miss
* image 5: a class-b detection on empty background                      -> Bkg
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any, Dict, List

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CLASSES = ["a", "b", "c"]
CAT_IDS = [1, 3, 7]  # sparse, as in COCO

# (image id, class index, xyxy) per object; object ids are 1-based list positions.
OBJECTS = [
    (1, 0, [10, 10, 50, 50]),
    (1, 1, [60, 60, 90, 90]),
    (2, 0, [10, 10, 50, 50]),  # 3: mislabelled as c
    (2, 2, [55, 55, 95, 95]),
    (3, 1, [10, 10, 50, 50]),  # 5: shifted
    (3, 0, [60, 60, 90, 90]),  # 6: duplicated
    (4, 2, [10, 10, 50, 50]),  # 7: missed
    (4, 1, [60, 60, 90, 90]),
    (5, 0, [20, 20, 60, 60]),
]
# (image id, class index, xyxy, score)
DETECTIONS = [
    (1, 0, [10, 10, 50, 50], 0.90),
    (1, 1, [60, 60, 90, 90], 0.80),
    (2, 2, [10, 10, 50, 50], 0.85),  # Cls: object 3 is class a
    (2, 2, [55, 55, 95, 95], 0.75),
    (3, 1, [30, 10, 70, 50], 0.70),  # Loc: IoU 800/2400 with object 5
    (3, 0, [60, 60, 90, 90], 0.95),
    (3, 0, [61, 61, 91, 91], 0.60),  # Dupe of object 6
    (4, 1, [60, 60, 90, 90], 0.65),
    (5, 0, [20, 20, 60, 60], 0.88),
    (5, 1, [70, 5, 95, 30], 0.82),  # Bkg
]


def xywh(box: List[float]) -> List[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


@dataclass
class KnownSet:
    gt_json: str
    dt_json: str
    image_root: str
    gt: Dict[str, Any]
    results: List[Dict[str, Any]]


def make_gt(objects=OBJECTS, num_images: int = 5, crowd=()) -> Dict[str, Any]:
    images = [
        {"id": i, "file_name": f"img{i}.png", "height": 100, "width": 100}
        for i in range(1, num_images + 1)
    ]
    anns = [
        {
            "id": n,
            "image_id": img,
            "category_id": CAT_IDS[c],
            "bbox": xywh(box),
            "area": (box[2] - box[0]) * (box[3] - box[1]),
            "iscrowd": int(n in crowd),
        }
        for n, (img, c, box) in enumerate(objects, start=1)
    ]
    cats = [{"id": i, "name": n} for i, n in zip(CAT_IDS, CLASSES)]
    return {"images": images, "annotations": anns, "categories": cats}


def make_results(detections=DETECTIONS) -> List[Dict[str, Any]]:
    return [
        {"image_id": img, "category_id": CAT_IDS[c], "bbox": xywh(box), "score": s}
        for img, c, box, s in detections
    ]


def write_known_set(tmp_path) -> KnownSet:
    """The known set as files under ``tmp_path``: gt json, results json, images."""
    gt, results = make_gt(), make_results()
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for img in gt["images"]:
        pixels = rng.integers(60, 200, (100, 100, 3), dtype=np.uint8)
        assert cv2.imwrite(str(root / img["file_name"]), pixels)
    gt_json, dt_json = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_json.write_text(json.dumps(gt))
    dt_json.write_text(json.dumps(results))
    return KnownSet(str(gt_json), str(dt_json), str(root), gt, results)


def random_set(seed: int, num_images: int = 30):
    """A seeded random gt (with some crowd regions) and noisy, partly mislabelled detections."""
    rng = np.random.default_rng(seed)
    objects, dets, crowd = [], [], set()
    for img in range(1, num_images + 1):
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(8, 40, 2)
            c = int(rng.integers(0, 3))
            objects.append((img, c, [x, y, x + w, y + h]))
            if rng.random() < 0.1:
                crowd.add(len(objects))
            for _ in range(int(rng.integers(0, 3))):  # 0-2 noisy detections per object
                d = rng.normal(0, 5, 4)
                label = c if rng.random() < 0.8 else int(rng.integers(0, 3))
                box = [x + d[0], y + d[1], x + w + d[2], y + h + d[3]]
                box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
                dets.append((img, label, box, float(rng.random())))
        for _ in range(int(rng.integers(0, 3))):  # background detections
            x, y = rng.uniform(0, 80, 2)
            dets.append((img, int(rng.integers(0, 3)), [x, y, x + 15, y + 15], float(rng.random())))
    return make_gt(objects, num_images, crowd), make_results(dets)


def coco_index(gt: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    return coco


def reference_cocoeval(gt: dict, results: list) -> COCOeval:
    """pycocotools directly, default bbox parameters (the reference)."""
    coco_gt = coco_index(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "bbox")
        e.evaluate()
        e.accumulate()
    return e


def reference_counts(gt: dict, results: list, thresh: float):
    """True positives, false positives and objects per class at IoU 0.5 (area all, 100
    detections) of COCOeval run on the detections scoring >= thresh."""
    kept = [r for r in results if r["score"] >= thresh]
    k = len(gt["categories"])
    tp, fp, n_gt = np.zeros(k, int), np.zeros(k, int), np.zeros(k, int)
    if not kept:
        return tp, fp, n_gt
    e = reference_cocoeval(gt, kept)
    n_img = len(e.params.imgIds)
    for c in range(k):
        for i in range(n_img):
            ev = e.evalImgs[c * len(e.params.areaRng) * n_img + i]
            if ev is None:
                continue
            valid = ~ev["dtIgnore"][0]
            tp[c] += int(((ev["dtMatches"][0] > 0) & valid).sum())
            fp[c] += int(((ev["dtMatches"][0] == 0) & valid).sum())
            n_gt[c] += int((~ev["gtIgnore"].astype(bool)).sum())
    return tp, fp, n_gt
