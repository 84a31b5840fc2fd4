"""The embedded default dataset: synthetic scenes of shapes, generated on the fly.

``make demo`` needs a detection task that runs on a CPU with nothing downloaded, yet is not
trivial. Each scene has a blurred textured background (gradient, low-frequency noise, stripes
or checkers), clutter that is not an object (lines, curves, irregular blobs, text), and 1-8
objects of :data:`SHAPES_CLASSES`. Classes differ by SHAPE only: colour and texture are drawn
independently of the class, and each object's colour keeps a minimum distance from what lies
under it so it is always visible. Rotation and a mild aspect stretch (<= 1.3) vary the look.

Object size (longer side of the nominal box) is drawn from three bands aimed at COCO's area
classes, about 20% small (< 32^2), 50% medium and 30% large by count; the realised counts
are stored in ``meta.json``. Small objects start at 12 px because detectors barely see less.

Occlusion and honest boxes: objects are drawn in order and a later object may overlap earlier
ones. Every object keeps a binary mask of its visible pixels (alpha >= 0.5); a new object is
rejected (another position is tried, then it is dropped) if it would leave an earlier object
less than 60% visible. So every drawn object is annotated, and its box is the tight box of its
VISIBLE pixels. Objects lie fully inside the image (no truncation).

Box conventions: a box covering 0-based pixel columns ``c0..c1`` is ``x1 = c0, x2 = c1 + 1``
(xyxy, the pixel edge convention used in resdet); COCO gets ``[c0, r0, c1 - c0 + 1, ...]``
and VOC 1-based inclusive ``xmin = floor(x1) + 1, xmax = ceil(x2)`` (so ``xmin = c0 + 1``,
``xmax = c1 + 1``); a VOC loader recovers xyxy as ``(xmin - 1, ymin - 1, xmax, ymax)``.

Determinism: every scene uses its own ``numpy`` Generator seeded with ``(seed, split, index)``,
so any image can be reproduced alone, and crops use a separate stream, so ``crops`` and
``crop_size`` never change the scenes.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import multiprocessing
import os
import shutil
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, Iterable, List, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from resdet.data.shapes_render import (  # noqa: F401  (re-exported: the public API)
    _PNG_FAST,
    _SPLITS,
    BACKGROUND_CLASS,
    GENERATOR_VERSION,
    SHAPES_CLASSES,
    ShapesScene,
    _sample_size,
    render_scene,
)

logger = logging.getLogger(__name__)


def shapes_paths(root: str) -> Dict[str, str]:
    """Where :func:`generate_shapes` writes each part under ``root`` (for the catalog).

    Keys: ``train_json``, ``val_json`` (COCO), ``train_images``, ``val_images`` (the image
    roots the json ``file_name`` is relative to), ``voc_root`` (holds ``Annotations/``,
    ``ImageSets/Main/{train,val}.txt``, ``JPEGImages/``), ``crops_root``, ``crops_train``,
    ``crops_val`` (ImageFolder roots) and ``meta``.
    """
    return {
        "train_json": os.path.join(root, "annotations", "instances_train.json"),
        "val_json": os.path.join(root, "annotations", "instances_val.json"),
        "train_images": os.path.join(root, "train"),
        "val_images": os.path.join(root, "val"),
        "voc_root": os.path.join(root, "VOC"),
        "crops_root": os.path.join(root, "crops"),
        "crops_train": os.path.join(root, "crops", "train"),
        "crops_val": os.path.join(root, "crops", "val"),
        "meta": os.path.join(root, "meta.json"),
    }


# --------------------------------------------------------------------------- rendering
def _square_crop(img: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """A ``side`` x ``side`` window centred at (cx, cy), border replicated, resized to ``size``."""
    s = max(int(round(side)), 2)
    patch = cv2.getRectSubPix(img, (s, s), (float(cx), float(cy)))
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


def _scene_crops(
    img: np.ndarray, scene: ShapesScene, size: int, rng: np.random.Generator
) -> List[Tuple[str, np.ndarray]]:
    """``(class name, crop)`` per object plus about ``N / K`` background crops.

    Object crops: the box enlarged by a random 10-30% margin and made square. Background
    crops: random square windows whose centre half holds no object box centre and in which
    objects cover at most 20% of the pixels (so no object is centred in them).
    """
    out = []
    for box, label in zip(scene.boxes, scene.labels):
        x1, y1, x2, y2 = box
        side = max(x2 - x1, y2 - y1) * (1 + rng.uniform(0.1, 0.3))
        out.append(
            (SHAPES_CLASSES[label], _square_crop(img, (x1 + x2) / 2, (y1 + y2) / 2, side, size))
        )
    h, w = img.shape[:2]
    occupied = np.zeros((h, w), np.uint8)
    for x1, y1, x2, y2 in scene.boxes.astype(int):
        occupied[y1:y2, x1:x2] = 1
    integral = cv2.integral(occupied)  # int32[h + 1, w + 1]: box-covered pixels per window
    centers = (scene.boxes[:, :2] + scene.boxes[:, 2:]) / 2
    for _ in range(int(len(scene.labels) / len(SHAPES_CLASSES) + rng.random())):
        for _attempt in range(20):
            s = int(min(_sample_size(h, w, rng) * 1.2, min(h, w)))
            x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            cover = integral[y0 + s, x0 + s] - integral[y0, x0 + s] - integral[y0 + s, x0]
            cover += integral[y0, x0]
            inner = np.abs(centers - [x0 + s / 2, y0 + s / 2]) < s / 4
            if cover <= 0.2 * s * s and not inner.all(1).any():
                out.append((BACKGROUND_CLASS, _square_crop(img, x0 + s / 2, y0 + s / 2, s, size)))
                break
    return out


# --------------------------------------------------------------------------- writing


def _voc_xml(file_name: str, width: int, height: int, scene: ShapesScene) -> str:
    """PASCAL VOC annotation; 1-based inclusive pixels (see the module docstring)."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC"
    ET.SubElement(ann, "filename").text = file_name
    size = ET.SubElement(ann, "size")
    for key, val in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(val)
    ET.SubElement(ann, "segmented").text = "0"
    for (x1, y1, x2, y2), label in zip(scene.boxes.tolist(), scene.labels.tolist()):
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = SHAPES_CLASSES[label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bnd = ET.SubElement(obj, "bndbox")
        coords = (int(np.floor(x1)) + 1, int(np.floor(y1)) + 1, int(np.ceil(x2)), int(np.ceil(y2)))
        for key, val in zip(("xmin", "ymin", "xmax", "ymax"), coords):
            ET.SubElement(bnd, key).text = str(val)
    ET.indent(ann)
    return ET.tostring(ann, encoding="unicode") + "\n"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # file systems without hard links, or across devices
        shutil.copyfile(src, dst)


def _write_image(task: Tuple[str, str, int, Dict[str, Any]]) -> Tuple[int, int, list, Dict]:
    """Render scene ``index`` of ``split`` and write its JPEG, VOC xml and crops.

    Runs in worker processes: returns ``(width, height, [(label, xyxy)], crop counts)`` for the
    parent to assemble the COCO json in index order.
    """
    root, split, index, args = task
    paths = shapes_paths(root)
    scene = render_scene(args["seed"], split, index, args["min_size"], args["max_size"])
    h, w = scene.image.shape[:2]
    ok, buf = cv2.imencode(".jpg", scene.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"opencv could not encode {split} image {index} as JPEG")
    image_path = os.path.join(paths[f"{split}_images"], f"{index:06d}.jpg")
    buf.tofile(image_path)
    voc_id = f"{split}_{index:06d}"
    _link_or_copy(image_path, os.path.join(paths["voc_root"], "JPEGImages", voc_id + ".jpg"))
    with open(os.path.join(paths["voc_root"], "Annotations", voc_id + ".xml"), "w") as f:
        f.write(_voc_xml(voc_id + ".jpg", w, h, scene))
    crop_counts: Dict[str, int] = {}
    if args["crops"]:
        # Crops come from the decoded JPEG so the classifier sees the detector's pixels;
        # their own stream keeps the scenes independent of the crop settings.
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        crop_rng = np.random.default_rng([args["seed"], _SPLITS[split], index, 1])
        crops = _scene_crops(decoded, scene, args["crop_size"], crop_rng)
        for j, (cls, crop) in enumerate(crops):
            name = os.path.join(paths[f"crops_{split}"], cls, f"{index:06d}_{j}.png")
            cv2.imwrite(name, crop, _PNG_FAST)
            crop_counts[cls] = crop_counts.get(cls, 0) + 1
    return w, h, list(zip(scene.labels.tolist(), scene.boxes.tolist())), crop_counts


def _write_split(root: str, split: str, results: List[Tuple[int, int, list, Dict]]) -> Dict:
    """Write the COCO json and VOC image set of one split; return its counts for meta.json."""
    paths = shapes_paths(root)
    images, annotations = [], []
    per_class = {n: 0 for n in SHAPES_CLASSES}
    areas = {"small": 0, "medium": 0, "large": 0}
    crops = {c: 0 for c in (*SHAPES_CLASSES, BACKGROUND_CLASS)}
    for index, (w, h, objects, crop_counts) in enumerate(results):
        images.append({"id": index + 1, "file_name": f"{index:06d}.jpg", "width": w, "height": h})
        for label, (x1, y1, x2, y2) in objects:
            bw, bh = x2 - x1, y2 - y1
            ann = {"id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1}
            ann.update(bbox=[x1, y1, bw, bh], area=bw * bh, iscrowd=0)
            annotations.append(ann)
            per_class[SHAPES_CLASSES[label]] += 1
            areas["small" if bw * bh < 32**2 else "medium" if bw * bh < 96**2 else "large"] += 1
        for cls, n in crop_counts.items():
            crops[cls] += n
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES_CLASSES)]
    coco = {
        "info": {"description": f"resdet shapes {split}", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    with open(paths[f"{split}_json"], "w") as f:
        json.dump(coco, f)
    with open(os.path.join(paths["voc_root"], "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("".join(f"{split}_{i:06d}\n" for i in range(len(results))))
    counts = {"images": len(results), "objects": len(annotations), "per_class": per_class}
    counts.update(areas=areas, crops=crops)
    return counts


# --------------------------------------------------------------------------- entry points

_OUTPUTS = ("meta.json", "train", "val", "annotations", "VOC", "crops")


# generate_shapes arguments that do not change the output (not in meta.json's "args").
_NOT_RECORDED = ("root", "progress", "workers")


def _check_args(args: Dict[str, Any]) -> None:
    if args["num_train"] < 0 or args["num_val"] < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {args}")
    if not 64 <= args["min_size"] <= args["max_size"]:
        raise ValueError(f"need 64 <= min_size <= max_size, got {args}")
    if args["crop_size"] < 8:
        raise ValueError(f"crop_size must be >= 8, got {args}")


def _dir_counts(root: str, crops: bool) -> Dict[str, int]:
    """Number of files in each output folder, relative to ``root`` (checked by validation)."""
    dirs = ["train", "val", "VOC/JPEGImages", "VOC/Annotations"]
    if crops:
        dirs += [f"crops/{s}/{c}" for s in _SPLITS for c in (*SHAPES_CLASSES, BACKGROUND_CLASS)]
    return {d: len(os.listdir(os.path.join(root, d))) for d in dirs}


def _generation_args(args: Dict[str, Any]) -> Dict[str, Any]:
    """``args`` (keyword arguments of :func:`generate_shapes`) completed with its defaults,
    without the ones that do not change the output: the ``args`` ``meta.json`` records.

    Raises:
        TypeError: a name :func:`generate_shapes` does not take.
    """
    bound = inspect.signature(generate_shapes).bind("", **args)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in _NOT_RECORDED}


def validate_shapes(root: str, **args: Any) -> bool:
    """True if ``root`` holds a complete generation with exactly these arguments: those of
    :func:`generate_shapes` (by keyword; its defaults for the others; ``progress`` and
    ``workers`` do not matter).

    Complete means: ``meta.json`` (written last) has the same generator version and arguments,
    every file it lists exists, and every output folder holds the number of files it recorded.
    """
    args = _generation_args(args)
    try:
        with open(shapes_paths(root)["meta"]) as f:
            meta = json.load(f)
        if meta.get("version") != GENERATOR_VERSION or meta.get("args") != args:
            return False
        if not all(os.path.isfile(os.path.join(root, p)) for p in meta["files"]):
            return False
        return _dir_counts(root, args["crops"]) == meta["dir_counts"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def generate_shapes(
    root: str,
    num_train: int = 1500,
    num_val: int = 300,
    seed: int = 0,
    min_size: int = 160,
    max_size: int = 320,
    crops: bool = True,
    crop_size: int = 64,
    progress: bool = True,
    workers: int = 1,
) -> Dict[str, Any]:
    """Generate the shapes dataset under ``root`` unless an identical one is already there.

    Writes ``{train,val}/NNNNNN.jpg`` (JPEG q90), ``annotations/instances_{train,val}.json``
    (COCO, image ids ``index + 1``, category ids ``1..K`` in :data:`SHAPES_CLASSES` order),
    ``VOC/{Annotations,ImageSets/Main,JPEGImages}`` (ids ``{split}_NNNNNN``, images hard-linked),
    ``crops/{train,val}/<class>/*.png`` (``crop_size`` squares, plus ``background``) and last
    ``meta.json``. Images are ``min_size..max_size`` pixels on each side, drawn independently.

    Args:
        workers: processes rendering scenes; the output does not depend on it. 1 is a plain
            loop (~30 s for the default 1,800 images on one core). More uses spawned
            processes, so the calling script needs the usual ``if __name__ == "__main__"``.

    Returns:
        The meta dict: ``version``, ``args``, ``classes``, per-split ``counts`` (images,
        objects, per_class, areas small/medium/large, crops), ``files``, ``dir_counts``.
    """
    args = dict(num_train=num_train, num_val=num_val, seed=seed, min_size=min_size)
    args.update(max_size=max_size, crops=crops, crop_size=crop_size)
    _check_args(args)
    paths = shapes_paths(root)
    if validate_shapes(root, **args):
        logger.info("shapes dataset in %s is up to date; not regenerating", root)
        with open(paths["meta"]) as f:
            return json.load(f)
    logger.info("generating shapes dataset in %s with %s", root, args)
    # Remove meta first: an interrupted run must never look complete.
    for name in _OUTPUTS:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    dirs = [
        "train",
        "val",
        "annotations",
        "VOC/Annotations",
        "VOC/ImageSets/Main",
        "VOC/JPEGImages",
    ]
    if crops:
        dirs += [f"crops/{s}/{c}" for s in _SPLITS for c in (*SHAPES_CLASSES, BACKGROUND_CLASS)]
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    total = num_train + num_val
    tasks = [(root, "train", i, args) for i in range(num_train)]
    tasks += [(root, "val", i, args) for i in range(num_val)]
    with contextlib.ExitStack() as stack:
        results: Iterable = map(_write_image, tasks)
        if workers > 1:
            # spawn, not fork: the parent may hold torch threads, which fork can deadlock.
            ctx = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=ctx))
            results = pool.map(_write_image, tasks, chunksize=16)
        results = list(tqdm(results, total=total, desc="shapes", disable=not progress))
    counts = {
        "train": _write_split(root, "train", results[:num_train]),
        "val": _write_split(root, "val", results[num_train:]),
    }
    files = [os.path.relpath(paths[k], root) for k in ("train_json", "val_json")]
    files += [f"VOC/ImageSets/Main/{s}.txt" for s in _SPLITS]
    meta = {
        "version": GENERATOR_VERSION,
        "args": args,
        "classes": list(SHAPES_CLASSES),
        "counts": counts,
        "files": files,
        "dir_counts": _dir_counts(root, crops),
    }
    tmp = paths["meta"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, paths["meta"])
    logger.info("shapes dataset written: %s", {s: c["areas"] for s, c in counts.items()})
    return meta
