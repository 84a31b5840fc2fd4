"""Export of a detector converted from torchvision: the options that make resdet reproduce
torchvision (MODEL.ANCHOR.ROUND / STRIDE_FROM_INPUT, MODEL.RPN.SIGMOID_SCORES,
MODEL.ROI_HEADS.MIN_BOX_SIZE_TEST, POOLER_ALIGNED False) survive ONNX and TorchScript export: the
exports give the model's own detections, and torchvision's, at the traced size and another."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from resdet.engine.checkpoint import load_model_weights
from resdet.export.convert_detector import torchvision_detector_to_resdet
from resdet.export.onnx import (
    compare_detections,
    example_image,
    export_onnx,
    export_torchscript,
    model_detections,
    run_onnx,
)
from resdet.modeling.detection.anchors import AnchorGenerator
from resdet.modeling.detection.build import build_detector

# Neither a multiple of 64: torchvision's p6 strides are then not 64 (224 // 4 = 56 and
# 288 // 5 = 57 for the first, padded to 224x288), which STRIDE_FROM_INPUT reproduces.
SIZES = [(200, 270), (150, 230)]
THRESH = 0.02  # scores spread by the init below put many detections above it
# Anchors small enough that p6's boxes are not all clipped to the whole image, so that its
# stride (STRIDE_FROM_INPUT) is not hidden by clipping.
ANCHORS = ((8,), (16,), (24,), (32,), (48,))
# Objectness logits large enough that fp32 sigmoid (SIGMOID_SCORES) ties many proposals at 1.0
# (measured: 379 of the 16,125 anchors at 200x270, 117 of 10,236 at 150x230).
# Which of a tied group survives a post-NMS cut is the runtime's choice (eager torch sorts the
# kept proposals, the traced graph takes NMS's order), so the cut is kept above the candidates.
OBJECTNESS_STD = 1.0
PRE_NMS, POST_NMS = 100, 1000


@pytest.fixture(scope="module")
def torchvision_and_converted():
    """A random torchvision R18-FPN Faster R-CNN (3 classes) and its resdet conversion."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    tv = FasterRCNN(
        backbone, num_classes=4, box_score_thresh=THRESH,
        rpn_anchor_generator=TorchvisionAnchors(ANCHORS, ((0.5, 1.0, 2.0),) * len(ANCHORS)),
        rpn_pre_nms_top_n_test=PRE_NMS, rpn_post_nms_top_n_test=POST_NMS,
    ).eval()  # fmt: skip
    # Spread the class scores (the default init makes them near-equal), so the comparison is
    # not decided by near-ties.
    torch.nn.init.normal_(tv.roi_heads.box_predictor.cls_score.weight, std=0.05)
    torch.nn.init.normal_(tv.rpn.head.cls_logits.weight, std=OBJECTNESS_STD)
    state_dict, cfg, _, _ = torchvision_detector_to_resdet(tv.state_dict(), "random torchvision")
    m = cfg.MODEL
    m.ANCHOR.SIZES = [list(s) for s in ANCHORS]  # not in the state dict
    m.ROI_HEADS.SCORE_THRESH_TEST = THRESH
    m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST = PRE_NMS, POST_NMS
    model = build_detector(cfg).eval()
    load_model_weights(model, state_dict, strict=True, source="converted torchvision")
    return tv, model, cfg


def _torchvision_detections(tv, image: torch.Tensor):
    """torchvision's detections for ``[1, 3, H, W]`` 0-255, at the input's own size."""
    h, w = image.shape[-2:]
    tv.transform.min_size, tv.transform.max_size = (min(h, w),), max(h, w)  # no resize
    with torch.no_grad():
        (out,) = tv([image[0] / 255.0])
    return out["boxes"], out["scores"], out["labels"] - 1  # resdet's labels are 0..K-1


def test_converted_config_turns_the_options_on(torchvision_and_converted):
    _, model, cfg = torchvision_and_converted
    m = cfg.MODEL
    assert m.ANCHOR.ROUND and m.ANCHOR.STRIDE_FROM_INPUT and m.RPN.SIGMOID_SCORES
    assert m.ROI_HEADS.MIN_BOX_SIZE_TEST == pytest.approx(1e-2)
    assert m.ROI_HEADS.POOLER_ALIGNED is False and m.ROI_HEADS.NAME == "fpn"
    assert model.rpn.sigmoid_scores and model.rpn.anchor_generator.stride_from_input


@pytest.mark.slow
def test_converted_detector_exports(torchvision_and_converted, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    tv, model, _ = torchvision_and_converted
    path = str(tmp_path / "converted.onnx")
    export_onnx(model, path, example_image(*SIZES[0]), dynamic=True)
    traced = export_torchscript(model, str(tmp_path / "converted.pt"), example_image(*SIZES[0]))
    for i, size in enumerate(SIZES):
        image = example_image(*size, seed=20 + i)
        ours = model_detections(model, image)
        assert len(ours[0]) > 10
        # The model itself reproduces torchvision, options and all ...
        source = compare_detections(ours, _torchvision_detections(tv, image))
        assert source.ok and source.max_box_diff < 1e-2, (
            f"resdet vs torchvision at {size}: {source}"
        )
        # ... and so do its exports.
        onnx_match = compare_detections(ours, run_onnx(path, image))
        assert onnx_match.ok and onnx_match.max_score_diff < 1e-4, f"onnx at {size}: {onnx_match}"
        with torch.no_grad():
            ts_match = compare_detections(ours, traced(image))
        assert ts_match.ok and ts_match.max_box_diff < 1e-3, f"torchscript at {size}: {ts_match}"


def test_traced_anchors_take_their_strides_from_the_input(torchvision_and_converted):
    """Traced at one size and run at another, the anchors are the eager STRIDE_FROM_INPUT grid
    (p6's strides 53 x 64 at 150x230, padded 160x256), not the nominal-stride one."""
    _, model, cfg = torchvision_and_converted
    gen = model.rpn.anchor_generator
    strides = gen.strides

    def grids(*feats):
        return tuple(gen(list(feats)))

    def feats(h, w):  # padded input h x w -> one [1, 1, h / s, w / s] map per level
        return [torch.zeros(1, 1, -(-h // s), -(-w // s)) for s in strides]

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated
        traced = torch.jit.trace(grids, tuple(feats(224, 288)), check_trace=False)
    got = traced(*feats(160, 256))
    want = gen(feats(160, 256))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    a = cfg.MODEL.ANCHOR
    nominal = AnchorGenerator(
        a.SIZES, aspect_ratios=a.ASPECT_RATIOS, strides=strides, round_anchors=True
    )
    nominal = nominal(feats(160, 256))
    assert not torch.equal(got[-1], nominal[-1]) and torch.equal(got[0], nominal[0])
