"""Faster R-CNN (Ren et al. 2015) on a ResNet, as He et al. 2015 use it (Appendix A).

The model owns its input handling: it takes uint8/float RGB images in 0-255, normalises them
with its own pixel statistics (flipping to BGR when the weights expect it) and pads them into
a batch, so a checkpoint plus an image is enough for inference.

Inputs: a list of dicts, one per image::

    {"image": Tensor[3, H, W] RGB 0-255 (already resized by the data pipeline),
     "boxes": float32[G, 4] xyxy in the image's pixels,      # training only
     "labels": int64[G] in 0..K-1,                             # training only
     "iscrowd": bool[G] (optional),
     "orig_size": (h0, w0) (optional): detections are rescaled to this frame}

Outputs: in training ``{"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}`` (scalar
tensors); in eval a list of ``{"boxes": float32[D, 4] xyxy, "scores": float32[D],
"labels": int64[D]}`` in original-image pixels.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn as nn

from resdet.modeling.backbone.base import Backbone
from resdet.modeling.backbone.fpn import FPN
from resdet.modeling.backbone.resnet import ResNet
from resdet.modeling.detection.roi_heads import ROIHeads
from resdet.modeling.detection.rpn import RPN
from resdet.structures.image_list import ImageList


class FasterRCNN(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        rpn: RPN,
        roi_heads: ROIHeads,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "RGB",
        size_divisibility: int = 32,
        channels_last: bool = False,
        pixel_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"MODEL.INPUT_FORMAT must be 'RGB' or 'BGR', got '{input_format}'")
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.input_format = input_format
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.channels_last = channels_last
        self.pixel_scale = float(pixel_scale)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        if channels_last:
            self.use_channels_last()

    def use_channels_last(self, weights: bool = True) -> FasterRCNN:
        """Run NHWC (channels_last), in place; returns the model.

        The input batch is made channels_last in :meth:`preprocess`, so every convolution sees
        NHWC. ``weights``: also convert the parameters and buffers (their objects stay, so an
        optimizer keeps working); a fused inference copy passes ``False``, its convolutions
        keep the layout their kernels read (:class:`~resdet.layers.fuse.FusedConv2d`).
        """
        if weights:
            self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    @property
    def resnet(self) -> ResNet:
        """The ResNet trunk: where a classification checkpoint loads (leaving only ``fc.*``)."""
        return self.backbone.bottom_up if isinstance(self.backbone, FPN) else self.backbone

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """``[3, H, W]`` RGB 0-255 -> the network's input: channel order, scale, mean and std."""
        img = image.to(self.device, non_blocking=True).float()
        if self.input_format == "BGR":
            img = img.flip(0)
        if self.pixel_scale != 1.0:
            img = img / self.pixel_scale
        return (img - self.pixel_mean) / self.pixel_std

    def preprocess(self, batched_inputs: List[Dict[str, Any]]) -> ImageList:
        images = [self.normalize(x["image"]) for x in batched_inputs]
        batch = ImageList.from_tensors(images, self.size_divisibility)
        if self.channels_last:
            batch = ImageList(
                batch.tensor.contiguous(memory_format=torch.channels_last), batch.image_sizes
            )
        return batch

    def _targets(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, torch.Tensor]]:
        targets = []
        for x in batched_inputs:
            if "boxes" not in x or "labels" not in x:
                raise ValueError("training inputs need 'boxes' and 'labels' for every image")
            t = {
                "boxes": torch.as_tensor(x["boxes"], dtype=torch.float32, device=self.device),
                "labels": torch.as_tensor(x["labels"], dtype=torch.int64, device=self.device),
            }
            if "iscrowd" in x:
                t["iscrowd"] = torch.as_tensor(x["iscrowd"], dtype=torch.bool, device=self.device)
            targets.append(t)
        return targets

    def forward(
        self, batched_inputs: List[Dict[str, Any]]
    ) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        images = self.preprocess(batched_inputs)
        features = self.backbone(images.tensor)
        if self.training:
            targets = self._targets(batched_inputs)
            proposals, rpn_losses = self.rpn(images.image_sizes, features, targets)
            _, head_losses = self.roi_heads(features, proposals, images.image_sizes, targets)
            return {**rpn_losses, **head_losses}
        proposals, _ = self.rpn(images.image_sizes, features)
        detections, _ = self.roi_heads(features, proposals, images.image_sizes)
        return [
            rescale_detections(d, size, x.get("orig_size"))
            for d, size, x in zip(detections, images.image_sizes, batched_inputs)
        ]


def rescale_detections(
    det: Dict[str, torch.Tensor], size: Tuple[int, int], orig_size: Any
) -> Dict[str, torch.Tensor]:
    """Map boxes from the network's input frame ``size`` to ``orig_size`` = (h, w), if given."""
    if orig_size is None:
        return det
    oh, ow = int(orig_size[0]), int(orig_size[1])
    h, w = size
    if (oh, ow) == (h, w):
        return det
    scale = det["boxes"].new_tensor([ow / w, oh / h, ow / w, oh / h])
    boxes = det["boxes"] * scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ow)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, oh)
    return {**det, "boxes": boxes}
