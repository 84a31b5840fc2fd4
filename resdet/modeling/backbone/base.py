"""The backbone contract: heads size themselves from ``output_shape()``."""

from __future__ import annotations

from typing import Dict, NamedTuple

import torch
import torch.nn as nn


class ShapeSpec(NamedTuple):
    """Channels and stride (input pixels per feature pixel) of one backbone output."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """A module mapping an image batch ``[N, 3, H, W]`` to named feature maps.

    Subclasses implement ``forward(x) -> {name: Tensor[N, C, H/stride, W/stride]}`` and
    ``output_shape() -> {name: ShapeSpec}`` for exactly the names ``forward`` returns.
    """

    size_divisibility: int = 1  # inputs padded to a multiple of this by the detector

    def output_shape(self) -> Dict[str, ShapeSpec]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
