"""Check a dataset in full before training on it: every annotation and every image.

Training meets bad input one record at a time, possibly days into a run. The checker loads
the annotations in "skip" mode (so one bad record does not hide the next) and collects every
problem the loaders find, then decodes every image file and compares its size with the
annotated one. Nothing raises: problems are collected in a :class:`DatasetReport`, which
:func:`format_report` turns into text (``tools/check_dataset.py`` prints it).

Problems (``report.ok`` is False): a file that cannot be read (missing, empty, corrupt,
truncated, or a decompression bomb: more pixels in its header than the limit of
:mod:`resdet.data.image_io`), a decoded size that differs from the annotation (with a hint when
height and width are swapped by an EXIF orientation tag), and every annotation the loaders
reject (zero or negative box size, box outside the image, unknown category id, malformed or
duplicate entries, unreadable xml, ...), and boxes the loaders clip because they reach far
outside their image (:mod:`resdet.data.box_bounds`). Notes (listed, not problems): images
without objects and images whose only objects are crowd regions (both dropped from training by
``DATASETS.FILTER_EMPTY``). Greyscale, RGBA, palette, 16-bit and EXIF-rotated files decode fine
(``read_image``) and are not reported.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

from tqdm import tqdm

from resdet.data.catalog import get_dataset
from resdet.data.cifar import CIFAR10
from resdet.data.det_dataset import load_record_image
from resdet.data.image_io import read_image
from resdet.data.imagefolder import ImageFolderDataset
from resdet.data.problems import collect_problems
from resdet.data.records import DetectionRecord

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetReport",
    "Problem",
    "check_cifar10",
    "check_detection_dataset",
    "check_image_folder",
    "check_image_files",
    "check_records",
    "format_report",
]

T = TypeVar("T")


@dataclass
class Problem:
    """One thing wrong: ``source`` is the file it is in, ``message`` says where and what."""

    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclass
class DatasetReport:
    """Everything found in one dataset.

    Attributes:
        name: dataset name (or folder).
        description: where the data comes from (json file, folder, ...).
        num_images, num_boxes: what loaded (after skipping bad annotations).
        class_names: the dataset's classes (label order).
        annotation_problems: every annotation / image entry the loaders rejected.
        image_problems: every image file that is unreadable or of the wrong size.
        no_objects: image files without any object (notes).
        crowd_only: image files whose objects are all crowd regions (notes).
        fatal: why the dataset could not be loaded at all (missing files, bad json, ...).
    """

    name: str
    description: str = ""
    num_images: int = 0
    num_boxes: int = 0
    class_names: List[str] = field(default_factory=list)
    annotation_problems: List[Problem] = field(default_factory=list)
    image_problems: List[Problem] = field(default_factory=list)
    no_objects: List[str] = field(default_factory=list)
    crowd_only: List[str] = field(default_factory=list)
    fatal: str = ""

    @property
    def num_problems(self) -> int:
        return len(self.annotation_problems) + len(self.image_problems) + bool(self.fatal)

    @property
    def ok(self) -> bool:
        return self.num_problems == 0


def _parallel_map(
    fn: Callable[[T], Optional[Problem]],
    items: Sequence[T],
    workers: int,
    progress: bool,
    desc: str,
) -> List[Problem]:
    """``fn`` over ``items`` in a thread pool (opencv decoding releases the GIL), in order."""
    with contextlib.ExitStack() as stack:
        results: Iterable[Optional[Problem]] = map(fn, items)
        if workers > 1:
            results = stack.enter_context(ThreadPoolExecutor(workers)).map(fn, items)
        bar = tqdm(results, total=len(items), desc=desc, unit="img", disable=not progress)
        return [p for p in bar if p is not None]


def _check_record(rec: DetectionRecord) -> Optional[Problem]:
    try:
        load_record_image(rec)
    except Exception as e:  # DatasetError, but also anything opencv or the OS throws
        message = str(e).removeprefix(f"{rec.file_name}: ")
        if "image id" not in message:
            message += f" [image id {rec.image_id}]"
        return Problem(rec.file_name, message)
    return None


def check_records(
    records: Sequence[DetectionRecord], workers: int = 4, progress: bool = True, desc: str = ""
) -> List[Problem]:
    """Decode every record's image and compare its size with the annotated one.

    Returns the problems in record order (empty when every image is fine); never raises for
    bad files.
    """
    return _parallel_map(_check_record, records, workers, progress, desc or "images")


def _check_file(path: str) -> Optional[Problem]:
    try:
        read_image(path)
    except Exception as e:
        return Problem(path, str(e).removeprefix(f"{path}: "))
    return None


def check_image_files(
    paths: Sequence[str], workers: int = 4, progress: bool = True, desc: str = ""
) -> List[Problem]:
    """Decode every file (e.g. of an ImageFolder); returns the unreadable ones, in order."""
    return _parallel_map(_check_file, paths, workers, progress, desc or "images")


def _notes(records: Sequence[DetectionRecord]) -> Tuple[List[str], List[str]]:
    no_objects = [r.file_name for r in records if len(r.boxes) == 0]
    crowd_only = [r.file_name for r in records if len(r.boxes) and r.iscrowd.all()]
    return no_objects, crowd_only


def check_detection_dataset(
    name: str, workers: int = 4, progress: bool = True, decode: bool = True
) -> DatasetReport:
    """Check a registered detection dataset (or ``"+"`` union) in full.

    Args:
        name: catalog name, e.g. ``"coco_2017_val"`` (see :mod:`resdet.data.catalog`), or a
            source spec such as ``"yolo data=my/data.yaml split=val"``.
        workers: threads decoding images.
        progress: show a tqdm bar.
        decode: also decode every image (False: annotations only).

    Returns:
        the :class:`DatasetReport`; a dataset that cannot be loaded at all has ``fatal`` set.
    """
    report = DatasetReport(name)
    with collect_problems() as found:
        try:
            records, meta = get_dataset(name, on_error="skip")
        except Exception as e:  # DatasetError, or whatever a user-registered loader raises
            report.fatal = str(e)
            report.annotation_problems = [Problem(src, msg) for src, msg in found]
            return report
    report.annotation_problems = [Problem(src, msg) for src, msg in found]
    report.description = f"{meta.evaluator} dataset, {len(meta.class_names)} classes" + (
        f", {meta.json_file}" if meta.json_file else ""
    )
    report.num_images = len(records)
    report.class_names = list(meta.class_names)
    report.num_boxes = sum(len(r.boxes) for r in records)
    report.no_objects, report.crowd_only = _notes(records)
    if decode:
        report.image_problems = check_records(records, workers, progress, desc=name)
    return report


def check_image_folder(
    root: str,
    class_names: Optional[Sequence[str]] = None,
    workers: int = 4,
    progress: bool = True,
    decode: bool = True,
) -> DatasetReport:
    """Check a classification folder (``root/<class>/<images>``): listing, then every image.

    ``num_boxes`` stays 0; ``class_names`` is the training order for a val/test folder.
    """
    report = DatasetReport(root)
    try:
        ds = ImageFolderDataset(root, class_names=class_names)
    except Exception as e:
        report.fatal = str(e)
        return report
    report.description = f"image folder, {len(ds.class_names)} classes"
    report.num_images = len(ds)
    report.class_names = list(ds.class_names)
    if decode:
        paths = [ds.path(i) for i in range(len(ds))]
        report.image_problems = check_image_files(paths, workers, progress, desc=root)
    return report


def check_cifar10(root: str) -> DatasetReport:
    """Check the CIFAR-10 python batches under ``root`` (loading validates every array)."""
    report = DatasetReport(root, "CIFAR-10 batches")
    try:
        for split in ("train", "test"):
            report.num_images += len(CIFAR10(root, split))
    except Exception as e:
        report.fatal = str(e)
    return report


def _listing(title: str, items: Sequence[object], limit: int) -> List[str]:
    if not items:
        return []
    lines = [f"  {title} ({len(items)}):"]
    shown = items if limit <= 0 else items[:limit]
    lines += [f"    {x}" for x in shown]
    if len(shown) < len(items):
        lines.append(f"    ... and {len(items) - len(shown)} more")
    return lines


def format_report(reports: Sequence[DatasetReport], max_notes: int = 10) -> str:
    """Human-readable text: per dataset, every problem (all of them) and the notes (the first
    ``max_notes`` of each kind; 0 lists all), then a summary line."""
    lines: List[str] = []
    for r in reports:
        head = f"== {r.name}" + (f" ({r.description})" if r.description else "") + " =="
        lines.append(head)
        if r.fatal:
            lines.append(f"  cannot load: {r.fatal}")
        else:
            lines.append(f"  {r.num_images} images, {r.num_boxes} boxes")
        lines += _listing("annotation problems", r.annotation_problems, 0)
        lines += _listing("image problems", r.image_problems, 0)
        lines += _listing(
            "note: images without objects (dropped from training by DATASETS.FILTER_EMPTY)",
            r.no_objects,
            max_notes,
        )
        lines += _listing(
            "note: images with only crowd regions (dropped from training by FILTER_EMPTY)",
            r.crowd_only,
            max_notes,
        )
        lines.append(f"  {'OK' if r.ok else f'{r.num_problems} problem(s)'}")
    total = sum(r.num_problems for r in reports)
    lines.append(
        f"{len(reports)} dataset(s) checked: "
        + ("no problems" if total == 0 else f"{total} problem(s)")
    )
    return "\n".join(lines)
