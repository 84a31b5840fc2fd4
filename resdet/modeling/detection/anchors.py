"""Anchor generation: ``len(sizes) * len(aspect_ratios)`` anchors centred on each feature pixel.

Anchors are absolute xyxy pixels. For a feature map of stride ``s``, anchor centres are at
``(x * s, y * s)`` for every feature pixel ``(x, y)`` (offset 0, as detectron2). At each
location the anchors are ordered size-major (all ratios of the first size, then the next),
which is the order the RPN head's ``A`` output channels are read in.

Two options reproduce torchvision's ``AnchorGenerator`` exactly (for converted torchvision
detectors): ``round_anchors`` rounds each cell anchor's corners to whole pixels, and
``stride_from_input`` takes each level's stride as ``input size // feature size`` per axis
(which differs from the nominal stride on a level whose size was rounded up, e.g. FPN's p6).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn


def cell_anchors(
    sizes: Sequence[float], aspect_ratios: Sequence[float], round_anchors: bool = False
) -> torch.Tensor:
    """``float32[A, 4]`` anchors centred at the origin.

    An anchor of size ``s`` and ratio ``r = h / w`` keeps the area ``s**2``:
    ``w = s / sqrt(r)``, ``h = s * sqrt(r)`` (Faster R-CNN, Ren et al. 2015, Sec. 3.1.1).
    ``round_anchors`` rounds the corners to whole pixels (torchvision).
    """
    out = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    anchors = torch.tensor(out, dtype=torch.float32)
    return anchors.round() if round_anchors else anchors


class AnchorGenerator(nn.Module):
    """Anchors for each feature level.

    Args:
        sizes: one list of sizes per level (C4: ``[[128, 256, 512]]``; FPN: ``[[32], ..., [512]]``).
            A single list is broadcast to every level.
        aspect_ratios: ``h / w`` ratios shared by all levels.
        strides: the stride of each level, from the backbone's ``output_shape()``.
        round_anchors: round the cell anchors to whole pixels (torchvision).
        stride_from_input: stride of each level = input size // feature size, per axis, with
            the input size taken as the first level's size times its nominal stride (exact for
            inputs padded to a multiple of it), as torchvision computes it.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        *,
        aspect_ratios: Sequence[float],
        strides: Sequence[int],
        round_anchors: bool = False,
        stride_from_input: bool = False,
    ) -> None:
        super().__init__()
        if len(sizes) == 1 and len(strides) > 1:
            sizes = list(sizes) * len(strides)
        if len(sizes) != len(strides):
            raise ValueError(
                f"MODEL.ANCHOR.SIZES has {len(sizes)} levels but the RPN reads {len(strides)} "
                "feature maps; give one list of sizes per level"
            )
        self.strides = list(strides)
        self.stride_from_input = stride_from_input
        self.num_anchors = len(sizes[0]) * len(aspect_ratios)
        if any(len(s) * len(aspect_ratios) != self.num_anchors for s in sizes):
            raise ValueError("every level needs the same number of anchor sizes")
        for i, s in enumerate(sizes):
            cell = cell_anchors(s, aspect_ratios, round_anchors)
            self.register_buffer(f"cell_{i}", cell, persistent=False)
        self._cache: Dict[Tuple, List[torch.Tensor]] = {}

    def grid_anchors(self, grid_sizes: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
        """``[float32[H_l * W_l * A, 4]]`` per level, ordered (y, x, anchor).

        ``grid_sizes`` are Python ints in eager mode (the result is cached per size) and the
        traced 0-dim sizes while tracing, where nothing is cached: the grids are then computed
        in the graph from the input's size.
        """
        tracing = torch.jit.is_tracing()
        key = (tuple(grid_sizes), str(self.cell_0.device))
        if not tracing and key in self._cache:
            return self._cache[key]
        out = []
        input_h, input_w = (s * self.strides[0] for s in grid_sizes[0])
        for i, ((h, w), stride) in enumerate(zip(grid_sizes, self.strides)):
            cell = getattr(self, f"cell_{i}")
            stride_x = input_w // w if self.stride_from_input else stride
            stride_y = input_h // h if self.stride_from_input else stride
            xs = torch.arange(w, dtype=torch.float32, device=cell.device) * stride_x
            ys = torch.arange(h, dtype=torch.float32, device=cell.device) * stride_y
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + cell.view(1, -1, 4)).reshape(-1, 4))
        if tracing:
            return out
        if len(self._cache) > 32:  # many distinct input sizes: keep the cache bounded
            self._cache.clear()
        self._cache[key] = out
        return out

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return self.grid_anchors([tuple(f.shape[-2:]) for f in features])
