"""Region Proposal Network (Ren et al. 2015, Sec. 3.1).

A 3x3 conv slides over each feature map; two 1x1 siblings predict, for each of the ``A``
anchors at every location, an objectness logit and 4 box deltas. Training samples 256
anchors per image at up to 1:1 positives; inference keeps the top-scoring boxes per level,
runs NMS and returns the best ``post_nms_topk`` proposals per image.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from resdet.layers.fuse import Conv1x1NCHW, FusedConv2d
from resdet.layers.tracing import topk_min
from resdet.modeling.detection.anchors import AnchorGenerator
from resdet.modeling.detection.box_coder import BoxCoder
from resdet.modeling.detection.losses import box_regression_loss
from resdet.modeling.detection.sampling import IGNORE, POSITIVE, Matcher, subsample_labels


class RPNHead(nn.Module):
    """Shared across levels: 3x3 conv + ReLU, then objectness ``[N, A, H, W]`` and deltas
    ``[N, 4A, H, W]``."""

    def __init__(self, in_channels: int, *, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.relu: nn.Module = nn.ReLU()  # a module: fuse() moves it inside ``conv``
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def fuse(self, winograd: bool = False) -> None:
        """For inference, in place: the 3x3 convolution becomes a
        :class:`~resdet.layers.fuse.FusedConv2d` with the ReLU inside; with ``winograd`` it
        runs Winograd on the FPN's NCHW maps and the two 1x1 convolutions are
        :class:`~resdet.layers.fuse.Conv1x1NCHW` GEMMs on its NCHW output (oneDNN NHWC
        convolutions otherwise)."""
        if isinstance(self.conv, FusedConv2d):
            return  # fused already
        self.conv = FusedConv2d(self.conv, relu=True, winograd=winograd)
        self.relu = nn.Identity()
        one_by_one = Conv1x1NCHW if winograd else partial(FusedConv2d, relu=False)
        self.objectness = one_by_one(self.objectness)
        self.deltas = one_by_one(self.deltas)

    def forward(
        self, features: Sequence[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = self.relu(self.conv(x))
            logits.append(self.objectness(t))
            deltas.append(self.deltas(t))
        return logits, deltas


class RPN(nn.Module):
    """Proposals and RPN losses.

    ``forward(images_sizes, features, targets)`` returns ``(proposals, losses)`` where
    ``proposals`` is a list (one per image) of ``float32[P_i, 4]`` xyxy boxes in the padded
    input's pixel frame, detached, and ``losses`` is ``{"loss_rpn_cls", "loss_rpn_loc"}``
    in training, ``{}`` in eval.
    """

    def __init__(
        self,
        in_features: Sequence[str],
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        matcher: Matcher,
        *,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_topk: Tuple[int, int] = (12000, 6000),
        post_nms_topk: Tuple[int, int] = (2000, 1000),
        nms_thresh: float = 0.7,
        min_size: float = 0.0,
        loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        loss_weight: float = 1.0,
        sigmoid_scores: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = list(in_features)
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.matcher = matcher
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = {True: pre_nms_topk[0], False: pre_nms_topk[1]}
        self.post_nms_topk = {True: post_nms_topk[0], False: post_nms_topk[1]}
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.loss_type = loss_type
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight
        # torchvision ranks proposals by sigmoid(logit): the same order, except that fp32
        # sigmoid ties every logit above ~17 at 1.0 (converted detectors reproduce that).
        self.sigmoid_scores = sigmoid_scores

    def forward(
        self,
        image_sizes: List[Tuple[int, int]],
        features: Dict[str, torch.Tensor],
        targets: Optional[List[Dict[str, torch.Tensor]]] = None,
    ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        feats = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(feats)
        logits, deltas = self.head(feats)
        n = feats[0].shape[0]
        # [N, A, H, W] -> [N, H*W*A], matching the anchors' (y, x, anchor) order.
        logits = [x.permute(0, 2, 3, 1).reshape(n, -1) for x in logits]
        deltas = [
            x.view(n, -1, 4, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
            for x in deltas
        ]
        proposals = self._proposals(anchors, logits, deltas, image_sizes)
        losses: Dict[str, torch.Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("RPN in training mode needs targets")
            losses = self._losses(anchors, logits, deltas, targets, image_sizes)
        return proposals, losses

    @torch.no_grad()
    def _proposals(
        self,
        anchors: List[torch.Tensor],
        logits: List[torch.Tensor],
        deltas: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[torch.Tensor]:
        n = logits[0].shape[0]
        pre_k, post_k = self.pre_nms_topk[self.training], self.post_nms_topk[self.training]
        boxes_all, scores_all, levels_all = [], [], []
        for lvl, (a, lg, dl) in enumerate(zip(anchors, logits, deltas)):
            # A traced size while tracing: a smaller input has fewer anchors than pre_k.
            k = topk_min(lg, pre_k, 1)
            # Top-k on logits before decoding: decoding all ~100k anchors would be wasted work.
            top, idx = lg.float().topk(k, dim=1)
            sel = dl.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
            boxes = self.box_coder.decode(sel.reshape(-1, 4), a[idx.reshape(-1)]).view(n, -1, 4)
            boxes_all.append(boxes)
            scores_all.append(top)
            levels_all.append(torch.full_like(idx[0], lvl))
        boxes = torch.cat(boxes_all, dim=1)
        scores = torch.cat(scores_all, dim=1)
        if self.sigmoid_scores:
            scores = scores.sigmoid()
        levels = torch.cat(levels_all)
        out = []
        for i, (h, w) in enumerate(image_sizes):
            b, s, lv = clip_boxes_to_image(boxes[i], (h, w)), scores[i], levels
            # torchvision's remove_small_boxes test, kept as a mask: no in-place index_put / &=,
            # which ONNX export cannot express, and one scatter fewer in eager mode.
            min_size = max(self.min_size, 1e-3)
            mask = torch.isfinite(b).all(dim=1) & torch.isfinite(s)
            mask = mask & (b[:, 2] - b[:, 0] >= min_size) & (b[:, 3] - b[:, 1] >= min_size)
            b, s, lv = b[mask], s[mask], lv[mask]
            # NMS within each level (FPN), then the best post_k over all levels, as detectron2.
            keep = batched_nms(b, s, lv, self.nms_thresh)[:post_k]
            out.append(b[keep])
        return out

    def _losses(
        self,
        anchors: List[torch.Tensor],
        logits: List[torch.Tensor],
        deltas: List[torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        image_sizes: List[Tuple[int, int]],
    ) -> Dict[str, torch.Tensor]:
        all_anchors = torch.cat(anchors)
        logits_cat = torch.cat(logits, dim=1)
        deltas_cat = torch.cat(deltas, dim=1)
        labels_all, targets_all = [], []
        for t in targets:
            gt = t["boxes"]
            crowd = t.get("iscrowd")
            if crowd is not None and crowd.any():
                crowd_boxes, gt = gt[crowd], gt[~crowd]
            else:
                crowd_boxes = gt[:0]
            matched, labels = self.matcher(box_iou(gt, all_anchors))
            labels = labels.to(torch.int64)
            if len(crowd_boxes):
                # Anchors overlapping a crowd region beyond the background threshold are neither
                # object nor background (the RoI heads use their foreground IoU the same way).
                near_crowd = box_iou(crowd_boxes, all_anchors).max(dim=0).values > self.matcher.low
                labels[near_crowd & (labels != POSITIVE)] = IGNORE
            pos, neg = subsample_labels(
                labels, self.batch_size_per_image, self.positive_fraction, 0
            )
            sampled = torch.full_like(labels, IGNORE)
            sampled[pos], sampled[neg] = 1, 0
            labels_all.append(sampled)
            reg_target = torch.zeros_like(all_anchors)
            if len(gt) and len(pos):
                reg_target[pos] = self.box_coder.encode(all_anchors[pos], gt[matched[pos]])
            targets_all.append(reg_target)
        labels = torch.stack(labels_all)
        reg_targets = torch.stack(targets_all)
        valid = labels >= 0
        positive = labels == 1
        normalizer = self.batch_size_per_image * len(targets)
        loss_cls = F.binary_cross_entropy_with_logits(
            logits_cat[valid].float(), labels[valid].float(), reduction="sum"
        )
        loss_loc = box_regression_loss(
            deltas_cat[positive].float(), reg_targets[positive], self.loss_type, self.smooth_l1_beta
        )
        return {
            "loss_rpn_cls": self.loss_weight * loss_cls / normalizer,
            "loss_rpn_loc": self.loss_weight * loss_loc / normalizer,
        }
