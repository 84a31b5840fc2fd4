"""Records → training/evaluation samples (a map-style torch Dataset).

Unreadable images at run time (a file deleted, truncated or corrupted after the annotations
were checked) follow ``on_error``: ``"raise"`` stops with a :class:`DatasetError` naming the
file and the record; ``"skip"`` (training) logs the file and serves the next readable record
in its place; ``"blank"`` (evaluation) logs the file and serves a grey image of the annotated
size, so every image id still gets an answer and its objects count as missed.
``tools/check_dataset.py`` finds all such files up front.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Sequence, Set, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from resdet.data.det_transforms import DetTransform
from resdet.data.image_io import DecodedImageCache, read_image
from resdet.data.records import DatasetError, DetectionRecord

logger = logging.getLogger(__name__)

ON_ERROR_MODES = ("raise", "skip", "blank")


def load_record_image(rec: DetectionRecord) -> np.ndarray:
    """Decode ``rec.file_name`` (:func:`read_image`) and check it has the annotated size.

    Returns ``uint8[H, W, 3]`` RGB. Raises :class:`DatasetError` naming the file when it is
    missing, undecodable or of another size (with a hint when the sizes are transposed: an EXIF
    orientation tag the annotation tool ignored).
    """
    image = read_image(rec.file_name)
    h, w = image.shape[:2]
    if (h, w) != (rec.height, rec.width):
        hint = "the annotation belongs to another image or the file was resized"
        if (h, w) == (rec.width, rec.height):
            hint = (
                "height and width are swapped: the file probably has an EXIF orientation tag "
                "(applied when decoding) that the annotation tool ignored"
            )
        raise DatasetError(
            f"{rec.file_name}: decoded size {h}x{w} (HxW) differs from the annotated "
            f"{rec.height}x{rec.width} (image id {rec.image_id}); {hint}"
        )
    return image


class DetectionDataset(Dataset):
    """Decode, transform and tensorize detection records.

    Args:
        records: the dataset (from a loader or :func:`resdet.data.catalog.get_dataset`).
        transform: ``(image, boxes, labels) -> (image, boxes, labels)``, usually from
            :func:`~resdet.data.det_transforms.build_det_transforms`; ``None`` keeps the image
            as decoded. A :class:`DetTransform` also reports which boxes it kept so per-box
            flags stay aligned; any other callable must keep every box in order.
        drop_difficult: remove VOC ``difficult`` objects from the targets (training); keep them
            for evaluation views (the evaluator reads them from the records anyway).
        on_error: what an unreadable image does: ``"raise"``, ``"skip"`` (substitute the next
            readable record; training) or ``"blank"`` (grey placeholder; evaluation). See the
            module docstring. ``num_unreadable`` counts the images met in this process.
        seed: base seed of position-keyed augmentation (below).
        cache_bytes: keep decoded images in memory up to this many bytes per process
            (:class:`~resdet.data.image_io.DecodedImageCache`; ``DATALOADER.CACHE_MB`` for
            training); 0: decode on every read.

    Keys: an index, or ``(index, position)`` where ``position`` is the sample's place in the
    training stream (:func:`~resdet.data.loader.build_detection_loader` passes these for
    infinite training loaders): the transform is then seeded with ``(seed, position)``, so a
    sample's augmentation depends neither on the worker that loads it nor on where a run was
    resumed.

    Each item is a dict:
        ``image``: ``uint8[3, H, W]`` RGB, not normalized (the model owns normalization);
        ``boxes``: ``float32[N, 4]`` xyxy pixels in the transformed image;
        ``labels``: ``int64[N]`` in ``0..K-1``; ``iscrowd``: ``bool[N]``;
        ``image_id``: int; ``orig_size``: ``(h, w)`` of the image on disk; ``file_name``: str.
        ``H, W`` differ from ``orig_size`` by the resize; a model maps detections back to
        original pixels with the ratio of the two.
    """

    supports_position_keys = True

    def __init__(
        self,
        records: Sequence[DetectionRecord],
        transform: Callable[..., Any] | None = None,
        drop_difficult: bool = True,
        on_error: str = "raise",
        seed: int = 0,
        cache_bytes: int = 0,
    ) -> None:
        if on_error not in ON_ERROR_MODES:
            raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
        self.records: List[DetectionRecord] = list(records)
        self.transform = transform
        self.drop_difficult = drop_difficult
        self.on_error = on_error
        self.seed = int(seed)
        self.cache = DecodedImageCache(cache_bytes) if cache_bytes else None
        self.num_unreadable = 0
        self._unreadable: Set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def aspect_ratios(self) -> List[float]:
        """``width / height`` of every record (from the records, no decoding), for grouping."""
        return [r.width / r.height for r in self.records]

    def _load(self, index: int) -> Tuple[np.ndarray, DetectionRecord]:
        """Decode record ``index`` (or, in "skip" mode, the next readable one)."""
        first = index
        while True:
            rec = self.records[index]
            try:
                if self.cache is None:
                    return load_record_image(rec), rec
                return self.cache.get(index, lambda r=rec: load_record_image(r)), rec
            except DatasetError as e:
                if self.on_error == "raise":
                    raise DatasetError(
                        f"{e} [record {index}, image id {rec.image_id}; DATASETS.ON_ERROR skip "
                        "skips such images, tools/check_dataset.py lists all of them]"
                    ) from e
                self._note_unreadable(index, e)
                if self.on_error == "blank":
                    return np.full((rec.height, rec.width, 3), 128, np.uint8), rec
            index = (index + 1) % len(self.records)
            if index == first:
                raise DatasetError(f"none of the {len(self.records)} images could be read")

    def _note_unreadable(self, index: int, error: DatasetError) -> None:
        self.num_unreadable += 1
        if index in self._unreadable:
            return  # listed once per process; the count keeps growing
        self._unreadable.add(index)
        action = "serving the next readable image" if self.on_error == "skip" else "grey image"
        logger.warning(
            "unreadable image skipped (DATASETS.ON_ERROR %s, %s): %s [record %d]; "
            "%d unreadable images met so far in this process",
            self.on_error,
            action,
            error,
            index,
            len(self._unreadable),
        )

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Dict[str, Any]:
        index, position = key if isinstance(key, tuple) else (key, None)
        image, rec = self._load(index)
        keep = np.ones(len(rec.boxes), bool)
        if self.drop_difficult:
            keep &= ~rec.difficult
        boxes, labels, crowd = rec.boxes[keep], rec.labels[keep], rec.iscrowd[keep]

        if self.transform is not None:
            if position is not None and isinstance(self.transform, DetTransform):
                self.transform.reseed((self.seed, int(position)))
            if isinstance(self.transform, DetTransform):
                image, boxes, labels, idx = self.transform(image, boxes, labels, return_index=True)
                crowd = crowd[idx]
            else:
                n_in = len(boxes)
                image, boxes, labels = self.transform(image, boxes, labels)
                if len(boxes) != n_in:
                    raise ValueError(
                        f"transform {self.transform!r} changed the number of boxes "
                        f"({n_in} -> {len(boxes)}); use a DetTransform so flags stay aligned"
                    )
        image = np.ascontiguousarray(image.transpose(2, 0, 1))
        return {
            "image": torch.from_numpy(image),
            "boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
            "iscrowd": torch.as_tensor(np.asarray(crowd, bool).reshape(-1)),
            "image_id": int(rec.image_id),
            "orig_size": (int(rec.height), int(rec.width)),
            "file_name": rec.file_name,
        }
