"""The thin adapter that export traces: one image tensor in, a flat tuple of tensors out.

``FasterRCNN.forward`` takes a list of dicts and returns a list of dicts, which
``torch.jit.trace`` and ``torch.onnx.export`` cannot pass through. :class:`TracingAdapter`
(detectron2's ``TracingAdapter`` idea, for one image) only packs the tensor into the model's
input and unpacks its output: every step in between -- normalisation, padding, anchors,
proposal top-k and NMS, RoI pooling, post-processing -- is the model's own forward, written so
that traced sizes stay graph values (``resdet.layers.tracing``, ``ImageList.from_tensors``,
``AnchorGenerator.grid_anchors``). Called eagerly, the adapter returns exactly the model's
detections, so the parity check of an export compares with the model itself.

Input: ``float32[1, 3, H, W]``, RGB in 0-255, already resized as the model expects (the
Predictor's test transform: shorter side ``INPUT.MIN_SIZE_TEST``, longer side at most
``INPUT.MAX_SIZE_TEST``). Normalisation, BGR flipping and padding happen inside.
Output: ``(boxes float32[D, 4] xyxy in the input's pixels, scores float32[D], labels int64[D])``
with labels in 0..K-1.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

Detections = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # boxes [D, 4], scores, labels


def check_image(image: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``image`` is ``[1, 3, H, W]`` (the exported input)."""
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"expected float[1, 3, H, W], got {tuple(image.shape)}")


class TracingAdapter(nn.Module):
    """Wraps an eval-mode detector (``FasterRCNN`` or its fused inference copy); shares (does
    not copy) its parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # The adapter itself is put in eval mode too (which sets the model's): exporters put the
        # module back into the mode they found it in, which would otherwise be training.
        self.eval()

    def forward(self, image: torch.Tensor) -> Detections:
        if not torch.jit.is_tracing():  # while tracing, the shape check would be recorded
            check_image(image)
        (det,) = self.model([{"image": image[0]}])
        return det["boxes"], det["scores"], det["labels"]
