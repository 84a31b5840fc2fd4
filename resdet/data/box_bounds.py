"""Boxes that reach outside their image: clipped for training, never silently.

Annotators often write a box one pixel past the border (VOC ``xmax = W + 1``, float rounding
in COCO jsons); the loaders clip those to the image and move on. A box reaching far outside
(more than :data:`FAR_OUTSIDE_PX` pixels) more likely means coordinates in another frame
(a resized image, swapped width and height, normalised values): it is still clipped, but
named -- the training log lists the first few by annotation, and ``tools/check_dataset.py``
lists every one (with how far out it reaches) as a problem.
"""

from __future__ import annotations

import logging
from typing import List, Sequence

from resdet.data.problems import note_problem

logger = logging.getLogger(__name__)

__all__ = ["FAR_OUTSIDE_PX", "ClippedBoxes", "outside_reach"]

FAR_OUTSIDE_PX = 2.0  # beyond this many pixels past a border a box is "far outside"
_LOGGED = 5  # far-outside boxes named in the training log (check_dataset lists all)


def outside_reach(box: Sequence[float], width: float, height: float) -> float:
    """How many pixels an ``xyxy`` box reaches past the image border (0 when inside)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(0.0, -x1, -y1, x2 - width, y2 - height)


class ClippedBoxes:
    """Counts the boxes a loader clips and names the ones reaching far outside.

    ``add`` once per box (before clipping); ``log`` once at the end of loading.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.far: List[str] = []

    def add(
        self, source: str, where: str, box: Sequence[float], width: int, height: int, raw: str
    ) -> None:
        """Record one box.

        Args:
            source: the annotation file (for the checker's report).
            where: the annotation, e.g. ``"annotation id 7 (image id 3)"``.
            box: ``xyxy`` in the image's pixels, before clipping.
            width, height: the image size.
            raw: the box as written in the file, for the message.
        """
        reach = outside_reach(box, width, height)
        if reach <= 1e-3:
            return
        self.count += 1
        if reach > FAR_OUTSIDE_PX:
            message = (
                f"{where}: box reaches {reach:.1f} px outside the {width}x{height} image "
                f"({raw}); it is clipped to the image"
            )
            self.far.append(f"{source}: {message}")
            note_problem(source, message)

    def log(self) -> None:
        if self.far:
            shown = "\n  ".join(self.far[:_LOGGED])
            more = f"\n  ... and {len(self.far) - _LOGGED} more" if len(self.far) > _LOGGED else ""
            logger.warning(
                "%s: clipped %d boxes that extend past their image; %d reach more than %g px "
                "outside (wrong coordinates? tools/check_dataset.py lists them all):\n  %s%s",
                self.name, self.count, len(self.far), FAR_OUTSIDE_PX, shown, more,
            )  # fmt: skip
        elif self.count:
            logger.info(
                "%s: clipped %d boxes that extend past their image by at most %g px",
                self.name, self.count, FAR_OUTSIDE_PX,
            )  # fmt: skip
