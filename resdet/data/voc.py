"""PASCAL VOC (``VOCdevkit/VOC{year}``) xml annotations → detection records.

Coordinates: VOC stores 1-based, inclusive pixel indices (``xmin=1`` is the first column and
``xmax=W`` the last). resdet boxes are continuous 0-based ``xyxy`` where a box covering the whole
image is ``[0, 0, W, H]``, so ``(xmin, ymin, xmax, ymax) → (xmin - 1, ymin - 1, xmax, ymax)``.
This is the conversion detectron2 uses (``detectron2/data/datasets/pascal_voc.py``).

``difficult`` objects are kept with their flag: the VOC devkit ignores them in evaluation, and
:class:`~resdet.data.det_dataset.DetectionDataset` drops them from training targets by default.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Sequence, Tuple

import numpy as np

from resdet.data.box_bounds import ClippedBoxes
from resdet.data.image_io import IMAGE_EXTENSIONS
from resdet.data.problems import ProblemLog, note_problem
from resdet.data.records import DatasetError, DatasetMeta, DetectionRecord

logger = logging.getLogger(__name__)

# The standard order (as in the devkit and detectron2); the index is the contiguous label.
VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


class _FieldError(Exception):
    """A missing or non-numeric xml field; the caller adds the file name."""


def _text(node: ET.Element, path: str) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise _FieldError(f"missing <{path}>")
    return found.text.strip()


def _number(node: ET.Element, path: str) -> float:
    text = _text(node, path)
    try:
        value = float(text)
    except ValueError as e:
        raise _FieldError(f"<{path}> is not a number: {text!r}") from e
    if not math.isfinite(value):
        raise _FieldError(f"<{path}> is not a finite number: {text!r}")
    return value


def _image_file(
    images_dir: str, file_id: str, xml_root: ET.Element, listings: Dict[str, Dict[str, str]]
) -> str:
    """``JPEGImages/<id>.jpg`` as PASCAL VOC has it; in VOC-style folders of other images
    (LabelImg and CVAT write PNGs there too) ``<id>`` with another image extension (any case),
    else the file the xml's ``<filename>`` names in the id's folder, whichever exists first (the
    .jpg path when none does, so the error names the file VOC expects). ``listings`` caches
    each folder's names (lower case -> as on disk), read only when the .jpg is missing."""
    default = os.path.join(images_dir, f"{file_id}.jpg")
    if os.path.isfile(default):
        return default
    folder = os.path.dirname(default)
    if folder not in listings:
        try:
            listings[folder] = {n.lower(): n for n in os.listdir(folder)}
        except OSError:
            listings[folder] = {}
    names = listings[folder]
    stem = os.path.basename(file_id)
    named = os.path.basename((xml_root.findtext("filename") or "").strip())
    for candidate in [stem + ext for ext in IMAGE_EXTENSIONS] + ([named] if named else []):
        found = names.get(candidate.lower())
        if found is not None and os.path.isfile(os.path.join(folder, found)):
            return os.path.join(folder, found)
    return default


def _parse_xml(
    xml_file: str,
    class_to_label: dict,
    image_id: int,
    images_dir: str,
    file_id: str,
    problems: ProblemLog,
    listings: Dict[str, Dict[str, str]],
    clipped: ClippedBoxes | None = None,
) -> DetectionRecord:
    """One annotation file → record. File-level problems raise; object-level ones go to
    ``problems`` (raised or skipped by the caller's policy)."""
    if not os.path.isfile(xml_file):
        raise DatasetError(f"{xml_file}: annotation file not found")
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{xml_file}: malformed xml: {e}") from e
    try:
        width = int(_number(root, "size/width"))
        height = int(_number(root, "size/height"))
    except _FieldError as e:
        raise DatasetError(f"{xml_file}: {e}") from e
    if width <= 0 or height <= 0:
        raise DatasetError(f"{xml_file}: non-positive image size {width}x{height}")

    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        where = f"object {k}"
        try:
            cls = _text(obj, "name")
            coords = [_number(obj, f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")]
        except _FieldError as e:
            problems.report(where, str(e))
            continue
        if cls not in class_to_label:
            problems.report(where, f"unknown class name {cls!r}")
            continue
        x1, y1, x2, y2 = coords[0] - 1.0, coords[1] - 1.0, coords[2], coords[3]
        if x2 <= x1 or y2 <= y1:
            problems.report(where, f"bad box (xmin, ymin, xmax, ymax)={tuple(coords)}")
            continue
        # A box spilling past the border is clipped (annotators sometimes write xmin=0 or
        # xmax=W+1; farther out it is named by `clipped`); one entirely outside is an error.
        cx1, cx2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        cy1, cy2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if cx2 <= cx1 or cy2 <= cy1:
            problems.report(
                where,
                f"box (xmin, ymin, xmax, ymax)={tuple(coords)} entirely outside the "
                f"{width}x{height} image",
            )
            continue
        if clipped is not None:
            clipped.add(xml_file, where, (x1, y1, x2, y2), width, height, f"bndbox={coords}")
        x1, y1, x2, y2 = cx1, cy1, cx2, cy2
        diff = obj.find("difficult")
        boxes.append([x1, y1, x2, y2])
        labels.append(class_to_label[cls])
        difficult.append(diff is not None and (diff.text or "0").strip() == "1")
    return DetectionRecord(
        file_name=_image_file(images_dir, file_id, root, listings),
        image_id=image_id,
        height=height,
        width=width,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int64),
        difficult=np.array(difficult, bool),
    )


def load_voc(
    root: str,
    year: str,
    split: str,
    name: str = "",
    on_error: str = "raise",
    class_names: Sequence[str] | None = None,
) -> Tuple[List[DetectionRecord], DatasetMeta]:
    """Load a VOC-style split.

    Args:
        root: the ``VOC{year}`` directory holding ``ImageSets/Main/{split}.txt``,
            ``Annotations/{id}.xml`` and ``JPEGImages/{id}.jpg`` (or the image the xml's
            ``<filename>`` names, or ``{id}`` with another image extension: :func:`_image_file`).
        year: ``"2007"`` or ``"2012"``; only used for the default name.
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"test"``.
        name: dataset name for the meta (default ``voc_{year}_{split}``).
        on_error: ``"raise"`` (default) or ``"skip"``. In skip mode a bad object is dropped and
            an unreadable xml drops its image; everything dropped is listed in one warning.
        class_names: override :data:`VOC_CLASSES` (for VOC-format datasets with other classes).

    Returns:
        ``(records, meta)`` in split-file order; ``image_id`` is the index in the split.
        ``boxes`` are ``float32[N, 4]`` 0-based xyxy (see the module docstring); ``difficult``
        is kept; ``meta.evaluator == "voc"``.

    Raises:
        DatasetError: missing split file; (in "raise" mode) missing or malformed xml, unknown
            class name, an empty/inverted box or one entirely outside the image (boxes that
            only spill over the border are clipped). Messages name the file.
    """
    names = list(class_names) if class_names is not None else list(VOC_CLASSES)
    class_to_label = {c: i for i, c in enumerate(names)}
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise DatasetError(
            f"{split_file}: VOC split file not found (see datasets/README.md for the layout)"
        )
    with open(split_file, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]

    skipped_images: List[str] = []
    records: List[DetectionRecord] = []
    clipped = ClippedBoxes(split_file)
    listings: Dict[str, Dict[str, str]] = {}  # image folder -> its names, read when needed
    for index, file_id in enumerate(ids):
        xml_file = os.path.join(root, "Annotations", f"{file_id}.xml")
        problems = ProblemLog(xml_file, on_error)
        try:
            record = _parse_xml(
                xml_file,
                class_to_label,
                image_id=index,
                images_dir=os.path.join(root, "JPEGImages"),
                file_id=file_id,
                problems=problems,
                listings=listings,
                clipped=clipped,
            )
        except DatasetError as e:
            if on_error == "raise":
                raise
            skipped_images.append(str(e))
            note_problem(xml_file, str(e).removeprefix(f"{xml_file}: "))
            continue
        problems.log("objects")
        records.append(record)
    clipped.log()
    if skipped_images:
        logger.warning(
            "%s: skipped %d images with unusable annotations (on_error='skip'):\n  %s",
            split_file,
            len(skipped_images),
            "\n  ".join(skipped_images),
        )
    meta = DatasetMeta(
        name=name or f"voc_{year}_{split}",
        class_names=names,
        category_ids=list(range(1, len(names) + 1)),
        evaluator="voc",
    )
    logger.info(
        "%s: %d images, %d objects", split_file, len(records), sum(len(r.boxes) for r in records)
    )
    return records, meta
