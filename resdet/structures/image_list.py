"""A padded batch of images that remembers each image's own size."""

from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import torch


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
