"""Box regression targets: the (dx, dy, dw, dh) parameterisation of R-CNN.

For a reference box with centre (x_a, y_a) and size (w_a, h_a) and a target box (x, y, w, h):
``dx = wx (x - x_a) / w_a``, ``dy = wy (y - y_a) / h_a``, ``dw = ww log(w / w_a)``,
``dh = wh log(h / h_a)`` (Girshick et al. 2014, Appendix C), with per-coordinate weights
``(wx, wy, ww, wh)``: 1 for the RPN, 10/10/5/5 for the box head (the detectron convention).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

# Clamp dw/dh before exp so that a wild prediction cannot overflow (log(1000 / 16)).
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, reference: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Deltas ``[N, 4]`` that turn ``reference`` ``[N, 4]`` xyxy into ``target`` ``[N, 4]``."""
        wx, wy, ww, wh = self.weights
        rw = reference[:, 2] - reference[:, 0]
        rh = reference[:, 3] - reference[:, 1]
        rx = reference[:, 0] + 0.5 * rw
        ry = reference[:, 1] + 0.5 * rh
        tw = target[:, 2] - target[:, 0]
        th = target[:, 3] - target[:, 1]
        tx = target[:, 0] + 0.5 * tw
        ty = target[:, 1] + 0.5 * th
        return torch.stack(
            [
                wx * (tx - rx) / rw,
                wy * (ty - ry) / rh,
                ww * torch.log(tw / rw),
                wh * torch.log(th / rh),
            ],
            dim=1,
        )

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Apply ``deltas`` ``[N, 4k]`` to ``reference`` ``[N, 4]``; returns ``[N, 4k]`` xyxy.

        ``k > 1`` decodes class-specific deltas (k classes) against the same reference box.
        Computed in float32 whatever the input dtype, since boxes need the precision.
        """
        deltas = deltas.float()
        reference = reference.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        w = (reference[:, 2] - reference[:, 0]).unsqueeze(1)
        h = (reference[:, 3] - reference[:, 1]).unsqueeze(1)
        cx = reference[:, 0].unsqueeze(1) + 0.5 * w
        cy = reference[:, 1].unsqueeze(1) + 0.5 * h
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        pcx, pcy = dx * w + cx, dy * h + cy
        pw, ph = torch.exp(dw) * w, torch.exp(dh) * h
        boxes = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=2)
        return boxes.reshape(deltas.shape)
