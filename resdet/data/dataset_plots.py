"""Look at a detection dataset before training on it: sample images with their boxes, and the
label statistics (``tools/check_dataset.py --draw N``).

- :func:`draw_samples`: ``N`` images picked at random (seeded), each with its boxes and class
  names drawn (crowd regions and VOC ``difficult`` objects dashed), as ``sample_XXX.jpg``.
- :func:`plot_label_stats`: ``labels.png`` with the objects per class, box widths and heights,
  box sizes (``sqrt(area)``, with COCO's small / medium / large limits at 32 and 96 pixels) and
  where box centres fall in the image (relative coordinates) -- what Ultralytics' labels.jpg
  and mmdetection's browse_dataset show.

Uses matplotlib's Agg canvas directly (no pyplot), as :mod:`resdet.utils.plots` does.
"""

from __future__ import annotations

import logging
import os
from typing import List, Sequence

import numpy as np

from resdet.data.catalog import get_dataset
from resdet.data.det_dataset import load_record_image
from resdet.data.records import DatasetError, DetectionRecord
from resdet.utils.visualization import draw_detections, save_image

logger = logging.getLogger(__name__)

__all__ = ["draw_dataset", "draw_samples", "plot_label_stats"]

# COCO's object size limits (sqrt of the area in pixels): small < 32 <= medium < 96 <= large.
COCO_SIZE_LIMITS = (32, 96)


def draw_samples(
    records: Sequence[DetectionRecord],
    class_names: Sequence[str],
    num: int,
    output_dir: str,
    seed: int = 0,
) -> List[str]:
    """Draw ``num`` randomly chosen images (fewer if the dataset is smaller) with their boxes.

    An unreadable image is logged and replaced by the next one in the random order.

    Returns:
        the paths written, ``output_dir/sample_000.jpg`` onwards.
    """
    os.makedirs(output_dir, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(records))
    written: List[str] = []
    for index in order:
        if len(written) >= num:
            break
        rec = records[int(index)]
        try:
            image = load_record_image(rec)
        except DatasetError as e:
            logger.warning("not drawn: %s", e)
            continue
        special = rec.iscrowd | rec.difficult
        picture = draw_detections(
            image, rec.boxes[~special], rec.labels[~special], class_names=class_names
        )
        if special.any():
            picture = draw_detections(
                picture, rec.boxes[special], rec.labels[special], class_names=class_names,
                dashed=True,
            )  # fmt: skip
        path = os.path.join(output_dir, f"sample_{len(written):03d}.jpg")
        save_image(path, picture)
        written.append(path)
    return written


def plot_label_stats(
    records: Sequence[DetectionRecord], class_names: Sequence[str], output: str, title: str = ""
) -> str:
    """Write the label statistics of ``records`` as one image (four panels) to ``output``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    boxes = np.concatenate([r.boxes for r in records] or [np.zeros((0, 4), np.float32)])
    labels = np.concatenate([r.labels for r in records] or [np.zeros(0, np.int64)])
    sizes = np.concatenate(
        [np.tile([[r.width, r.height]], (len(r.boxes), 1)) for r in records] or [np.zeros((0, 2))]
    ).astype(np.float64)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    counts = np.bincount(labels, minlength=len(class_names))

    fig = Figure(figsize=(11, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(2, 2, 1)
    ax.bar(range(len(class_names)), counts, color=[f"C{i % 10}" for i in range(len(counts))])
    ax.set_xticks(range(len(class_names)))
    ax.set_xticklabels(class_names, rotation=45 if len(class_names) > 6 else 0, ha="right",
                       fontsize=8 if len(class_names) < 30 else 5)  # fmt: skip
    ax.set_ylabel("objects")
    ax.set_title(f"objects per class ({len(labels)} in {len(records)} images)", fontsize=10)

    ax = fig.add_subplot(2, 2, 2)
    bins = np.linspace(0, max(float(w.max(initial=1)), float(h.max(initial=1))), 40)
    ax.hist(w, bins=bins, alpha=0.6, label="width")
    ax.hist(h, bins=bins, alpha=0.6, label="height")
    ax.set_xlabel("pixels")
    ax.set_ylabel("boxes")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("box width and height", fontsize=10)

    ax = fig.add_subplot(2, 2, 3)
    side = np.sqrt(np.clip(w * h, 0, None))
    ax.hist(side, bins=40, color="C2")
    for limit in COCO_SIZE_LIMITS:
        ax.axvline(limit, color="k", ls="--", lw=1)
    small, large = (side < 32).sum(), (side >= 96).sum()
    ax.set_xlabel("sqrt(area) in pixels (COCO small < 32 <= medium < 96 <= large)")
    ax.set_ylabel("boxes")
    ax.set_title(
        f"box size: {small} small, {len(side) - small - large} medium, {large} large", fontsize=10
    )

    ax = fig.add_subplot(2, 2, 4)
    if len(boxes):
        cx = (boxes[:, 0] + boxes[:, 2]) / 2 / sizes[:, 0]
        cy = (boxes[:, 1] + boxes[:, 3]) / 2 / sizes[:, 1]
        ax.hist2d(cx, cy, bins=25, range=[[0, 1], [0, 1]], cmap="Blues")
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)  # image coordinates: y down
    ax.set_xlabel("centre x / image width")
    ax.set_ylabel("centre y / image height")
    ax.set_title("box centres", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output)
    return output


def draw_dataset(name: str, num: int, output_dir: str, seed: int = 0) -> List[str]:
    """:func:`draw_samples` and :func:`plot_label_stats` for the catalog dataset ``name``
    (loaded with bad annotations skipped). Returns the files written (none when the dataset
    cannot be loaded: the check report says why)."""
    try:
        records, meta = get_dataset(name, on_error="skip")
    except Exception as e:  # DatasetError, or whatever a user-registered loader raises
        logger.warning("%s: not drawn: %s", name, e)
        return []
    written = draw_samples(records, meta.class_names, num, output_dir, seed)
    stats = os.path.join(output_dir, "labels.png")
    written.append(plot_label_stats(records, meta.class_names, stats, title=name))
    return written
