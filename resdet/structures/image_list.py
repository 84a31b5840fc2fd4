"""A padded batch of images that remembers each image's own size."""

from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F


class ImageList(NamedTuple):
    """``tensor``: ``[N, C, Hmax, Wmax]`` zero-padded at the bottom/right;
    ``image_sizes``: the ``(h, w)`` of each image before padding (what boxes are clipped to)."""

    tensor: torch.Tensor
    image_sizes: List[Tuple[int, int]]

    @staticmethod
    def from_tensors(
        tensors: Sequence[torch.Tensor], size_divisibility: int = 1, pad_value: float = 0.0
    ) -> ImageList:
        """Pad ``[C, H, W]`` tensors to a common size, a multiple of ``size_divisibility``."""
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors: no images")
        if len(tensors) == 1 and torch.jit.is_tracing():
            return ImageList._traced_single(tensors[0], size_divisibility, pad_value)
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h = max(h for h, _ in sizes)
        max_w = max(w for _, w in sizes)
        if size_divisibility > 1:
            d = size_divisibility
            max_h, max_w = (max_h + d - 1) // d * d, (max_w + d - 1) // d * d
        if len(tensors) == 1 and sizes[0] == (max_h, max_w):
            return ImageList(tensors[0].unsqueeze(0), sizes)
        batch = tensors[0].new_full((len(tensors), tensors[0].shape[0], max_h, max_w), pad_value)
        for img, pad in zip(tensors, batch):
            pad[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batch, sizes)

    @staticmethod
    def _traced_single(tensor: torch.Tensor, size_divisibility: int, pad_value: float) -> ImageList:
        """One image while tracing: the size and the padding stay graph values (the traced
        ``tensor.shape``), so the exported model pads any input size correctly; ``int()`` or a
        size comparison would freeze the example's size into the graph."""
        h, w = tensor.shape[-2], tensor.shape[-1]
        d = max(size_divisibility, 1)
        pad_h, pad_w = (h + d - 1) // d * d - h, (w + d - 1) // d * d - w
        return ImageList(F.pad(tensor, [0, pad_w, 0, pad_h], value=pad_value)[None], [(h, w)])
