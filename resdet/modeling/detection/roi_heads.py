"""Per-region classification and box regression (Fast R-CNN, Girshick 2015).

``ROIHeads`` owns the logic shared by the C4 and FPN designs -- sampling proposals against
ground truth, the losses, and turning scores and deltas into detections -- and delegates
"features for these boxes" to a box head (``box_heads.py``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from resdet.modeling.detection.box_coder import BoxCoder
from resdet.modeling.detection.losses import box_regression_loss
from resdet.modeling.detection.sampling import IGNORE, POSITIVE, Matcher, subsample_labels


class BoxPredictor(nn.Module):
    """Class scores ``[R, K+1]`` (index K is background) and class-specific deltas ``[R, 4K]``.

    With ``fp32=True`` the two layers run in float32 even under autocast: bf16 rounding of the
    final deltas costs box precision (measured ~1.5 AP on the embedded demo set).
    """

    def __init__(self, in_dim: int, *, num_classes: int, fp32: bool = True) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, num_classes * 4)
        self.fp32 = fp32
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.fp32:
            with torch.autocast(x.device.type, enabled=False):
                x = x.float()
                return self.cls_score(x), self.bbox_pred(x)
        return self.cls_score(x), self.bbox_pred(x)


class ROIHeads(nn.Module):
    """Sample proposals, pool features, classify and refine.

    ``forward(features, proposals, image_sizes, targets)`` returns ``(detections, losses)``:
    in training ``([], {"loss_cls", "loss_box_reg"})``; in eval a list of per-image dicts
    ``{"boxes": float32[D, 4] xyxy in the padded input frame, "scores": float32[D],
    "labels": int64[D] in 0..K-1}`` and ``{}``.
    """

    def __init__(
        self,
        box_head: nn.Module,
        predictor: BoxPredictor,
        num_classes: int,
        box_coder: BoxCoder,
        matcher: Matcher,
        *,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        min_box_size: float = 0.0,
    ) -> None:
        super().__init__()
        self.box_head = box_head
        self.predictor = predictor
        self.num_classes = num_classes
        self.box_coder = box_coder
        self.matcher = matcher
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.loss_type = loss_type
        self.smooth_l1_beta = smooth_l1_beta
        # Detections narrower or lower than this are dropped (0: only empty boxes go);
        # torchvision's detectors drop boxes under 0.01 px.
        self.min_box_size = min_box_size

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
        targets: Optional[List[Dict[str, torch.Tensor]]] = None,
    ) -> Tuple[List[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("ROIHeads in training mode needs targets")
            proposals, gt_classes, reg_targets = self.sample_proposals(proposals, targets)
        x = self.box_head(features, proposals, image_sizes)
        cls_logits, deltas = self.predictor(x)
        if self.training:
            return [], self.losses(cls_logits, deltas, gt_classes, reg_targets)
        return self.inference(cls_logits, deltas, proposals, image_sizes), {}

    @torch.no_grad()
    def sample_proposals(
        self, proposals: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Pick ``batch_size_per_image`` RoIs per image, ``positive_fraction`` foreground.

        Ground-truth boxes join the proposals, so that early in training, when the RPN is
        poor, the head still sees well-placed positives. Returns the sampled boxes per image,
        their classes (``num_classes`` = background) and regression targets, concatenated.
        """
        sampled, classes, reg = [], [], []
        for props, t in zip(proposals, targets):
            gt, labels = t["boxes"], t["labels"]
            crowd = t.get("iscrowd")
            crowd_boxes = gt[:0]
            if crowd is not None and crowd.any():
                crowd_boxes, gt, labels = gt[crowd], gt[~crowd], labels[~crowd]
            props = torch.cat([props, gt.to(props.dtype)])
            matched, match_labels = self.matcher(box_iou(gt, props))
            cls = torch.full(
                (len(props),), self.num_classes, dtype=torch.int64, device=props.device
            )
            if len(gt):
                pos = match_labels == POSITIVE
                cls[pos] = labels[matched[pos]]
            cls[match_labels == IGNORE] = IGNORE
            if len(crowd_boxes):
                near_crowd = box_iou(crowd_boxes, props).max(dim=0).values >= self.matcher.high
                cls[near_crowd & (match_labels != POSITIVE)] = IGNORE
            pos_idx, neg_idx = subsample_labels(
                cls, self.batch_size_per_image, self.positive_fraction, self.num_classes
            )
            keep = torch.cat([pos_idx, neg_idx])
            boxes = props[keep]
            target = torch.zeros_like(boxes)
            if len(pos_idx):
                target[: len(pos_idx)] = self.box_coder.encode(
                    boxes[: len(pos_idx)], gt[matched[pos_idx]]
                )
            sampled.append(boxes)
            classes.append(cls[keep])
            reg.append(target)
        return sampled, torch.cat(classes), torch.cat(reg)

    def losses(
        self,
        cls_logits: torch.Tensor,
        deltas: torch.Tensor,
        gt_classes: torch.Tensor,
        reg_targets: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        if gt_classes.numel() == 0:
            # No RoI sampled in the whole batch (no objects and no proposals): zero losses that
            # still reach every parameter, rather than the NaN of an empty mean.
            zero = cls_logits.sum() * 0.0 + deltas.sum() * 0.0
            return {"loss_cls": zero, "loss_box_reg": zero}
        loss_cls = F.cross_entropy(cls_logits.float(), gt_classes, reduction="mean")
        fg = torch.nonzero(gt_classes < self.num_classes).squeeze(1)
        # Class-specific regression: only the 4 outputs of the ground-truth class are trained.
        fg_deltas = deltas.view(len(deltas), self.num_classes, 4)[fg, gt_classes[fg]]
        loss_box = box_regression_loss(
            fg_deltas.float(), reg_targets[fg], self.loss_type, self.smooth_l1_beta
        )
        # Normalise by all sampled RoIs, not just foreground ones (detectron2's convention):
        # an image with few objects then does not get an outsized regression gradient.
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box / max(gt_classes.numel(), 1)}

    @torch.no_grad()
    def inference(
        self,
        cls_logits: torch.Tensor,
        deltas: torch.Tensor,
        proposals: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, torch.Tensor]]:
        """Score threshold, per-class NMS (one batched call), the top ``detections_per_image``."""
        k = self.num_classes
        scores_all = F.softmax(cls_logits.float(), dim=1)[:, :k]
        boxes_all = self.box_coder.decode(deltas, torch.cat(proposals)).view(-1, k, 4)
        results = []
        start = 0
        for props, size in zip(proposals, image_sizes):
            end = start + props.shape[0]  # not len(): a traced size stays in the graph
            scores, boxes = scores_all[start:end], boxes_all[start:end]
            start = end
            boxes = clip_boxes_to_image(boxes.reshape(-1, 4), size).view(-1, k, 4)
            keep = scores > self.score_thresh
            idx = torch.nonzero(keep)
            boxes, scores, labels = boxes[keep], scores[keep], idx[:, 1]
            w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            if self.min_box_size > 0:
                big = (w >= self.min_box_size) & (h >= self.min_box_size)
            else:
                big = (w > 0) & (h > 0)
            boxes, scores, labels = boxes[big], scores[big], labels[big]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results
