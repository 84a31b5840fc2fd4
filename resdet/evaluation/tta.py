"""Test-time augmentation (TTA) for detectors: each image seen at several sizes and mirrored,
the views' detections fused into one answer.

The views (``TEST.AUG``): ``INPUT.MIN_SIZE_TEST`` first, then the other ``MIN_SIZES``, each
also mirrored left-right with ``FLIP``, or in all eight orientations of the square with
``DIHEDRAL`` (transposed, mirrored up-down, left-right: every 90-degree rotation and its
mirror). Every view runs the unchanged detector, whose detections come back in the original
image's pixels (a mirrored or rotated view's are mapped back).
The first view is exactly the plain test transform, so its detections are the plain
model's: one pass gives both the plain and the fused evaluation.

Fusion (:func:`fuse_detections`) keeps the detections that survive a per-class NMS over all
views as the objects, then lets every view vote once per object with its best same-class box
of IoU >= ``FUSE_IOU``: the object's score is the mean of the votes over all views (0 where a
view has no such box), its box the score-weighted mean of the voting boxes. It is Weighted
Boxes Fusion (Solovyev, Wang & Gabruseva 2021) with one box per view. Averaging the scores
demotes what only one view sees (most false positives on the demo's shapes); averaging the
boxes refines the localisation. On the demo's detector (shapes_val, 1,500 iterations) the
plain model scores COCO AP 59.4 / AP50 84.1; merging the flipped view's detections by NMS
alone (detectron2's TTA) 60.8 / 85.9, fusing them as here 64.3 / 86.6 (README).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torchvision.ops import batched_nms, box_iou

from resdet.config.load import ConfigError
from resdet.config.schema import Config
from resdet.data.det_transforms import resize_shortest_edge

__all__ = ["DIHEDRAL", "DetectorWithTTA", "fuse_detections", "tta_views"]

Detections = Dict[str, torch.Tensor]


def fuse_detections(
    views: Sequence[Detections],
    *,
    fuse_iou: float,
    nms_thresh: float,
    score_thresh: float = 0.0,
    max_detections: int = 100,
) -> Detections:
    """Fuse the detections of one image seen in several views (all in the same pixels).

    Args:
        views: per view ``{"boxes": float[D, 4] xyxy, "scores": float[D], "labels": int64[D]}``.
        fuse_iou: a view votes for an object with its best box of the object's class whose IoU
            with the object's box is at least this.
        nms_thresh: the per-class NMS IoU that picks the objects among all views' detections.
        score_thresh: fused scores at or below this are dropped.
        max_detections: keep the best this many.

    Returns:
        ``{"boxes", "scores", "labels"}`` sorted by fused score, high to low. With one view the
        input detections come back unchanged (each detection is its own only vote), apart from
        the order of equal scores, the cut at ``max_detections`` and ``score_thresh``.
    """
    if not views:
        raise ValueError("fuse_detections needs at least one view")
    boxes = torch.cat([v["boxes"].float() for v in views])
    scores = torch.cat([v["scores"].float() for v in views])
    labels = torch.cat([v["labels"] for v in views])
    if len(scores) == 0:
        return {"boxes": boxes, "scores": scores, "labels": labels}
    keep = batched_nms(boxes, scores, labels, nms_thresh)
    obj_boxes, obj_labels = boxes[keep], labels[keep]
    vote_sum = scores.new_zeros(len(keep))
    box_sum = boxes.new_zeros(len(keep), 4)
    for v in views:
        if len(v["scores"]) == 0:
            continue
        same_class = obj_labels[:, None] == v["labels"][None, :]
        iou = box_iou(obj_boxes, v["boxes"].float()) * same_class
        best, idx = iou.max(dim=1)
        vote = (best >= fuse_iou) * v["scores"].float()[idx]
        vote_sum += vote
        box_sum += vote[:, None] * v["boxes"].float()[idx]
    # An object's own detection always votes (IoU 1 with itself), so vote_sum > 0.
    fused_boxes = box_sum / vote_sum[:, None]
    fused_scores = vote_sum / len(views)
    order = fused_scores.argsort(descending=True)
    order = order[fused_scores[order] > score_thresh][:max_detections]
    return {"boxes": fused_boxes[order], "scores": fused_scores[order], "labels": obj_labels[order]}


# An orientation: (transpose, flip up-down, flip left-right), applied in that order.
Orientation = Tuple[bool, bool, bool]
IDENTITY: Orientation = (False, False, False)
MIRROR: Orientation = (False, False, True)
DIHEDRAL: List[Orientation] = [
    (t, v, h) for t in (False, True) for v in (False, True) for h in (False, True)
]


# A view: (shorter side, cap of the longer side, orientation).
View = Tuple[int, int, Orientation]


def tta_views(cfg: Config) -> List[View]:
    """The views ``TEST.AUG`` asks for: ``INPUT.MIN_SIZE_TEST`` as it is first (the plain
    view), then the other sizes, then each other orientation at every size. Views of
    ``INPUT.MIN_SIZE_TEST`` are capped at ``INPUT.MAX_SIZE_TEST`` as the plain test transform
    is; the other sizes at ``TEST.AUG.MAX_SIZE`` (0: the same).

    Raises:
        ConfigError: a size <= 0, or ``FUSE_IOU`` outside (0, 1], or ``MAX_SIZE`` < 0.
    """
    aug = cfg.TEST.AUG
    if any(int(s) <= 0 for s in aug.MIN_SIZES):
        raise ConfigError(f"TEST.AUG.MIN_SIZES must be positive sizes, got {aug.MIN_SIZES}")
    if not 0.0 < aug.FUSE_IOU <= 1.0:
        raise ConfigError(f"TEST.AUG.FUSE_IOU must be in (0, 1], got {aug.FUSE_IOU}")
    if aug.MAX_SIZE < 0:
        raise ConfigError(
            f"TEST.AUG.MAX_SIZE must be >= 0 (0: INPUT.MAX_SIZE_TEST), got {aug.MAX_SIZE}"
        )
    plain, cap = int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)
    sizes = list(dict.fromkeys([plain] + [int(s) for s in aug.MIN_SIZES]))  # once each
    if aug.DIHEDRAL:
        orientations = DIHEDRAL
    else:
        orientations = [IDENTITY, MIRROR] if aug.FLIP else [IDENTITY]
    return [(s, cap if s == plain else aug.MAX_SIZE or cap, o) for o in orientations for s in sizes]


class DetectorWithTTA(nn.Module):
    """A detector answering with the fusion of its detections over several views.

    Input: the detector's list of image dicts, but each ``"image"`` is the **original**
    image (``uint8[3, H, W]`` RGB, not resized: each view resizes it as the test transform
    does). Output, per image: the fused ``{"boxes", "scores", "labels"}`` in the original
    image's pixels, and under ``"plain"`` the first view's detections (the plain model's).

    Args:
        model: a detector in eval mode (or its fused inference copy).
        views: ``(min_size, max_size, (transpose, flip up-down, flip left-right))`` each
            (:func:`tta_views`); the first is the plain view.
        fuse_iou, nms_thresh, score_thresh, max_detections: see :func:`fuse_detections`.
            ``score_thresh`` applies to the fused scores; the views keep the model's own (a
            lower one lets a box one view scores under the final threshold still vote).

    The wrapper's train / eval mode is its model's (it only runs in eval mode).
    """

    def __init__(
        self,
        model: nn.Module,
        views: Sequence[View],
        *,
        fuse_iou: float,
        nms_thresh: float,
        score_thresh: float,
        max_detections: int,
    ) -> None:
        super().__init__()
        if not views:
            raise ValueError("DetectorWithTTA needs at least one view")
        self.model = model
        self.views = [(int(s), int(m), tuple(bool(x) for x in o)) for s, m, o in views]
        self.fuse_iou = float(fuse_iou)
        self.nms_thresh = float(nms_thresh)
        self.score_thresh = float(score_thresh)
        self.max_detections = int(max_detections)
        self.training = model.training  # the model's mode, left as it is

    @classmethod
    def from_config(
        cls, model: nn.Module, cfg: Config, score_thresh: float | None = None
    ) -> DetectorWithTTA:
        """The views and fusion ``cfg.TEST.AUG`` describes, around ``model``; the fused scores
        kept above ``score_thresh`` (default ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``)."""
        r = cfg.MODEL.ROI_HEADS
        return cls(
            model,
            tta_views(cfg),
            fuse_iou=cfg.TEST.AUG.FUSE_IOU,
            nms_thresh=r.NMS_THRESH_TEST,
            score_thresh=r.SCORE_THRESH_TEST if score_thresh is None else score_thresh,
            max_detections=r.DETECTIONS_PER_IMAGE,
        )

    @staticmethod
    def _view_input(
        resized: np.ndarray, orig_size: Tuple[int, int], orient: Orientation
    ) -> Dict[str, Any]:
        """The detector's input dict for ``resized`` (``[H, W, 3]``) in orientation ``orient``."""
        view, (h0, w0) = resized, orig_size
        transpose, flip_ud, flip_lr = orient
        if transpose:
            view, (h0, w0) = view.transpose(1, 0, 2), (w0, h0)
        if flip_ud:
            view = view[::-1]
        if flip_lr:
            view = view[:, ::-1]
        # Contiguous CHW, as the test loader's images are: the same strides, the same kernels.
        tensor = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))
        # The detector maps its boxes to this frame: the original image, oriented as the view.
        return {"image": tensor, "orig_size": (int(h0), int(w0))}

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        if self.training:
            raise RuntimeError("DetectorWithTTA runs in eval mode only (it tests, not trains)")
        originals = [
            np.ascontiguousarray(x["image"].permute(1, 2, 0).cpu().numpy()) for x in batched_inputs
        ]
        sizes = [
            tuple(x.get("orig_size") or im.shape[:2]) for x, im in zip(batched_inputs, originals)
        ]
        # Each (size, cap) resized once, then oriented as every view of that size asks.
        resized: Dict[Tuple[int, int], List[np.ndarray]] = {}
        per_view: List[List[Detections]] = []
        for size, max_size, orient in self.views:
            if (size, max_size) not in resized:
                resized[size, max_size] = [
                    resize_shortest_edge(im, size, max_size) for im in originals
                ]
            inputs = [
                self._view_input(im, hw, orient) for im, hw in zip(resized[size, max_size], sizes)
            ]
            dets = self.model(inputs)
            per_view.append([_unorient(d, x["orig_size"], orient) for d, x in zip(dets, inputs)])
        out = []
        for i in range(len(batched_inputs)):
            views = [dets[i] for dets in per_view]
            fused = fuse_detections(
                views,
                fuse_iou=self.fuse_iou,
                nms_thresh=self.nms_thresh,
                score_thresh=self.score_thresh,
                max_detections=self.max_detections,
            )
            out.append({**fused, "plain": views[0]})
        return out


def _unorient(det: Detections, size: Tuple[int, int], orient: Orientation) -> Detections:
    """Detections of an oriented view (in its ``size`` = (h, w) frame) mapped back to the
    original image: the flips undone (``x1' = w - x2``, ``x2' = w - x1``), then the transpose."""
    transpose, flip_ud, flip_lr = orient
    if not any(orient):
        return det
    x1, y1, x2, y2 = det["boxes"].unbind(dim=1)
    h, w = size
    if flip_lr:
        x1, x2 = w - x2, w - x1
    if flip_ud:
        y1, y2 = h - y2, h - y1
    if transpose:
        x1, y1, x2, y2 = y1, x1, y2, x2
    return {**det, "boxes": torch.stack([x1, y1, x2, y2], dim=1)}
