"""Records → training/evaluation samples (a map-style torch Dataset)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from resdet.data.det_transforms import DetTransform
from resdet.data.image_io import read_image
from resdet.data.records import DatasetError, DetectionRecord

logger = logging.getLogger(__name__)


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

    Each item is a dict:
        ``image``: ``uint8[3, H, W]`` RGB, not normalized (the model owns normalization);
        ``boxes``: ``float32[N, 4]`` xyxy pixels in the transformed image;
        ``labels``: ``int64[N]`` in ``0..K-1``; ``iscrowd``: ``bool[N]``;
        ``image_id``: int; ``orig_size``: ``(h, w)`` of the image on disk; ``file_name``: str.
        ``H, W`` differ from ``orig_size`` by the resize; a model maps detections back to
        original pixels with the ratio of the two.
    """

    def __init__(
        self,
        records: Sequence[DetectionRecord],
        transform: Callable[..., Any] | None = None,
        drop_difficult: bool = True,
    ) -> None:
        self.records: List[DetectionRecord] = list(records)
        self.transform = transform
        self.drop_difficult = drop_difficult

    def __len__(self) -> int:
        return len(self.records)

    def aspect_ratios(self) -> List[float]:
        """``width / height`` of every record (from the records, no decoding), for grouping."""
        return [r.width / r.height for r in self.records]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        rec = self.records[index]
        image = read_image(rec.file_name)
        if image.shape[:2] != (rec.height, rec.width):
            raise DatasetError(
                f"{rec.file_name}: decoded size {image.shape[0]}x{image.shape[1]} (HxW) differs "
                f"from the annotated {rec.height}x{rec.width} (image id {rec.image_id}); "
                "the annotation belongs to another image or the file was resized"
            )
        keep = np.ones(len(rec.boxes), bool)
        if self.drop_difficult:
            keep &= ~rec.difficult
        boxes, labels, crowd = rec.boxes[keep], rec.labels[keep], rec.iscrowd[keep]

        if self.transform is not None:
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
