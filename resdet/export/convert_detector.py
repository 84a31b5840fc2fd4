"""Whole Faster R-CNN detectors trained elsewhere, as resdet checkpoints that behave the same.

Two sources are understood:

- **torchvision** ``fasterrcnn_resnet50_fpn`` state dicts (``FasterRCNN_ResNet50_FPN_Weights``,
  or any ``FasterRCNN`` on ``resnet_fpn_backbone``: ``backbone.body.*``, ``backbone.fpn.*``,
  ``rpn.head.*``, ``roi_heads.box_head.fc6/fc7``, ``roi_heads.box_predictor.*``).
  ``fasterrcnn_resnet50_fpn_v2`` is refused: its FPN and box head carry BN layers, its box head
  four convolutions and its RPN head two, none of which resdet's config can describe.
- **detectron2** Faster R-CNN checkpoints (model-zoo ``COCO-Detection/faster_rcnn_R_{50,101}_
  {C4,FPN}_{1x,3x}``, ``PascalVOC-Detection/faster_rcnn_R_50_C4``): ``{"model": {name: array},
  "__author__", ...}`` pickles or torch state dicts with detectron2 names (``backbone.res2.0.
  conv1.norm.weight``, ``roi_heads.res5.*``, ``proposal_generator.rpn_head.*``,
  ``backbone.fpn_lateral2``, ``roi_heads.box_predictor.*``).

The written config reproduces the source's behaviour, not resdet's defaults: anchors (sizes,
ratios, torchvision's rounding and input-derived strides), RoIAlign ``aligned`` and sampling,
proposal counts, box-regression weights, pixel format and statistics, stride placement, test
sizes, thresholds, and the class names and dataset ids (COCO's 80 with their real ids). The
predictor is stored in resdet's layout (background is the *last* logit, class-specific deltas
without a background slot): torchvision's background logit 0 and its 4 background deltas are
moved and dropped; the softmax is unchanged by the reordering.

torchvision's COCO head has 91 outputs: background, the 80 classes at their COCO ids, and 10
``N/A`` ids COCO never used. By default they are dropped (80 classes with real names and ids);
in a trained model those logits never saw a positive and carry no probability mass, but with
random weights they do, so ``keep_unused_classes=True`` keeps all 90 for exact reproduction.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from resdet.config.schema import Config
from resdet.export.convert_resnet import (
    CAFFE2_PIXEL_MEAN_BGR,
    TORCHVISION_MEAN_RGB,
    TORCHVISION_STD_RGB,
    ConversionError,
    as_tensors,
    d2_resnet_key,
    layout_from_resdet_keys,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DetectorImport",
    "coco_categories",
    "detectron2_detector_to_resdet",
    "detector_kind",
    "torchvision_detector_to_resdet",
]

FPN_ANCHOR_SIZES = [[32.0], [64.0], [128.0], [256.0], [512.0]]
C4_D2_ANCHOR_SIZES = [[32.0, 64.0, 128.0, 256.0, 512.0]]  # detectron2's C4: 15 anchors


class DetectorImport(NamedTuple):
    """A converted detector: resdet-named tensors, the config that reproduces the source, and
    the class names and dataset category ids of its labels ``0..K-1``."""

    state_dict: Dict[str, torch.Tensor]
    config: Config
    class_names: List[str]
    category_ids: List[int]


def coco_categories(keep_unused: bool = False) -> Tuple[List[str], List[int]]:
    """COCO's class names and category ids, in id order (torchvision's table of the 2017
    release). ``keep_unused`` includes the 10 unused ids 12, 26, ... named ``N/A``."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    table = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # index = COCO id
    pairs = [(name, i) for i, name in enumerate(table) if i > 0]
    if not keep_unused:
        pairs = [(name, i) for name, i in pairs if name != "N/A"]
    return [n for n, _ in pairs], [i for _, i in pairs]


def detector_kind(sd: Mapping[str, Any]) -> Optional[str]:
    """``"torchvision"`` / ``"detectron2"`` for a whole-detector state dict, None otherwise."""
    keys = list(sd)
    if any(k.startswith("roi_heads.box_predictor.") for k in keys):
        if any(k.startswith("backbone.body.") or k.startswith("rpn.head.") for k in keys):
            return "torchvision"
        if any(k.startswith("proposal_generator.") for k in keys):
            return "detectron2"
    return None


def _base_detector_config() -> Config:
    cfg = Config()
    cfg.MODEL.ARCH = "faster_rcnn"
    b = cfg.MODEL.BACKBONE
    b.NORM, b.FREEZE_AT, b.STEM, b.WIDTH = "FrozenBN", 2, "imagenet", 64
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 800, 1333
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    r = cfg.MODEL.ROI_HEADS
    r.SCORE_THRESH_TEST, r.NMS_THRESH_TEST, r.DETECTIONS_PER_IMAGE = 0.05, 0.5, 100
    r.BBOX_REG_WEIGHTS = [10.0, 10.0, 5.0, 5.0]
    cfg.MODEL.RPN.BBOX_REG_WEIGHTS = [1.0, 1.0, 1.0, 1.0]
    cfg.MODEL.RPN.NMS_THRESH = 0.7
    return cfg


def _use_fpn(cfg: Config) -> None:
    m = cfg.MODEL
    m.BACKBONE.NAME, m.BACKBONE.OUT_FEATURES = "resnet_fpn", ["res2", "res3", "res4", "res5"]
    m.FPN.OUT_CHANNELS = 256
    m.ANCHOR.SIZES, m.ANCHOR.ASPECT_RATIOS = [list(s) for s in FPN_ANCHOR_SIZES], [0.5, 1.0, 2.0]
    m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    m.ROI_HEADS.NAME, m.ROI_HEADS.IN_FEATURES = "fpn", ["p2", "p3", "p4", "p5"]
    m.ROI_HEADS.POOLER_RESOLUTION, m.ROI_HEADS.FC_DIM = 7, 1024
    cfg.INPUT.SIZE_DIVISIBILITY = 32


def _dataset_defaults(cfg: Config, num_classes: int, names: Sequence[str]) -> None:
    """COCO / VOC test sets for detectors of their classes, so evaluation works as it is."""
    if num_classes == 80 and list(names) == coco_categories()[0]:
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ["coco_2017_train"], ["coco_2017_val"]
    elif num_classes == 20:
        cfg.DATASETS.TRAIN = ["voc_2007_trainval+voc_2012_trainval"]
        cfg.DATASETS.TEST = ["voc_2007_test"]


# ----------------------------------------------------------------------------- torchvision

_TV_V2_MARKERS = ("roi_heads.box_head.0.", "rpn.head.conv.1.", "backbone.fpn.inner_blocks.0.1.")


def _tv_key(k: str) -> Optional[str]:
    """torchvision detector key -> resdet key (None: not part of the model)."""
    if k.startswith("backbone.body."):
        return "backbone.bottom_up." + k[len("backbone.body.") :]
    m = re.match(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(?:0\.)?(weight|bias)$", k)
    if m:
        kind = "lateral" if m.group(1) == "inner" else "output"
        return f"backbone.{kind}.{m.group(2)}.{m.group(3)}"
    m = re.match(r"^rpn\.head\.(conv(?:\.0\.0)?|cls_logits|bbox_pred)\.(weight|bias)$", k)
    if m:
        name = {"cls_logits": "objectness", "bbox_pred": "deltas"}.get(m.group(1), "conv")
        return f"rpn.head.{name}.{m.group(2)}"
    m = re.match(r"^roi_heads\.box_head\.fc([67])\.(weight|bias)$", k)
    if m:
        return f"roi_heads.box_head.fc{int(m.group(1)) - 5}.{m.group(2)}"
    return None


def torchvision_detector_to_resdet(
    state_dict: Mapping[str, Any], source: str = "state dict", keep_unused_classes: bool = False
) -> DetectorImport:
    """A torchvision ``FasterRCNN`` (ResNet-FPN) state dict as a resdet detector.

    Returns:
        ``(state_dict, config, class_names, category_ids)``. A 91-output head is COCO's (80
        classes, or 90 with ``keep_unused_classes``); any other count gets ``class_<i>`` names.

    Raises:
        ConversionError: ``fasterrcnn_resnet50_fpn_v2`` or another unsupported layout.
    """
    sd = as_tensors({k.removeprefix("module."): v for k, v in state_dict.items()})
    if any(k.startswith(_TV_V2_MARKERS) for k in sd):
        raise ConversionError(
            f"{source}: a torchvision fasterrcnn_resnet50_fpn_v2 checkpoint (BN in the FPN, a "
            "4-conv + BN box head, a 2-conv RPN head): resdet's Faster R-CNN has no such layers, "
            "so it cannot reproduce this detector; fasterrcnn_resnet50_fpn (v1) converts"
        )
    out: Dict[str, torch.Tensor] = {}
    dropped = []
    for k, v in sd.items():
        new = _tv_key(k)
        if new is not None:
            out[new] = v
        elif not k.startswith("roi_heads.box_predictor."):
            dropped.append(k)
    if dropped:
        raise ConversionError(
            f"{source}: {len(dropped)} tensors of an unsupported torchvision layout, e.g. "
            f"{dropped[:4]} (only ResNet-FPN Faster R-CNN converts)"
        )
    trunk = {k[len("backbone.bottom_up.") :]: v for k, v in out.items() if "bottom_up." in k}
    depth, width, _ = layout_from_resdet_keys(trunk, source)
    cls_w = sd["roi_heads.box_predictor.cls_score.weight"]
    num_outputs = cls_w.shape[0]  # background + classes
    if num_outputs == 91:
        names, ids = coco_categories(keep_unused_classes)
    else:
        names, ids = [f"class_{i}" for i in range(1, num_outputs)], list(range(1, num_outputs))
    # Source row of each kept class: torchvision's logit index is the class id (0: background).
    rows = ids
    cls_b = sd["roi_heads.box_predictor.cls_score.bias"]
    box_w = sd["roi_heads.box_predictor.bbox_pred.weight"].view(num_outputs, 4, -1)
    box_b = sd["roi_heads.box_predictor.bbox_pred.bias"].view(num_outputs, 4)
    out["roi_heads.predictor.cls_score.weight"] = torch.cat([cls_w[rows], cls_w[:1]])
    out["roi_heads.predictor.cls_score.bias"] = torch.cat([cls_b[rows], cls_b[:1]])
    out["roi_heads.predictor.bbox_pred.weight"] = box_w[rows].reshape(4 * len(rows), -1)
    out["roi_heads.predictor.bbox_pred.bias"] = box_b[rows].reshape(-1)

    cfg = _base_detector_config()
    _use_fpn(cfg)
    m = cfg.MODEL
    m.BACKBONE.DEPTH, m.BACKBONE.WIDTH, m.BACKBONE.STRIDE_IN_1X1 = depth, width, False
    m.BACKBONE.FREEZE_AT = 2  # trainable_backbone_layers=3
    m.INPUT_FORMAT = "RGB"
    # torchvision normalises 0-1 images: (x / 255 - 0.485) / 0.229, in that order, exactly.
    m.PIXEL_SCALE = 255.0
    m.PIXEL_MEAN, m.PIXEL_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    m.ANCHOR.ROUND, m.ANCHOR.STRIDE_FROM_INPUT = True, True
    r = m.RPN
    r.PRE_NMS_TOPK_TRAIN, r.POST_NMS_TOPK_TRAIN = 2000, 2000
    r.PRE_NMS_TOPK_TEST, r.POST_NMS_TOPK_TEST = 1000, 1000
    r.MIN_SIZE, r.SIGMOID_SCORES = 1e-3, True
    r.LOSS_TYPE, r.SMOOTH_L1_BETA = "smooth_l1", 1.0 / 9
    h = m.ROI_HEADS
    h.NUM_CLASSES = len(names)
    h.POOLER_SAMPLING_RATIO, h.POOLER_ALIGNED = 2, False
    h.MIN_BOX_SIZE_TEST = 1e-2
    h.LOSS_TYPE, h.SMOOTH_L1_BETA = "smooth_l1", 1.0 / 9
    cfg.INPUT.MIN_SIZE_TRAIN = [800]
    _dataset_defaults(cfg, len(names), names)
    return DetectorImport(out, cfg, names, ids)


# ----------------------------------------------------------------------------- detectron2

_D2_RPN_NAMES = {"objectness_logits": "objectness", "anchor_deltas": "deltas"}
_D2_IGNORED = ("proposal_generator.anchor_generator.", "pixel_mean", "pixel_std")


def _d2_key(k: str) -> Optional[str]:
    """detectron2 detector key -> resdet key (None: not part of resdet's model)."""
    if k.startswith("backbone.bottom_up."):
        return "backbone.bottom_up." + d2_resnet_key(k[len("backbone.bottom_up.") :])
    m = re.match(r"^backbone\.fpn_(lateral|output)([2-5])\.(weight|bias)$", k)
    if m:
        return f"backbone.{m.group(1)}.{int(m.group(2)) - 2}.{m.group(3)}"
    if k.startswith("backbone."):
        return "backbone." + d2_resnet_key(k[len("backbone.") :])
    if k.startswith("roi_heads.res5."):
        return "backbone." + d2_resnet_key(k[len("roi_heads.") :])
    m = re.match(r"^proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.", k)
    if m:
        name = _D2_RPN_NAMES.get(m.group(1), "conv")
        return f"rpn.head.{name}." + k[m.end() :]
    if re.match(r"^roi_heads\.box_head\.fc[12]\.(weight|bias)$", k):
        return k
    if k.startswith("roi_heads.box_predictor."):
        return "roi_heads.predictor." + k[len("roi_heads.box_predictor.") :]
    return None


def _d2_class_names(num_classes: int) -> Tuple[List[str], List[int]]:
    if num_classes == 80:
        return coco_categories()
    if num_classes == 20:
        from resdet.data.voc import VOC_CLASSES  # detectron2's VOC order is the devkit's

        return list(VOC_CLASSES), list(range(1, 21))
    return [f"class_{i}" for i in range(num_classes)], list(range(1, num_classes + 1))


def detectron2_detector_to_resdet(
    model: Mapping[str, Any], author: str = "unknown", source: str = "state dict"
) -> DetectorImport:
    """A detectron2 Faster R-CNN (R50/R101, C4 or FPN) as a resdet detector.

    detectron2's model zoo trains from MSRA's ImageNet weights: stride in the 1x1, BGR input,
    mean [103.53, 116.28, 123.675], std 1; the ``pixel_mean`` / ``pixel_std`` stored in older
    checkpoints take precedence. The anchors a checkpoint stores (``cell_anchors``) are checked
    against the config's.

    Raises:
        ConversionError: a layout resdet cannot express (class-agnostic boxes, conv box head,
            another backbone), with the keys that show it.
    """
    sd = as_tensors({k.removeprefix("module."): v for k, v in model.items()})
    fpn = "backbone.fpn_lateral2.weight" in sd
    if "roi_heads.box_predictor.bbox_pred.weight" not in sd:
        raise ConversionError(f"{source}: no roi_heads.box_predictor: not a Faster R-CNN")
    out: Dict[str, torch.Tensor] = {}
    unsupported, ignored = [], []
    for k, v in sd.items():
        if k.startswith(("roi_heads.mask_head.", "roi_heads.keypoint_head.")):
            ignored.append(k)
            continue
        if k.startswith(_D2_IGNORED):
            continue
        new = _d2_key(k)
        if new is None:
            unsupported.append(k)
        else:
            out[new] = v
    if unsupported:
        raise ConversionError(
            f"{source}: {len(unsupported)} tensors resdet's Faster R-CNN has no place for, e.g. "
            f"{unsupported[:4]} (supported: ResNet C4 / FPN with a 2-fc box head)"
        )
    if ignored:
        logger.warning("%s: %d mask / keypoint head tensors ignored (resdet detects boxes only)",
                       source, len(ignored))  # fmt: skip
    cls_w = out["roi_heads.predictor.cls_score.weight"]
    num_classes = cls_w.shape[0] - 1
    if out["roi_heads.predictor.bbox_pred.weight"].shape[0] != 4 * num_classes:
        raise ConversionError(
            f"{source}: bbox_pred has {out['roi_heads.predictor.bbox_pred.weight'].shape[0]} "
            f"outputs for {num_classes} classes: class-agnostic box regression is not supported"
        )
    prefix = "backbone.bottom_up." if fpn else "backbone."
    trunk = {k[len(prefix) :]: v for k, v in out.items() if k.startswith(prefix)}
    depth, width, _ = layout_from_resdet_keys(trunk, source)

    cfg = _base_detector_config()
    m = cfg.MODEL
    if fpn:
        _use_fpn(cfg)
        r = m.RPN
        r.PRE_NMS_TOPK_TRAIN, r.POST_NMS_TOPK_TRAIN = 2000, 1000
        r.PRE_NMS_TOPK_TEST, r.POST_NMS_TOPK_TEST = 1000, 1000
    else:
        m.BACKBONE.NAME, m.BACKBONE.OUT_FEATURES = "resnet", ["res4"]
        m.ANCHOR.SIZES, m.ANCHOR.ASPECT_RATIOS = [list(C4_D2_ANCHOR_SIZES[0])], [0.5, 1.0, 2.0]
        m.RPN.IN_FEATURES = ["res4"]
        r = m.RPN
        r.PRE_NMS_TOPK_TRAIN, r.POST_NMS_TOPK_TRAIN = 12000, 2000
        r.PRE_NMS_TOPK_TEST, r.POST_NMS_TOPK_TEST = 6000, 1000
        h = m.ROI_HEADS
        h.NAME, h.IN_FEATURES, h.POOLER_TYPE, h.POOLER_RESOLUTION = "c4", ["res4"], "ROIAlign", 14
        cfg.INPUT.SIZE_DIVISIBILITY = 1  # detectron2's ResNet pads nothing (size_divisibility 0)
    m.ROI_HEADS.POOLER_SAMPLING_RATIO, m.ROI_HEADS.POOLER_ALIGNED = 0, True  # ROIAlignV2
    m.ROI_HEADS.NUM_CLASSES = num_classes
    m.RPN.MIN_SIZE = 0.0
    m.BACKBONE.DEPTH, m.BACKBONE.WIDTH = depth, width
    m.BACKBONE.STRIDE_IN_1X1 = author != "torchvision"
    if author == "torchvision":
        m.INPUT_FORMAT = "RGB"
        m.PIXEL_MEAN, m.PIXEL_STD = list(TORCHVISION_MEAN_RGB), list(TORCHVISION_STD_RGB)
    else:
        m.INPUT_FORMAT = "BGR"
        m.PIXEL_MEAN, m.PIXEL_STD = list(CAFFE2_PIXEL_MEAN_BGR), [1.0, 1.0, 1.0]
    for key, attr in (("pixel_mean", "PIXEL_MEAN"), ("pixel_std", "PIXEL_STD")):
        if key in sd:
            setattr(m, attr, [float(v) for v in sd[key].flatten()])
    cfg.INPUT.MIN_SIZE_TRAIN = [640, 672, 704, 736, 768, 800]
    _check_cell_anchors(sd, cfg, source)
    names, ids = _d2_class_names(num_classes)
    _dataset_defaults(cfg, num_classes, names)
    return DetectorImport(out, cfg, names, ids)


def _check_cell_anchors(sd: Mapping[str, torch.Tensor], cfg: Config, source: str) -> None:
    """Older detectron2 checkpoints store their anchors: they must be the config's."""
    from resdet.modeling.detection.anchors import cell_anchors

    sizes = cfg.MODEL.ANCHOR.SIZES
    for i, s in enumerate(sizes):
        stored = sd.get(f"proposal_generator.anchor_generator.cell_anchors.{i}")
        if stored is None:
            continue
        ours = cell_anchors(s, cfg.MODEL.ANCHOR.ASPECT_RATIOS)
        if stored.shape != ours.shape or not torch.allclose(stored.float(), ours, atol=1e-3):
            raise ConversionError(
                f"{source}: the checkpoint's anchors of level {i} {stored.tolist()} are not "
                f"detectron2's defaults for this layout {ours.tolist()}: a custom anchor config; "
                "set MODEL.ANCHOR.SIZES / ASPECT_RATIOS to match and convert again"
            )
