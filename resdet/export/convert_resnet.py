"""ImageNet ResNet weights trained elsewhere, renamed and described for resdet.

Three source layouts are understood, all ending as a resdet classifier checkpoint
``{"model": state_dict, "config": config_to_dict(cfg), "meta": {...}}`` whose config records
what the weights need (depth, stride placement, norm, input channel order, pixel statistics):

- **torchvision** ``resnet{18,34,50,101,152}-*.pth`` state dicts. resdet's ResNet uses
  torchvision's parameter names, so the tensors are kept as they are; the config says
  stride in the 3x3 ("ResNet v1.5"), RGB input, ImageNet mean/std in 0-255 units.
- **MSRA / Caffe2** ``R-50.pkl``, ``R-101.pkl`` (Detectron's ``ImageNetPretrained/MSRA``):
  pickled dicts of numpy arrays with Caffe2 names (``conv1_w``, ``res_conv1_bn_s``,
  ``res2_0_branch2a_w``, ``res2_0_branch1_bn_b``, ``fc1000_w``...), read with the restricted
  unpickler. These nets put the stride in the first 1x1 of a bottleneck, read BGR 0-255 images
  minus a mean with no std, and store BN as a plain affine ``y = x * s + b``.
- **detectron2** ``.pkl`` files ``{"model": {...}, "__author__": ...}`` with detectron2 names
  (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``, ``res2.0.shortcut.weight``), e.g.
  ``ImageNetPretrained/torchvision/R-50.pkl``. ``__author__ == "torchvision"`` means torchvision
  conventions; any other author is taken to be MSRA conventions (a warning says so).

Affine-only BN (``s``, ``b``) becomes a norm layer with ``weight = s``, ``bias = b``,
``running_mean = 0`` and ``running_var = 1 - eps``: FrozenBN and eval-mode BN compute
``x * weight / sqrt(running_var + eps) + ...``, so ``1 - eps`` makes the scale exactly ``s``
rather than ``s / sqrt(1 + 1e-5)``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import torch

from resdet.config.schema import Config
from resdet.modeling.backbone.resnet import IMAGENET_DEPTHS

logger = logging.getLogger(__name__)

__all__ = [
    "CAFFE2_PIXEL_MEAN_BGR",
    "FROZEN_BN_EPS",
    "TORCHVISION_MEAN_RGB",
    "TORCHVISION_STD_RGB",
    "ConversionError",
    "as_tensors",
    "caffe2_to_resdet",
    "d2_resnet_key",
    "detectron2_to_resdet",
    "imagenet_config",
    "layout_from_resdet_keys",
    "torchvision_to_resdet",
]

FROZEN_BN_EPS = 1e-5  # torchvision FrozenBatchNorm2d and nn.BatchNorm2d default
# Detectron2's MSRA pixel mean, BGR order, 0-255 units (MODEL.PIXEL_MEAN for R-50.pkl).
CAFFE2_PIXEL_MEAN_BGR = [103.53, 116.28, 123.675]
TORCHVISION_MEAN_RGB = [123.675, 116.28, 103.53]  # 255 * (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = [58.395, 57.12, 57.375]  # 255 * (0.229, 0.224, 0.225)

_CAFFE2_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|b|bn_s|bn_b|bn_rm|bn_riv)$")
_CAFFE2_STEM = {
    "conv1_w": "conv1.weight",
    "res_conv1_bn_s": "bn1.weight",
    "res_conv1_bn_b": "bn1.bias",
    "res_conv1_bn_rm": "bn1.running_mean",
    "res_conv1_bn_riv": "bn1.running_var",
    "fc1000_w": "fc.weight",
    "fc1000_b": "fc.bias",
    "pred_w": "fc.weight",  # some Caffe2 ImageNet models name the classifier "pred"
    "pred_b": "fc.bias",
}
_BRANCH = {"2a": "1", "2b": "2", "2c": "3"}
_BN_SUFFIX = {"bn_s": "weight", "bn_b": "bias", "bn_rm": "running_mean", "bn_riv": "running_var"}


class ConversionError(ValueError):
    """The weights cannot be converted; the message names the file and the key or shape."""


def imagenet_config(
    depth: int,
    num_classes: int,
    msra: bool,
    width: int = 64,
    to_rgb: bool = False,
) -> Config:
    """A classifier config describing ImageNet weights of the given origin.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_classes: size of the ``fc`` layer (1000 for ImageNet; 0 is stored as 1000 when the
            file has no classifier, whose keys are then reported missing).
        msra: MSRA/Caffe2 conventions (stride in the 1x1, FrozenBN, BGR 0-255 minus mean,
            std 1) instead of torchvision's (stride in the 3x3, BN, RGB with ImageNet mean/std).
        to_rgb: for MSRA weights whose ``conv1`` was flipped to RGB order (see
            :func:`caffe2_to_resdet`): RGB input, the same mean in RGB order, std 1.
    """
    cfg = Config()
    cfg.MODEL.ARCH = "classifier"
    cfg.MODEL.NUM_CLASSES = num_classes or 1000
    b = cfg.MODEL.BACKBONE
    b.NAME, b.DEPTH, b.STEM, b.WIDTH, b.FREEZE_AT = "resnet", depth, "imagenet", width, 0
    b.OUT_FEATURES = ["logits"]
    if msra:
        b.STRIDE_IN_1X1, b.NORM = True, "FrozenBN"
        cfg.MODEL.INPUT_FORMAT = "RGB" if to_rgb else "BGR"
        mean = CAFFE2_PIXEL_MEAN_BGR[::-1] if to_rgb else CAFFE2_PIXEL_MEAN_BGR
        cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = list(mean), [1.0, 1.0, 1.0]
    else:
        b.STRIDE_IN_1X1, b.NORM = False, "BN"
        cfg.MODEL.INPUT_FORMAT = "RGB"
        cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = (
            list(TORCHVISION_MEAN_RGB),
            list(TORCHVISION_STD_RGB),
        )
    return cfg


def _infer_depth(blocks: Dict[int, int], bottleneck: bool, source: str) -> int:
    """Depth from the number of blocks in each of the 4 stages (Table 1 of the paper)."""
    layout = tuple(blocks.get(i, 0) for i in range(1, 5))
    for depth, (kind, layers) in IMAGENET_DEPTHS.items():
        if tuple(layers) == layout and (kind == "bottleneck") == bottleneck:
            return depth
    raise ConversionError(
        f"{source}: blocks per stage {layout} ({'bottleneck' if bottleneck else 'basic'}) match "
        f"no ImageNet ResNet depth {sorted(IMAGENET_DEPTHS)}; only plain ResNets are supported "
        "(not ResNeXt, wide or CIFAR variants)"
    )


def layout_from_resdet_keys(sd: Mapping[str, Any], source: str) -> Tuple[int, int, int]:
    """``(depth, width, num_classes)`` from torchvision-style keys."""
    blocks: Dict[int, int] = {}
    for k in sd:
        m = re.match(r"^layer(\d)\.(\d+)\.conv1\.weight$", k)
        if m:
            stage, idx = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks.get(stage, 0), idx + 1)
    if "conv1.weight" not in sd or not blocks:
        raise ConversionError(
            f"{source}: no 'conv1.weight' / 'layerN.M.conv1.weight' keys: not a ResNet state "
            f"dict (first keys: {list(sd)[:5]})"
        )
    depth = _infer_depth(blocks, "layer1.0.conv3.weight" in sd, source)
    width = int(sd["conv1.weight"].shape[0])
    num_classes = int(sd["fc.weight"].shape[0]) if "fc.weight" in sd else 0
    return depth, width, num_classes


def as_tensors(sd: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """numpy arrays to tensors, floating point to float32 (Caffe2 blobs may be float64)."""
    out = {}
    for k, v in sd.items():
        if isinstance(v, np.ndarray):
            # not np.ascontiguousarray: it turns 0-d arrays (num_batches_tracked) into 1-d
            v = torch.from_numpy(v if v.flags.c_contiguous else v.copy(order="C"))
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.float()
        out[k] = v
    return out


def torchvision_to_resdet(
    state_dict: Mapping[str, Any], source: str = "state dict"
) -> Tuple[Dict[str, torch.Tensor], Config]:
    """A torchvision ResNet state dict: same names, so only the config is worked out.

    Returns ``(state_dict, config)``. Raises :class:`ConversionError` for non-ResNet layouts.
    """
    sd = as_tensors({k.removeprefix("module."): v for k, v in state_dict.items()})
    depth, width, num_classes = layout_from_resdet_keys(sd, source)
    return sd, imagenet_config(depth, num_classes, msra=False, width=width)


_NORM_WEIGHT = re.compile(r"^(bn1|layer\d\.\d+\.(bn\d|downsample\.1))\.weight$")


def _affine_bn_fill(sd: Dict[str, torch.Tensor]) -> None:
    """Give affine-only norm layers ``running_mean = 0`` and ``running_var = 1 - eps``."""
    for key in [k for k in sd if _NORM_WEIGHT.match(k)]:
        prefix, n = key[: -len(".weight")], sd[key].shape[0]
        sd.setdefault(prefix + ".running_mean", torch.zeros(n))
        sd.setdefault(prefix + ".running_var", torch.full((n,), 1.0 - FROZEN_BN_EPS))


def _flip_conv1_to_rgb(sd: Dict[str, torch.Tensor]) -> None:
    # conv1 over BGR channels == conv1 with its input channels reversed over RGB channels.
    sd["conv1.weight"] = sd["conv1.weight"].flip(1).contiguous()


def caffe2_to_resdet(
    blobs: Mapping[str, Any], source: str = "pickle", to_rgb: bool = False
) -> Tuple[Dict[str, torch.Tensor], Config]:
    """MSRA / Caffe2 blobs (``conv1_w``, ``res2_0_branch2a_bn_s``...) to resdet names.

    Args:
        blobs: name -> numpy array (``"blobs"`` wrapper and ``*_momentum`` already removed).
        to_rgb: reverse ``conv1``'s input channels so the model reads RGB (classification in
            resdet reads RGB); the config then says RGB with the mean in RGB order.

    Returns:
        ``(state_dict, config)``. Blobs that are not part of a ResNet are logged and dropped.

    Raises:
        ConversionError: no ResNet blobs, or a block layout matching no depth.
    """
    sd: Dict[str, Any] = {}
    skipped: List[str] = []
    blocks: Dict[int, int] = {}
    bottleneck = False
    for name, value in blobs.items():
        if not isinstance(value, np.ndarray):
            skipped.append(name)
            continue
        if name in _CAFFE2_STEM:
            sd[_CAFFE2_STEM[name]] = value
            continue
        m = _CAFFE2_BLOCK.match(name)
        if m is None:
            skipped.append(name)
            continue
        stage, idx, branch, kind = int(m.group(1)) - 1, int(m.group(2)), m.group(3), m.group(4)
        if not 1 <= stage <= 4:
            skipped.append(name)
            continue
        blocks[stage] = max(blocks.get(stage, 0), idx + 1)
        bottleneck |= branch == "2c"
        if branch == "1":
            conv, norm = "downsample.0", "downsample.1"
        else:
            conv, norm = f"conv{_BRANCH[branch]}", f"bn{_BRANCH[branch]}"
        base = f"layer{stage}.{idx}."
        if kind == "w":
            sd[base + conv + ".weight"] = value
        elif kind == "b":
            sd[base + conv + ".bias"] = value  # resdet convs have no bias: reported unexpected
        else:
            sd[base + norm + "." + _BN_SUFFIX[kind]] = value
    if skipped:
        names = ", ".join(sorted(skipped)[:10]) + (" ..." if len(skipped) > 10 else "")
        logger.warning(
            "%s: %d blobs are not ResNet weights and were not converted: %s",
            source,
            len(skipped),
            names,
        )
    if "conv1.weight" not in sd or not blocks:
        raise ConversionError(
            f"{source}: no Caffe2 ResNet blobs ('conv1_w', 'res2_0_branch2a_w', ...) found; "
            f"keys start with {sorted(blobs)[:5]}"
        )
    depth = _infer_depth(blocks, bottleneck, source)
    sd = as_tensors(sd)
    _affine_bn_fill(sd)
    if to_rgb:
        _flip_conv1_to_rgb(sd)
    num_classes = int(sd["fc.weight"].shape[0]) if "fc.weight" in sd else 0
    width = int(sd["conv1.weight"].shape[0])
    return sd, imagenet_config(depth, num_classes, msra=True, width=width, to_rgb=to_rgb)


def d2_resnet_key(k: str) -> str:
    """A detectron2 ResNet key (``stem.conv1.norm.weight``, ``res2.0.shortcut.weight``,
    ``res5.2.conv3.norm.running_var``) as resdet's (torchvision's) name."""
    k = re.sub(r"^stem\.conv1\.norm\.", "bn1.", k)
    k = re.sub(r"^stem\.(conv1|fc)\.", r"\1.", k)
    k = re.sub(r"^linear\.", "fc.", k)
    k = re.sub(r"^res(\d)\.", lambda m: f"layer{int(m.group(1)) - 1}.", k)
    k = re.sub(r"\.conv(\d)\.norm\.", r".bn\1.", k)
    return k.replace(".shortcut.norm.", ".downsample.1.").replace(".shortcut.", ".downsample.0.")


def detectron2_to_resdet(
    model: Mapping[str, Any], author: str, source: str = "pickle", to_rgb: bool = False
) -> Tuple[Dict[str, torch.Tensor], Config]:
    """detectron2-named ResNet weights (``stem.conv1.norm.weight``, ``res2.0.shortcut...``)."""
    sd: Dict[str, Any] = {}
    for k, v in model.items():
        sd[d2_resnet_key(k.removeprefix("backbone.").removeprefix("bottom_up."))] = v
    sd = as_tensors(sd)
    depth, width, num_classes = layout_from_resdet_keys(sd, source)
    msra = author != "torchvision"
    if msra:
        logger.warning(
            "%s: detectron2 weights by %r: assuming MSRA conventions (stride in the 1x1, BGR "
            "input); weights by 'torchvision' would use torchvision's",
            source,
            author,
        )
        _affine_bn_fill(sd)
        if to_rgb:
            _flip_conv1_to_rgb(sd)
    return sd, imagenet_config(depth, num_classes, msra, width=width, to_rgb=msra and to_rgb)
