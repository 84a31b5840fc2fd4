"""Anchor generation: ``len(sizes) * len(aspect_ratios)`` anchors centred on each feature pixel.

Anchors are absolute xyxy pixels. For a feature map of stride ``s``, anchor centres are at
``(x * s, y * s)`` for every feature pixel ``(x, y)`` (offset 0, as detectron2). At each
location the anchors are ordered size-major (all ratios of the first size, then the next),
which is the order the RPN head's ``A`` output channels are read in.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """``float32[A, 4]`` anchors centred at the origin.

    An anchor of size ``s`` and ratio ``r = h / w`` keeps the area ``s**2``:
    ``w = s / sqrt(r)``, ``h = s * sqrt(r)`` (Faster R-CNN, Ren et al. 2015, Sec. 3.1.1).
    """
    out = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Anchors for each feature level.

    Args:
        sizes: one list of sizes per level (C4: ``[[128, 256, 512]]``; FPN: ``[[32], ..., [512]]``).
            A single list is broadcast to every level.
        aspect_ratios: ``h / w`` ratios shared by all levels.
        strides: the stride of each level, from the backbone's ``output_shape()``.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[float],
        strides: Sequence[int],
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
        self.num_anchors = len(sizes[0]) * len(aspect_ratios)
        if any(len(s) * len(aspect_ratios) != self.num_anchors for s in sizes):
            raise ValueError("every level needs the same number of anchor sizes")
        for i, s in enumerate(sizes):
            self.register_buffer(f"cell_{i}", cell_anchors(s, aspect_ratios), persistent=False)
        self._cache: Dict[Tuple, List[torch.Tensor]] = {}

    def grid_anchors(self, grid_sizes: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
        """``[float32[H_l * W_l * A, 4]]`` per level, ordered (y, x, anchor)."""
        key = (tuple(grid_sizes), str(self.cell_0.device))
        if key in self._cache:
            return self._cache[key]
        out = []
        for i, ((h, w), stride) in enumerate(zip(grid_sizes, self.strides)):
            cell = getattr(self, f"cell_{i}")
            xs = torch.arange(w, dtype=torch.float32, device=cell.device) * stride
            ys = torch.arange(h, dtype=torch.float32, device=cell.device) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + cell.view(1, -1, 4)).reshape(-1, 4))
        if len(self._cache) > 32:  # many distinct input sizes: keep the cache bounded
            self._cache.clear()
        self._cache[key] = out
        return out

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return self.grid_anchors([tuple(f.shape[-2:]) for f in features])
