"""YOLO-format datasets (an Ultralytics ``data.yaml``, ``images/`` and ``labels/``) → records.

The layout most labelling tools export (Ultralytics' "detect" format)::

    my_data/
      data.yaml            path: .   train: images/train   val: images/val   names: [cat, dog]
      images/train/a.jpg   images/val/b.jpg ...
      labels/train/a.txt   labels/val/b.txt ...   one object a line: class cx cy w h

Conventions, as Ultralytics reads them (``ultralytics/data/utils.py``):

- ``path`` is the dataset root (relative: to the folder of ``data.yaml``; missing: that
  folder). ``train`` / ``val`` / ``test`` are relative to it; each is a folder of images
  (searched recursively), a ``.txt`` list of image paths (relative lines: to the list's
  folder), or a list of those. A ``../`` prefix that does not resolve is retried without it
  (Roboflow exports write ``train: ../train/images`` next to a ``data.yaml`` in the root).
- ``names`` is a list or a ``{index: name}`` mapping with indices ``0..K-1``; ``nc`` alone
  gives ``class_0 .. class_<nc-1>``.
- The label file of ``.../images/<sub>/a.jpg`` is ``.../labels/<sub>/a.txt`` (the last
  ``images`` folder of the path becomes ``labels``). An image without a label file, or with an
  empty one, is an image without objects.
- A line is ``class cx cy w h``, centre and size normalised to 0-1 by the image's width and
  height; a segmentation line ``class x1 y1 x2 y2 ...`` (3 or more points) counts as the box
  around its points, as Ultralytics' detect training does.

Boxes leave as absolute ``xyxy`` float pixels (``x1 = (cx - w / 2) * W``); coordinates at
most :data:`COORD_TOLERANCE` outside 0-1 (rounding in the exporter) are clipped to the image.
Image sizes come from the file header (PIL opens lazily, nothing is decoded), with an EXIF
rotation of 90 degrees swapping width and height, as :func:`~resdet.data.image_io.read_image`
returns the image upright.

Bad input is a :class:`DatasetError` naming the label file, the line and the problem (wrong
field count, a non-number, a class index out of range, coordinates outside 0-1, zero size);
with ``on_error="skip"`` the bad line (or an unreadable image) is dropped and listed, as the
COCO and VOC loaders do.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from resdet.data.image_io import IMAGE_EXTENSIONS
from resdet.data.problems import ProblemLog, note_problem
from resdet.data.records import DatasetError, DatasetMeta, DetectionRecord

logger = logging.getLogger(__name__)

# Image files are those of IMAGE_EXTENSIONS (what read_image decodes); Ultralytics' list adds
# formats opencv cannot read.

# How far (as a fraction of the image side) a coordinate may lie outside 0-1 and still be
# clipped rather than rejected: exporters round, and ``cx + w / 2`` can overshoot 1 slightly.
COORD_TOLERANCE = 0.01

SPLITS = ("train", "val", "test")

# EXIF orientations that rotate by 90 or 270 degrees (width and height swap when upright).
_ROTATED = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


@dataclass
class YoloData:
    """A parsed ``data.yaml``.

    Attributes:
        yaml_file: the ``data.yaml`` path.
        root: the dataset root (``path``), absolute.
        class_names: ``K`` names, index = class index in the label files = contiguous label.
        splits: split name → the folders / ``.txt`` lists it names, absolute (only the splits
            that ``data.yaml`` sets).
    """

    yaml_file: str
    root: str
    class_names: List[str]
    splits: Dict[str, List[str]]


def _class_names(yaml_file: str, data: Dict[str, Any]) -> List[str]:
    names = data.get("names")
    if names is None:
        nc = data.get("nc")
        if isinstance(nc, int) and not isinstance(nc, bool) and nc > 0:
            return [f"class_{i}" for i in range(nc)]
        raise DatasetError(f"{yaml_file}: no 'names' (a list of class names, or index: name)")
    if isinstance(names, dict):
        # YAML reads ``0: cat`` with int keys; quoted keys ("0": cat) are accepted too.
        by_index = {int(k) if str(k).isdigit() else k: v for k, v in names.items()}
        if set(by_index) != set(range(len(names))):
            raise DatasetError(
                f"{yaml_file}: 'names' keys must be the class indices 0..{len(names) - 1}, "
                f"got {sorted(names, key=str)}"
            )
        names = [by_index[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{yaml_file}: 'names' must be a non-empty list or mapping: {names!r}")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise DatasetError(f"{yaml_file}: 'nc' is {nc} but 'names' lists {len(names)} classes")
    return [str(n) for n in names]


def _resolve(root: str, entry: str) -> str:
    path = entry if os.path.isabs(entry) else os.path.normpath(os.path.join(root, entry))
    if not os.path.exists(path) and entry.startswith("../"):
        retry = os.path.normpath(os.path.join(root, entry[3:]))
        if os.path.exists(retry):
            return retry
    return path


def read_data_yaml(yaml_file: str) -> YoloData:
    """Parse an Ultralytics ``data.yaml`` (see the module docstring).

    Raises:
        DatasetError: missing or unparsable file, no class names, malformed split entries.
    """
    if not os.path.isfile(yaml_file):
        raise DatasetError(f"{yaml_file}: YOLO data.yaml not found")
    try:
        with open(yaml_file, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{yaml_file}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{yaml_file}: expected a mapping (path, train, val, names)")
    here = os.path.dirname(os.path.abspath(yaml_file))
    root = str(data.get("path") or here)
    root = root if os.path.isabs(root) else os.path.normpath(os.path.join(here, root))
    splits: Dict[str, List[str]] = {}
    for split in SPLITS:
        value = data.get(split)
        if value is None or value == "":
            continue
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(e, str) and e for e in entries):
            raise DatasetError(f"{yaml_file}: '{split}' must be a path or a list of paths")
        splits[split] = [_resolve(root, e) for e in entries]
    return YoloData(yaml_file, root, _class_names(yaml_file, data), splits)


def _images_in(source: str, problems: ProblemLog) -> List[str]:
    """Image paths of one split entry: a folder (recursively, sorted) or a ``.txt`` list."""
    if os.path.isdir(source):
        found = []
        for folder, _, files in os.walk(source, followlinks=True):
            found += [
                os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        return sorted(found)
    if os.path.isfile(source):
        here = os.path.dirname(source)
        paths = []
        with open(source, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                entry = line.strip()
                if not entry:
                    continue
                path = os.path.normpath(os.path.join(here, entry))  # an absolute entry stays
                if not os.path.isfile(path):
                    problems.report(f"line {number}", f"image file not found: {path}")
                    continue
                paths.append(path)
        return paths
    raise DatasetError(f"{source}: image folder or .txt list not found")


def label_path(image_path: str) -> str:
    """The label file of an image: the last ``images`` folder becomes ``labels``, ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = image_path.rpartition(sa)
    swapped = f"{head}{sb}{tail}" if sep else image_path
    return os.path.splitext(swapped)[0] + ".txt"


def image_size(path: str) -> Tuple[int, int]:
    """``(height, width)`` of an image as :func:`read_image` returns it (upright), read from
    the header only.

    Raises:
        DatasetError: missing file, or not an image PIL can identify.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot read the image header: {e}") from e
    if orientation in _ROTATED:
        width, height = height, width
    return height, width


def _numbers(fields: Sequence[str]) -> List[float]:
    values = []
    for text in fields:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {text!r}")
        values.append(value)
    return values


def parse_label_line(
    line: str, num_classes: int, width: int, height: int
) -> Tuple[np.ndarray, int]:
    """One label line → ``(float32[4] xyxy pixel box, class index)``.

    Raises:
        ValueError: the line is malformed; the message says how (the caller adds file and line).
    """
    fields = line.split()
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        raise ValueError(
            f"expected 5 fields 'class cx cy w h' (or a polygon 'class x1 y1 x2 y2 ...'), "
            f"got {n}: {line.strip()!r}"
        )
    (cls,) = _numbers(fields[:1])
    if cls != int(cls):
        raise ValueError(f"class index must be an integer, got {fields[0]!r}")
    if not 0 <= cls < num_classes:
        raise ValueError(
            f"class index {int(cls)} out of range: data.yaml names {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
    values = _numbers(fields[1:])
    if n == 5:
        cx, cy, w, h = values
        if w <= 0 or h <= 0:
            raise ValueError(f"zero or negative box size w={fields[3]} h={fields[4]}")
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    else:
        xs, ys = values[0::2], values[1::2]
        box = [min(xs), min(ys), max(xs), max(ys)]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError("polygon of zero width or height")
    lo, hi = -COORD_TOLERANCE, 1 + COORD_TOLERANCE
    if not all(lo <= v <= hi for v in box):
        shown = ", ".join(f"{v:g}" for v in box)
        raise ValueError(
            f"coordinates outside 0-1 (box x1, y1, x2, y2 = {shown} in image fractions): "
            "labels must be normalised by the image width and height"
        )
    clipped = np.clip(np.array(box, np.float64), 0.0, 1.0) * [width, height, width, height]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError("box has zero size inside the image")
    return clipped.astype(np.float32), int(cls)


def _read_labels(
    label_file: str, num_classes: int, width: int, height: int, on_error: str
) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes ``float32[N, 4]`` and labels ``int64[N]`` of one label file (none if missing)."""
    if not os.path.isfile(label_file):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    try:
        with open(label_file, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{label_file}: cannot read the label file: {e}") from e
    problems = ProblemLog(label_file, on_error)
    boxes, labels = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            box, label = parse_label_line(line, num_classes, width, height)
        except ValueError as e:
            problems.report(f"line {number}", str(e))
            continue
        boxes.append(box)
        labels.append(label)
    problems.log("label lines")
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def load_yolo(
    yaml_file: str, split: str, name: str = "", on_error: str = "raise"
) -> Tuple[List[DetectionRecord], DatasetMeta]:
    """Load one split of a YOLO-format dataset.

    Args:
        yaml_file: the Ultralytics ``data.yaml``.
        split: ``"train"``, ``"val"`` or ``"test"`` (a key ``data.yaml`` sets).
        name: dataset name for the meta (default ``<root folder>_<split>``).
        on_error: ``"raise"`` (default) or ``"skip"``: a bad label line is dropped, an
            unreadable image or label file drops its image; everything dropped is listed.

    Returns:
        ``(records, meta)`` in image-path order (folders sorted, lists in their order);
        ``image_id`` is the index in that order; boxes ``float32[N, 4]`` absolute xyxy pixels;
        ``meta.category_ids`` are ``1..K``; ``meta.evaluator == "coco"``.

    Raises:
        DatasetError: a missing or malformed ``data.yaml``, a split it does not set, a missing
            split folder or list, no images; (in "raise" mode) a bad label line (message: the
            label file, ``line N`` and the problem), an unreadable image or a listed image
            that does not exist.
    """
    data = read_data_yaml(yaml_file)
    if split not in data.splits:
        raise DatasetError(
            f"{yaml_file}: no split {split!r} (it sets {', '.join(data.splits) or 'none'})"
        )
    images: List[str] = []
    for source in data.splits[split]:
        problems = ProblemLog(source, on_error)
        images += _images_in(source, problems)
        problems.log("image list entries")
    if not images:
        raise DatasetError(
            f"{yaml_file}: split {split!r} has no images in {', '.join(data.splits[split])} "
            f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    k = len(data.class_names)
    records: List[DetectionRecord] = []
    skipped: List[str] = []
    for index, path in enumerate(images):
        label_file = label_path(path)
        try:
            height, width = image_size(path)
            boxes, labels = _read_labels(label_file, k, width, height, on_error)
        except DatasetError as e:
            if on_error == "raise":
                raise
            source = path if str(e).startswith(f"{path}: ") else label_file
            skipped.append(str(e))
            note_problem(source, str(e).removeprefix(f"{source}: "))
            continue
        records.append(DetectionRecord(path, index, height, width, boxes, labels))
    if skipped:
        logger.warning(
            "%s: skipped %d images (on_error='skip'):\n  %s",
            yaml_file,
            len(skipped),
            "\n  ".join(skipped),
        )
    default = f"{os.path.basename(data.root.rstrip(os.sep)) or 'yolo'}_{split}"
    meta = DatasetMeta(name=name or default, class_names=data.class_names, evaluator="coco")
    logger.info(
        "%s [%s]: %d images, %d objects, %d classes",
        yaml_file,
        split,
        len(records),
        sum(len(r.boxes) for r in records),
        k,
    )
    return records, meta
