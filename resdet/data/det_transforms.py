"""Detection-time image transforms: shortest-edge resize (+ horizontal flip in training).

Built on albumentations (written against 2.x: ``get_params_dependent_on_data`` and
``Compose.set_random_seed``). Boxes go in and out as absolute ``xyxy`` pixels
(albumentations' ``"pascal_voc"`` format); labels travel as a label field, and so does the
index of each box so per-box flags (``iscrowd``, ``difficult``) stay aligned.

The resize is the Detectron convention (also the paper's Appendix A setup: shorter side 600
for VOC, 800 for COCO): ``scale = min(size / short_side, max_size / long_side)``, so the short
side becomes ``size`` unless that would push the long side past ``max_size``. Albumentations'
``SmallestMaxSize`` followed by ``LongestMaxSize`` is not the same (the second one also
*enlarges* images whose long side is below ``max_size``), hence :class:`ShortestEdgeResize`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Sequence, Tuple, Union

# albumentations >= 1.4 queries PyPI for a newer version on import (a network call with a 2 s
# timeout and a warning when offline); a library import must not do that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2
import numpy as np
import torch.utils.data

from resdet.data.random_state import seed_compose

logger = logging.getLogger(__name__)


def resize_scale(height: int, width: int, size: int, max_size: int) -> float:
    """The Detectron resize factor: ``min(size / min(h, w), max_size / max(h, w))``."""
    return min(size / min(height, width), max_size / max(height, width))


def shortest_edge_size(height: int, width: int, size: int, max_size: int) -> Tuple[int, int]:
    """``(h, w)`` after resizing the short side to ``size``, the long side at most
    ``max_size``: ``round(h * scale), round(w * scale)`` (at least 1)."""
    scale = resize_scale(height, width, size, max_size)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_shortest_edge(
    image: np.ndarray, size: int, max_size: int, interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """``image`` ``[H, W, C]`` resized as :class:`ShortestEdgeResize` with ``size`` does."""
    out_hw = shortest_edge_size(image.shape[0], image.shape[1], size, max_size)
    if image.shape[:2] == out_hw:
        return image
    return cv2.resize(image, (out_hw[1], out_hw[0]), interpolation=interpolation)


class ShortestEdgeResize(A.DualTransform):
    """Resize so the short side is ``size`` (random among ``min_sizes``) and the long side stays
    ``<= max_size``; aspect ratio kept.

    The output size is ``round(h * scale), round(w * scale)``. Boxes are handled by
    albumentations in normalized coordinates, so they scale by exactly the factors the image
    was resized by (``new_w / w`` and ``new_h / h``).
    """

    def __init__(
        self,
        min_sizes: Sequence[int],
        max_size: int,
        interpolation: int = cv2.INTER_LINEAR,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if not min_sizes or any(int(s) <= 0 for s in min_sizes) or max_size <= 0:
            raise ValueError(f"sizes must be positive: min_sizes={min_sizes}, max_size={max_size}")
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.interpolation = interpolation

    def get_params_dependent_on_data(
        self, params: Dict[str, Any], data: Dict[str, Any]
    ) -> Dict[str, Any]:
        height, width = params["shape"][:2]
        size = self.py_random.choice(self.min_sizes)
        return {"out_hw": shortest_edge_size(height, width, size, self.max_size)}

    def apply(self, img: np.ndarray, out_hw: Tuple[int, int], **params: Any) -> np.ndarray:
        if img.shape[:2] == tuple(out_hw):
            return img
        return cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, out_hw: Tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        # Albumentations keeps boxes normalized to [0, 1] between transforms: resize-invariant.
        return bboxes

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ("min_sizes", "max_size", "interpolation")


class DetTransform:
    """Callable ``(image, boxes, labels) -> (image, boxes, labels)``.

    Args (of ``__call__``):
        image: ``uint8[H, W, 3]`` RGB.
        boxes: ``float32[N, 4]`` absolute xyxy pixels inside the image.
        labels: ``int64[N]``.
        return_index: also return ``int64[M]``, the input index of every output box, for
            carrying per-box fields (``iscrowd``, ``difficult``) along.

    Returns:
        ``(image uint8[H', W', 3], boxes float32[M, 4] xyxy in the new image, labels int64[M])``
        (plus the index). With resize and flip no box is ever dropped, so ``M == N`` in the same
        order; the index makes that explicit rather than assumed.

    Randomness: the albumentations pipeline owns its random state (``seed`` at build time).
    In a DataLoader worker every worker would otherwise start from the same forked state and
    repeat the same augmentations, so the pipeline reseeds itself from the worker's torch seed
    (distinct per worker and epoch, and reproducible when the loader's generator is seeded).
    :meth:`reseed` instead seeds one sample by its place in the training stream, which makes
    augmentation independent of the worker count and of where a run was resumed.
    """

    def __init__(self, compose: A.Compose) -> None:
        self.compose = compose
        self._worker_seed: int | None = None

    def reseed(self, seed: Union[int, Sequence[int]]) -> None:
        """Seed the next call, e.g. with ``(base_seed, stream_position)``; in a DataLoader
        worker this replaces the per-worker seeding."""
        info = torch.utils.data.get_worker_info()
        self._worker_seed = info.seed if info is not None else None
        seed_compose(self.compose, seed)

    def _maybe_reseed_for_worker(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            seed_compose(self.compose, info.seed % 2**32)

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        return_index: bool = False,
    ) -> Union[
        Tuple[np.ndarray, np.ndarray, np.ndarray],
        Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ]:
        self._maybe_reseed_for_worker()
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(labels, np.int64).reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
        out = self.compose(
            image=image,
            bboxes=boxes,
            labels=labels,
            box_index=np.arange(len(boxes), dtype=np.int64),
        )
        out_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        index = np.asarray(out["box_index"], np.int64).reshape(-1)
        out_labels = np.asarray(out["labels"], np.int64).reshape(-1)
        if len(index) != len(boxes):
            logger.debug("transform dropped %d of %d boxes", len(boxes) - len(index), len(boxes))
        if return_index:
            return out["image"], out_boxes, out_labels, index
        return out["image"], out_boxes, out_labels

    def __repr__(self) -> str:
        return f"DetTransform({self.compose.transforms})"


def build_det_transforms(
    min_size: Union[int, Sequence[int]],
    max_size: int,
    flip_prob: float,
    is_train: bool,
    seed: int | None = None,
) -> DetTransform:
    """Build the detection transform.

    Args:
        min_size: shortest-edge size(s). Training picks one at random per image (multi-scale
            training); testing uses the first.
        max_size: cap on the longest edge after resizing.
        flip_prob: horizontal flip probability in training (``x1' = W - x2``, ``x2' = W - x1``);
            ignored at test time.
        is_train: training (random size, flip) or test (deterministic).
        seed: seed of the albumentations random state (None: fresh entropy). DataLoader workers
            reseed from their torch worker seed, see :class:`DetTransform`.

    Returns:
        a :class:`DetTransform`.
    """
    sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    if not sizes:
        raise ValueError("min_size must name at least one size")
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    steps: list = [ShortestEdgeResize(sizes if is_train else sizes[:1], max_size)]
    if is_train and flip_prob > 0:
        steps.append(A.HorizontalFlip(p=flip_prob))
    compose = A.Compose(
        steps,
        # min_visibility/min_area 0 and no min width/height: no box may silently disappear.
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["labels", "box_index"],
            min_visibility=0.0,
            min_area=0.0,
            min_width=0.0,
            min_height=0.0,
        ),
    )
    seed_compose(compose, seed)
    return DetTransform(compose)
