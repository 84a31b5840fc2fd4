"""The record: resdet's one in-memory description of an annotated image.

A detection dataset is a list of records plus its class names. Every loader (COCO json,
VOC xml, the embedded shapes scenes) produces the same thing, so transforms, the data
loader and the evaluators never need to know where the data came from.

Conventions (see DESIGN.md):
- ``boxes`` are absolute ``xyxy`` float pixels in the original image, ``float32[N, 4]``.
- ``labels`` are contiguous ``0..K-1`` (``int64[N]``); dataset ids are mapped at the loader.
- ``iscrowd`` (``bool[N]``) marks COCO crowd regions: ignored in training matching and
  evaluated as "ignore" by pycocotools.
- ``difficult`` (``bool[N]``) marks VOC difficult objects: kept for evaluation, where the
  devkit ignores them; training drops them by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np


@dataclass
class DetectionRecord:
    """One annotated image.

    Attributes:
        file_name: absolute (or cwd-relative) path of the image file.
        image_id: the dataset's own image id (COCO ``id``; VOC: index in the split).
        height, width: size of the image as stored on disk (after EXIF rotation).
        boxes: ``float32[N, 4]`` absolute xyxy pixels.
        labels: ``int64[N]`` contiguous class indices in ``0..K-1``.
        iscrowd: ``bool[N]``.
        difficult: ``bool[N]``.
    """

    file_name: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(n)
        self.iscrowd = (
            np.zeros(n, bool) if len(self.iscrowd) == 0 else np.asarray(self.iscrowd, bool)
        ).reshape(n)
        self.difficult = (
            np.zeros(n, bool) if len(self.difficult) == 0 else np.asarray(self.difficult, bool)
        ).reshape(n)


@dataclass
class DatasetMeta:
    """What a dataset says about its classes and how to evaluate it.

    Attributes:
        name: catalog name, e.g. ``"coco_2017_val"`` or ``"voc_2007_test"``.
        class_names: ``K`` names, index = contiguous label.
        category_ids: dataset category id per contiguous label (COCO json ids); used by the
            COCO evaluator to map labels back. ``None`` means ``1..K``.
        evaluator: ``"coco"`` or ``"voc"``.
        json_file: the COCO json the records came from, if any (evaluation reuses it).
    """

    name: str
    class_names: List[str]
    category_ids: Optional[List[int]] = None
    evaluator: str = "coco"
    json_file: Optional[str] = None

    def __post_init__(self) -> None:
        if self.category_ids is None:
            self.category_ids = list(range(1, len(self.class_names) + 1))


class DatasetError(ValueError):
    """Bad input data: the message names the file (and index or key) and what is wrong."""
