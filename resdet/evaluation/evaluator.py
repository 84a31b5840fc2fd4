"""What the COCO and VOC evaluators share: one item per processed image, gathered to rank 0.

An evaluator is built on the records it scores (and their :class:`DatasetMeta`); every rank
calls ``process`` on its shard, then ``evaluate`` gathers the items to rank 0, which scores
them and writes files while the other ranks get ``{}``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Dict, Generic, List, Sequence, Tuple, TypeVar

from resdet.data.records import DatasetMeta, DetectionRecord

__all__ = ["PerImageEvaluator", "gather_to_main"]

T = TypeVar("T")


def gather_to_main(items: List[Any]) -> List[Any] | None:
    """Concatenate every rank's list on rank 0; the other ranks get ``None``.

    Without an initialized process group (or with one rank) it returns ``items`` unchanged.
    Evaluation then runs on rank 0 only, which is also the only rank that writes files.
    """
    torch = sys.modules.get("torch")  # no torch imported → no process group either
    if torch is None or not (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    ):
        return items
    world = torch.distributed.get_world_size()
    if world == 1:
        return items
    gathered: List[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, items)
    if torch.distributed.get_rank() != 0:
        return None
    return [x for part in gathered for x in part]


class PerImageEvaluator(Generic[T]):
    """The records and meta being scored, the output folder, and ``(image id, item)`` pairs
    in processing order (``T``: what the subclass keeps of one image's detections)."""

    def __init__(
        self,
        records: Sequence[DetectionRecord],
        meta: DatasetMeta,
        output_dir: str | None = None,
    ) -> None:
        self.records = list(records)
        self.meta = meta
        self.output_dir = output_dir
        self._per_image: List[Tuple[int, T]] = []

    def reset(self) -> None:
        self._per_image = []

    def _gather(self) -> Dict[int, T] | None:
        """Every rank's items on rank 0, one per image id in first-seen order; ``None`` on the
        other ranks.

        The first copy wins: DistributedSampler pads shards by repeating images, and a
        repeated image's detections would otherwise all count as duplicates (FPs).
        """
        gathered = gather_to_main(self._per_image)
        if gathered is None:
            return None
        by_image: Dict[int, T] = {}
        for image_id, item in gathered:
            by_image.setdefault(image_id, item)
        return by_image

    def _log_coverage(self, num_images: int) -> None:
        """Say when fewer than all records are scored (``num_images == 0``: nothing was
        processed, so the subclass scores every image)."""
        log = logging.getLogger(type(self).__module__)
        if num_images == 0:
            log.warning("%s: no image was processed; scoring all images", self.meta.name)
        elif num_images < len(self.records):
            log.info(
                "%s: evaluating %d of %d images", self.meta.name, num_images, len(self.records)
            )
