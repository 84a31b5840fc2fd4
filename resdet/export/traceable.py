"""A trace-friendly view of a Faster R-CNN for TorchScript and ONNX export.

``FasterRCNN.forward`` takes a list of dicts and keeps Python-side state (an anchor cache keyed
by feature sizes, ``min(k, n)`` on Python ints, per-image size tuples). Traced as is, every one
of those would be frozen to the example image's size. :class:`TraceableDetector` runs the same
computation for **one image** on the model's own modules and parameters, but takes every size
from the input tensor's shape, so ``torch.jit.trace`` and ``torch.onnx.export`` record it as
data and the exported graph works at any input size.

Input: ``float32[1, 3, H, W]``, RGB in 0-255, already resized as the model expects (the
Predictor's test transform: shorter side ``INPUT.MIN_SIZE_TEST``, longer side at most
``INPUT.MAX_SIZE_TEST``). Normalisation, BGR flipping and padding happen inside.
Output: ``(boxes float32[D, 4] xyxy in the input's pixels, scores float32[D], labels int64[D])``
in 0..K-1, the same detections ``FasterRCNN`` returns in eval mode for that input.
"""

from __future__ import annotations

from typing import List, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms

from resdet.modeling.detection.faster_rcnn import FasterRCNN

Size = Union[int, torch.Tensor]  # a Python int in eager mode, a 0-dim tensor while tracing


def _min_k(k: int, n: Size) -> Size:
    """``min(k, n)`` that stays in the graph when ``n`` is a traced size."""
    if isinstance(n, torch.Tensor):
        return torch.clamp(n, max=k)
    return min(k, n)


def _clip(boxes: torch.Tensor, height: Size, width: Size) -> torch.Tensor:
    """Clip ``[..., 4]`` xyxy boxes to ``[0, width] x [0, height]`` (same values as
    ``torchvision.ops.clip_boxes_to_image``, with the bounds kept as graph values)."""
    h = torch.as_tensor(height).to(boxes.dtype)
    w = torch.as_tensor(width).to(boxes.dtype)
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), w)
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


class TraceableDetector(nn.Module):
    """Wraps an eval-mode :class:`FasterRCNN`; shares (does not copy) its parameters."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.model = model
        # The wrapper itself must be in eval mode too: exporters put the module back into
        # the mode they found it in, which would otherwise switch the detector to training.
        self.eval()

    def _normalize_and_pad(self, image: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.normalize(image[0])
        d = m.size_divisibility
        h, w = image.shape[2], image.shape[3]
        # ImageList pads with zeros after normalisation, bottom and right.
        pad_h = (h + d - 1) // d * d - h
        pad_w = (w + d - 1) // d * d - w
        return F.pad(x, [0, pad_w, 0, pad_h])[None]

    def _anchors(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        gen = self.model.rpn.anchor_generator
        out = []
        for i, (f, stride) in enumerate(zip(feats, gen.strides)):
            cell = getattr(gen, f"cell_{i}")
            xs = torch.arange(f.shape[-1], dtype=torch.float32, device=cell.device) * stride
            ys = torch.arange(f.shape[-2], dtype=torch.float32, device=cell.device) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + cell.view(1, -1, 4)).reshape(-1, 4))
        return out

    def _proposals(self, features: dict, height: Size, width: Size) -> torch.Tensor:
        """RPN proposals ``[P, 4]``, as ``RPN._proposals`` computes them in eval mode."""
        rpn = self.model.rpn
        feats = [features[f] for f in rpn.in_features]
        anchors = self._anchors(feats)
        logits, deltas = rpn.head(feats)
        a = rpn.anchor_generator.num_anchors
        boxes_all, scores_all, levels_all = [], [], []
        for lvl, (anc, lg, dl) in enumerate(zip(anchors, logits, deltas)):
            lg = lg.permute(0, 2, 3, 1).reshape(-1)
            dl = dl.reshape(a, 4, dl.shape[-2], dl.shape[-1]).permute(2, 3, 0, 1).reshape(-1, 4)
            k = _min_k(rpn.pre_nms_topk[False], lg.shape[0])
            top, idx = lg.float().topk(k)
            boxes_all.append(rpn.box_coder.decode(dl[idx], anc[idx]))
            scores_all.append(top)
            levels_all.append(torch.full_like(idx, lvl))
        boxes = _clip(torch.cat(boxes_all), height, width)
        scores, levels = torch.cat(scores_all), torch.cat(levels_all)
        min_size = max(rpn.min_size, 1e-3)  # as RPN._proposals: remove_small_boxes(b, ...)
        keep = (
            torch.isfinite(boxes).all(dim=1)
            & torch.isfinite(scores)
            & (boxes[:, 2] - boxes[:, 0] >= min_size)
            & (boxes[:, 3] - boxes[:, 1] >= min_size)
        )
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, rpn.nms_thresh)[: rpn.post_nms_topk[False]]
        return boxes[keep]

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f"expected float[1, 3, H, W], got {tuple(image.shape)}")
        m = self.model
        height, width = image.shape[2], image.shape[3]
        features = m.backbone(self._normalize_and_pad(image))
        proposals = self._proposals(features, height, width)
        heads = m.roi_heads
        x = heads.box_head(features, [proposals], [(height, width)])
        cls_logits, deltas = heads.predictor(x)
        k = heads.num_classes
        scores = F.softmax(cls_logits.float(), dim=1)[:, :k]
        boxes = _clip(heads.box_coder.decode(deltas, proposals).reshape(-1, k, 4), height, width)
        keep = scores > heads.score_thresh
        labels = torch.nonzero(keep)[:, 1]
        boxes, scores = boxes[keep], scores[keep]
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
        keep = batched_nms(boxes, scores, labels, heads.nms_thresh)[: heads.detections_per_image]
        return boxes[keep], scores[keep], labels[keep]
