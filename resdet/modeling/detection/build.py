"""Build a Faster R-CNN from a config. The YAML names two choices, the backbone and the head."""

from __future__ import annotations

from typing import List, Tuple

from resdet.config.schema import Config
from resdet.modeling.backbone.base import Backbone, ShapeSpec
from resdet.modeling.backbone.fpn import FPN
from resdet.modeling.backbone.resnet import build_resnet
from resdet.modeling.detection.anchors import AnchorGenerator
from resdet.modeling.detection.box_coder import BoxCoder
from resdet.modeling.detection.box_heads import C4BoxHead, FPNBoxHead
from resdet.modeling.detection.faster_rcnn import FasterRCNN
from resdet.modeling.detection.roi_heads import BoxPredictor, ROIHeads
from resdet.modeling.detection.rpn import RPN, RPNHead
from resdet.modeling.detection.sampling import Matcher
from resdet.registry import Registry

BACKBONES: Registry[Backbone] = Registry("backbone")
BOX_HEADS: Registry = Registry("ROI box head")


@BACKBONES.register("resnet")
def _resnet(cfg: Config) -> Backbone:
    return build_resnet(cfg.MODEL.BACKBONE, num_classes=0)


@BACKBONES.register("resnet_fpn")
def _resnet_fpn(cfg: Config) -> Backbone:
    trunk = build_resnet(
        cfg.MODEL.BACKBONE, num_classes=0, out_features=["res2", "res3", "res4", "res5"]
    )
    return FPN(trunk, out_channels=cfg.MODEL.FPN.OUT_CHANNELS)


def _input_shapes(backbone: Backbone, names: List[str], key: str) -> List[ShapeSpec]:
    """The backbone's output shapes of ``names`` (the config ``key``'s features), in order."""
    shapes = backbone.output_shape()
    missing = [f for f in names if f not in shapes]
    if missing:
        raise ValueError(f"{key} {missing} not produced by the backbone ({list(shapes)})")
    return [shapes[f] for f in names]


def _aligned(cfg: Config, head_default: bool) -> bool:
    aligned = cfg.MODEL.ROI_HEADS.POOLER_ALIGNED
    return head_default if aligned is None else aligned


@BOX_HEADS.register("c4")
def _c4_head(cfg: Config, backbone: Backbone) -> C4BoxHead:
    r = cfg.MODEL.ROI_HEADS
    if not hasattr(backbone, "stage"):
        raise ValueError("the C4 head needs a plain ResNet backbone (MODEL.BACKBONE.NAME 'resnet')")
    (name,) = r.IN_FEATURES
    shape = backbone.output_shape()[name]
    res5 = backbone.stage("res5")
    return C4BoxHead(
        name,
        res5,
        stride=shape.stride,
        out_channels=backbone.stage_channels("res5"),
        resolution=r.POOLER_RESOLUTION,
        sampling_ratio=r.POOLER_SAMPLING_RATIO,
        pooler_type=r.POOLER_TYPE,
        aligned=_aligned(cfg, True),
    )


@BOX_HEADS.register("fpn")
def _fpn_head(cfg: Config, backbone: Backbone) -> FPNBoxHead:
    r = cfg.MODEL.ROI_HEADS
    first = _input_shapes(backbone, r.IN_FEATURES, "MODEL.ROI_HEADS.IN_FEATURES")[0]
    if r.POOLER_CANONICAL_SIZE <= 0:
        raise ValueError(
            "MODEL.ROI_HEADS.POOLER_CANONICAL_SIZE must be > 0 (pixels), "
            f"got {r.POOLER_CANONICAL_SIZE}"
        )
    return FPNBoxHead(
        r.IN_FEATURES,
        in_channels=first.channels,
        first_stride=first.stride,
        resolution=r.POOLER_RESOLUTION,
        sampling_ratio=r.POOLER_SAMPLING_RATIO,
        fc_dim=r.FC_DIM,
        aligned=_aligned(cfg, False),
        canonical_size=r.POOLER_CANONICAL_SIZE,
    )


def _rpn(cfg: Config, backbone: Backbone) -> RPN:
    r = cfg.MODEL.RPN
    shapes = _input_shapes(backbone, r.IN_FEATURES, "MODEL.RPN.IN_FEATURES")
    channels = {s.channels for s in shapes}
    if len(channels) != 1:
        raise ValueError(
            "the RPN head is shared across levels: all IN_FEATURES need equal channels"
        )
    a = cfg.MODEL.ANCHOR
    anchors = AnchorGenerator(
        a.SIZES,
        aspect_ratios=a.ASPECT_RATIOS,
        strides=[s.stride for s in shapes],
        round_anchors=a.ROUND,
        stride_from_input=a.STRIDE_FROM_INPUT,
    )
    return RPN(
        r.IN_FEATURES,
        RPNHead(channels.pop(), num_anchors=anchors.num_anchors),
        anchors,
        BoxCoder(r.BBOX_REG_WEIGHTS),
        Matcher([r.BG_IOU_THRESHOLD, r.FG_IOU_THRESHOLD], allow_low_quality_matches=True),
        batch_size_per_image=r.BATCH_SIZE_PER_IMAGE,
        positive_fraction=r.POSITIVE_FRACTION,
        pre_nms_topk=(r.PRE_NMS_TOPK_TRAIN, r.PRE_NMS_TOPK_TEST),
        post_nms_topk=(r.POST_NMS_TOPK_TRAIN, r.POST_NMS_TOPK_TEST),
        nms_thresh=r.NMS_THRESH,
        min_size=r.MIN_SIZE,
        loss_type=r.LOSS_TYPE,
        smooth_l1_beta=r.SMOOTH_L1_BETA,
        loss_weight=r.LOSS_WEIGHT,
        sigmoid_scores=r.SIGMOID_SCORES,
    )


def _roi_heads(cfg: Config, backbone: Backbone) -> ROIHeads:
    r = cfg.MODEL.ROI_HEADS
    box_head = BOX_HEADS.get(r.NAME)(cfg, backbone)
    return ROIHeads(
        box_head,
        BoxPredictor(box_head.out_channels, num_classes=r.NUM_CLASSES, fp32=r.FP32_BOX_PREDICTOR),
        r.NUM_CLASSES,
        BoxCoder(r.BBOX_REG_WEIGHTS),
        Matcher([r.IOU_THRESHOLD, r.IOU_THRESHOLD]),
        batch_size_per_image=r.BATCH_SIZE_PER_IMAGE,
        positive_fraction=r.POSITIVE_FRACTION,
        score_thresh=r.SCORE_THRESH_TEST,
        nms_thresh=r.NMS_THRESH_TEST,
        detections_per_image=r.DETECTIONS_PER_IMAGE,
        loss_type=r.LOSS_TYPE,
        smooth_l1_beta=r.SMOOTH_L1_BETA,
        min_box_size=r.MIN_BOX_SIZE_TEST,
    )


def build_detector(cfg: Config) -> FasterRCNN:
    """Faster R-CNN as the config describes it (random init; weights are loaded separately).

    Raises:
        ValueError: ``MODEL.ROI_HEADS.NUM_CLASSES`` below 1 (0 means "from the data", which the
            tools resolve before building; code building a model directly must give a count).
    """
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES < 1:
        raise ValueError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}: a detector needs "
            "at least one class (0, 'take it from the data', is resolved by the tools from "
            "DATASETS.TRAIN; set the count when building a model directly)"
        )
    backbone = BACKBONES.get(cfg.MODEL.BACKBONE.NAME)(cfg)
    model = FasterRCNN(
        backbone,
        _rpn(cfg, backbone),
        _roi_heads(cfg, backbone),
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        input_format=cfg.MODEL.INPUT_FORMAT,
        size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
        channels_last=cfg.MODEL.CHANNELS_LAST,
        pixel_scale=cfg.MODEL.PIXEL_SCALE,
    )
    return model


def registered() -> Tuple[list, list]:
    return BACKBONES.names(), BOX_HEADS.names()
