"""Tiny YOLO-format and VOC-style datasets written into a test's ``tmp_path``.

``tests/`` is on ``sys.path`` during the test session (see ``tool_loader.py``), so any test can
``from custom_data import make_yolo, make_voc``.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import yaml

# image file name → (width, height, label lines or None for "no label file")
YoloImages = Dict[str, Tuple[int, int, Optional[List[str]]]]
# image id → (width, height, [(class name, xmin, ymin, xmax, ymax), ...]) in VOC's 1-based pixels
VocImages = Dict[str, Tuple[int, int, List[Tuple[str, int, int, int, int]]]]


def write_image(path: str, width: int, height: int, seed: int = 0) -> None:
    """A random-noise image of the given size (any extension opencv writes)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(path, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make_yolo(root: str, splits: Dict[str, YoloImages], names, **extra) -> str:
    """Ultralytics layout ``root/images/<split>/``, ``root/labels/<split>/`` and
    ``root/data.yaml`` (``path: .``, one folder per split, ``names`` as given, plus ``extra``
    keys). Returns the data.yaml path."""
    for split, images in splits.items():
        for i, (file_name, (w, h, lines)) in enumerate(sorted(images.items())):
            write_image(os.path.join(root, "images", split, file_name), w, h, seed=i)
            if lines is not None:
                label = os.path.join(root, "labels", split, os.path.splitext(file_name)[0] + ".txt")
                os.makedirs(os.path.dirname(label), exist_ok=True)
                with open(label, "w", encoding="utf-8") as f:
                    f.write("".join(line + "\n" for line in lines))
    data = {"path": ".", **{s: f"images/{s}" for s in splits}, "names": names, **extra}
    yaml_file = os.path.join(root, "data.yaml")
    with open(yaml_file, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    return yaml_file


def make_voc(root: str, split: str, images: VocImages, other_splits: Sequence[str] = ()) -> str:
    """VOC layout under ``root``: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and
    ``ImageSets/Main/<split>.txt`` (plus empty split files ``other_splits``). Returns root."""
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i, (image_id, (w, h, objects)) in enumerate(images.items()):
        write_image(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), w, h, seed=i)
        objs = "".join(
            f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2 in objects
        )
        xml = (
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>"
        )
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(xml)
    main = os.path.join(root, "ImageSets", "Main")
    with open(os.path.join(main, f"{split}.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in images))
    for other in other_splits:
        open(os.path.join(main, f"{other}.txt"), "w").close()
    return root
