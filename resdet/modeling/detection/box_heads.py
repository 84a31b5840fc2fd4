"""Box heads: features for each region (:class:`BoxHead`: RoI pooling, then per-region layers).

- ``C4BoxHead``: the paper's design (Appendix A). RoI pooling to 14x14 on res4 (stride 16),
  then conv5_x (the backbone's own ``res5`` stage, which halves it to 7x7) and global
  average pooling: "conv5_x ... as the per-region classifier".
- ``FPNBoxHead``: multi-level RoIAlign to 7x7 (Lin et al. 2017), then two 1024-d fc layers.

RoIAlign's ``aligned`` (half-pixel offset) defaults to detectron2's ROIAlignV2 (True) for C4
and to torchvision's ``MultiScaleRoIAlign`` (False) for FPN; ``ROI_HEADS.POOLER_ALIGNED`` sets
either, so converted detectors pool exactly as their source did.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_pool

from resdet.layers.fuse import CastOnceLinear
from resdet.layers.roi_align import MultiScaleRoIAlign, box_dtype, roi_align


class BoxHead(nn.Module):
    """The box-head contract: ``forward(features, proposals, image_sizes) -> [R, out_channels]``
    features of every proposal of the batch (``R`` = all images' proposals, in order), which the
    shared :class:`~resdet.modeling.detection.roi_heads.BoxPredictor` classifies.

    A head is RoI pooling (:meth:`pool`: ``features`` and per-image ``[R_i, 4]`` xyxy boxes in
    the padded input frame -> ``[R, C, r, r]``) followed by per-region layers (:meth:`head`:
    ``[R, C, r, r] -> [R, out_channels]``). The boxes are cast here, once for every head, to
    the :func:`box_dtype` of the maps (all of one dtype): RoI coordinates stay fp32 next to
    bf16 maps. ``image_sizes`` (the unpadded ``(h, w)`` of each image) completes the contract;
    neither head needs it.
    """

    out_channels: int

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> torch.Tensor:
        dtype = box_dtype(next(iter(features.values())).dtype)
        return self.head(self.pool(features, [p.to(dtype) for p in proposals]))

    def pool(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class C4BoxHead(BoxHead):
    """RoIAlign/RoIPool on one feature map, then ``res5`` and average pooling -> ``[R, C5]``.

    Args:
        res5: the backbone's conv5_x stage. It is *borrowed*, not owned: its parameters stay
            under ``backbone.layer4.*``, so a classification checkpoint loads into the detector
            with the same keys (only ``fc.*`` left over) and freezing works as for any stage.
        out_channels: channels after ``res5`` (2048 for ResNet-50/101).
    """

    def __init__(
        self,
        in_feature: str,
        res5: nn.Module,
        *,
        stride: int,
        out_channels: int,
        resolution: int = 14,
        sampling_ratio: int = 0,
        pooler_type: str = "ROIAlign",
        aligned: bool = True,
    ) -> None:
        super().__init__()
        if pooler_type not in ("ROIAlign", "ROIPool"):
            raise ValueError(f"POOLER_TYPE must be 'ROIAlign' or 'ROIPool', got '{pooler_type}'")
        self.in_feature = in_feature
        self.scale = 1.0 / stride
        self.resolution = resolution
        self.sampling_ratio = sampling_ratio
        self.pooler_type = pooler_type
        self.aligned = aligned
        # Bypass nn.Module registration on purpose (see the class docstring).
        self.__dict__["res5"] = res5
        self.out_channels = out_channels

    def pool(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]) -> torch.Tensor:
        x = features[self.in_feature]
        if self.pooler_type == "ROIAlign":
            pooled = roi_align(
                x, boxes, self.resolution, self.scale, self.sampling_ratio, self.aligned
            )
        else:
            pooled = roi_pool(x, boxes, self.resolution, self.scale)
        if x.is_contiguous(memory_format=torch.channels_last):
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        return pooled

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        # All RoIs of the batch go through res5 in one call: one big GEMM-friendly batch.
        return self.res5(pooled).mean(dim=(2, 3))


class FPNBoxHead(BoxHead):
    """Multi-level RoIAlign (level chosen by box size) -> flatten -> fc -> fc -> ``[R, fc_dim]``."""

    def __init__(
        self,
        in_features: Sequence[str],
        *,
        in_channels: int,
        first_stride: int,
        resolution: int = 7,
        sampling_ratio: int = 0,
        fc_dim: int = 1024,
        aligned: bool = False,
        canonical_size: int = 224,
    ) -> None:
        super().__init__()
        self.pooler = MultiScaleRoIAlign(
            list(in_features),
            resolution,
            sampling_ratio,
            aligned=aligned,
            canonical_scale=canonical_size,
        )
        self.fc1 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.out_channels = fc_dim
        self.first_stride = first_stride
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)

    def pool(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]) -> torch.Tensor:
        feats = {k: features[k] for k in self.pooler.featmap_names}
        first = feats[self.pooler.featmap_names[0]]
        # MultiScaleRoIAlign infers each level's scale from the padded input size.
        input_size = (first.shape[-2] * self.first_stride, first.shape[-1] * self.first_stride)
        return self.pooler(feats, boxes, [input_size] * len(boxes))

    def fuse(self, winograd: bool = False) -> None:
        """For inference, in place: the fully connected layers keep a bf16 copy of their
        weights for CPU bf16 autocast (:class:`~resdet.layers.fuse.CastOnceLinear`), instead
        of a cast on every call. ``winograd`` is the fusing walk's and not used."""
        if not isinstance(self.fc1, CastOnceLinear):
            self.fc1, self.fc2 = CastOnceLinear(self.fc1), CastOnceLinear(self.fc2)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(pooled.flatten(1)))
        return F.relu(self.fc2(x))
