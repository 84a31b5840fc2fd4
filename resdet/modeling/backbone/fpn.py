"""Feature Pyramid Network (Lin et al. 2017) on a ResNet: res2..res5 -> p2..p6."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from resdet.layers.fuse import Conv1x1NCHW, FusedConv2d
from resdet.modeling.backbone.base import Backbone, ShapeSpec
from resdet.modeling.backbone.resnet import ResNet


class FPN(Backbone):
    """Top-down pathway with lateral 1x1 connections and 3x3 output convs.

    ``p6`` is a stride-2 max pool of ``p5`` (detectron2's ``LastLevelMaxPool``), used by the
    RPN only. Output: ``{"p2": [N, C, H/4, W/4], ..., "p6": [N, C, H/64, W/64]}``.
    The ResNet is ``self.bottom_up``; its parameter names are the classifier's.
    """

    size_divisibility = 32
    fused = False  # set by fuse()

    def __init__(self, bottom_up: ResNet, *, out_channels: int = 256) -> None:
        super().__init__()
        self.bottom_up = bottom_up
        shapes = bottom_up.output_shape()
        self.in_features = [n for n in ("res2", "res3", "res4", "res5") if n in shapes]
        if len(self.in_features) != 4:
            raise ValueError(f"FPN needs res2..res5 from the ResNet, got {list(shapes)}")
        self.lateral = nn.ModuleList(
            nn.Conv2d(shapes[n].channels, out_channels, 1) for n in self.in_features
        )
        self.output = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in self.in_features
        )
        for conv in (*self.lateral, *self.output):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self._shapes = {
            f"p{i + 2}": ShapeSpec(out_channels, shapes[n].stride)
            for i, n in enumerate(self.in_features)
        }
        self._shapes["p6"] = ShapeSpec(out_channels, shapes["res5"].stride * 2)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shapes)

    def fuse(self, winograd: bool = False) -> None:
        """For inference, in place: each lateral convolution adds the top-down map itself (in
        oneDNN's call, or right after the GEMM), the convolutions' bias adds are fused.

        Without ``winograd`` every convolution is a :class:`~resdet.layers.fuse.FusedConv2d`
        (oneDNN, NHWC, like the ResNet below). With it the pyramid runs NCHW, the layout
        NNPACK reads: the 3x3 outputs are Winograd convolutions (on maps of 12+ pixels a side)
        and the laterals :class:`~resdet.layers.fuse.Conv1x1NCHW` GEMMs, which read the
        ResNet's NHWC maps without a transposing copy; the RPN head follows
        (:meth:`resdet.modeling.detection.rpn.RPNHead.fuse`).
        """
        if self.fused:
            return
        for i, conv in enumerate(self.lateral):
            self.lateral[i] = Conv1x1NCHW(conv) if winograd else FusedConv2d(conv, relu=False)
        for i, conv in enumerate(self.output):
            self.output[i] = FusedConv2d(conv, relu=False, winograd=winograd)
        self.fused = True

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        bottom = self.bottom_up(x)
        feats = [bottom[n] for n in self.in_features]
        prev = self.lateral[-1](feats[-1])
        outs = [self.output[-1](prev)]
        for feat, lateral, output in zip(
            feats[-2::-1], list(self.lateral)[-2::-1], list(self.output)[-2::-1]
        ):
            top_down = F.interpolate(prev, size=feat.shape[-2:], mode="nearest")
            prev = lateral(feat, top_down) if self.fused else lateral(feat) + top_down
            outs.insert(0, output(prev))
        result = {f"p{i + 2}": o for i, o in enumerate(outs)}
        result["p6"] = F.max_pool2d(outs[-1], kernel_size=1, stride=2)
        return result
