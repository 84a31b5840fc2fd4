"""Export: the tracing adapter returns exactly what FasterRCNN returns, and the ONNX
(onnxruntime) and TorchScript exports of the model's own forward give the model's detections at
the traced size and at another size."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tool_loader import load_tool

from resdet.config import config_to_dict, load_config
from resdet.engine.checkpoint import save_checkpoint
from resdet.export.adapter import TracingAdapter
from resdet.export.onnx import (
    compare_detections,
    example_image,
    export_onnx,
    export_torchscript,
    run_onnx,
)
from resdet.export.openvino import openvino_available
from resdet.modeling.detection.build import build_detector

COMMON = [
    "MODEL.BACKBONE.DEPTH", "18", "MODEL.BACKBONE.WIDTH", "16",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    # Low enough that random weights give many detections to compare, high enough that no
    # score sits at float32 underflow, where "> threshold" would depend on the runtime's exp.
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.01",
]  # fmt: skip
ARCHS = {
    "c4": [
        "MODEL.BACKBONE.NAME", "resnet", "MODEL.ANCHOR.SIZES", "[[16, 32, 64]]",
        "INPUT.SIZE_DIVISIBILITY", "16",
    ],
    "fpn": [
        "MODEL.BACKBONE.NAME", "resnet_fpn", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.RPN.IN_FEATURES", "[p2, p3, p4, p5, p6]",
        "MODEL.ANCHOR.SIZES", "[[16], [32], [64], [128], [256]]",
        "MODEL.ROI_HEADS.NAME", "fpn", "MODEL.ROI_HEADS.IN_FEATURES", "[p2, p3, p4, p5]",
        "MODEL.ROI_HEADS.POOLER_RESOLUTION", "7", "MODEL.ROI_HEADS.FC_DIM", "64",
    ],
}  # fmt: skip
# The poolers the C4 and FPN heads can use besides their defaults (RoIAlign aligned on C4,
# torchvision's unaligned MultiScaleRoIAlign on FPN).
ARCHS["c4_roipool"] = ARCHS["c4"] + ["MODEL.ROI_HEADS.POOLER_TYPE", "ROIPool"]
ARCHS["fpn_aligned"] = ARCHS["fpn"] + ["MODEL.ROI_HEADS.POOLER_ALIGNED", "True"]
SIZES = [(70, 90), (96, 64)]  # the traced size, then another one (not a multiple of 16)


def _detector(arch: str):
    torch.manual_seed(0)
    model = build_detector(load_config(None, COMMON + ARCHS[arch])).eval()
    # Spread the class scores (the default init makes all K+1 almost equal), so that the
    # comparison is not decided by near-ties in NMS order.
    torch.nn.init.normal_(model.roi_heads.predictor.cls_score.weight, std=0.1)
    torch.nn.init.normal_(model.rpn.head.objectness.weight, std=0.1)
    return model


def _eager(model, image: torch.Tensor):
    with torch.no_grad():
        (det,) = model([{"image": image[0]}])
    return det["boxes"], det["scores"], det["labels"]


@pytest.mark.parametrize("arch", ["c4", "fpn"])
def test_adapter_equals_model(arch):
    model = _detector(arch)
    wrapper = TracingAdapter(model)
    for i, size in enumerate(SIZES):
        image = example_image(*size, seed=i)
        want = _eager(model, image)
        with torch.no_grad():
            got = wrapper(image)
        assert len(want[0]) > 10
        for a, b in zip(got, want):
            assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*is deprecated:FutureWarning")
@pytest.mark.parametrize("arch", ["c4", "fpn", "c4_roipool", "fpn_aligned"])
def test_onnx_and_torchscript_match_pytorch(tmp_path, arch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = _detector(arch)
    path = str(tmp_path / "model.onnx")
    export_onnx(model, path, example_image(*SIZES[0]), dynamic=True)
    traced = export_torchscript(model, str(tmp_path / "model.pt"), example_image(*SIZES[0]))
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    assert not model.training  # the exporters must leave the model in eval mode
    for i, size in enumerate(SIZES):
        image = example_image(*size, seed=10 + i)
        want = _eager(model, image)
        assert len(want[0]) > 10
        onnx_match = compare_detections(want, run_onnx(path, image))
        assert onnx_match.ok, f"onnx at {size}: {onnx_match}"
        assert onnx_match.max_box_diff < 1e-2 and onnx_match.max_score_diff < 1e-4
        with torch.no_grad():
            for module in (traced, loaded):
                ts_match = compare_detections(want, module(image))
                assert ts_match.ok and ts_match.max_box_diff < 1e-3, f"torchscript: {ts_match}"


def test_fixed_size_export_and_old_opset(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _detector("c4")
    path = str(tmp_path / "fixed.onnx")
    export_onnx(model, path, example_image(*SIZES[0]), dynamic=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, *SIZES[0]]
    image = example_image(*SIZES[0], seed=5)
    want = _eager(model, image)
    assert len(want[0]) > 10
    match = compare_detections(want, run_onnx(path, image, session))
    assert match.ok and match.max_box_diff < 1e-2, f"fixed-size onnx: {match}"
    with pytest.raises(ValueError, match="opset >= 16"):
        export_onnx(model, str(tmp_path / "old.onnx"), example_image(*SIZES[0]), opset=11)


def test_compare_detections_sees_differences():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 30.0]])
    scores, labels = torch.tensor([0.9, 0.8]), torch.tensor([0, 1])
    same = compare_detections(
        (boxes, scores, labels), (boxes.flip(0), scores.flip(0), labels.flip(0))
    )
    assert same.ok and same.max_box_diff == 0.0
    moved = compare_detections((boxes, scores, labels), (boxes + 2.0, scores, labels))
    assert not moved.ok and moved.max_box_diff == pytest.approx(2.0)
    relabelled = compare_detections((boxes, scores, labels), (boxes, scores, labels.flip(0)))
    assert not relabelled.ok
    fewer = compare_detections((boxes, scores, labels), (boxes[:1], scores[:1], labels[:1]))
    assert not fewer.ok


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_tool_writes_and_checks(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    tool = load_tool("export")
    model = _detector("c4")
    cfg = load_config(None, COMMON + ARCHS["c4"])
    weights = str(tmp_path / "det.pth")
    extra = {"class_names": ["a", "b", "c"]}
    save_checkpoint(
        weights, {"model": model.state_dict(), "config": config_to_dict(cfg), "extra": extra}
    )
    prefix = str(tmp_path / "exp" / "det")
    assert tool.main(["--weights", weights, "--output", prefix, "--size", "64", "80"]) == 0
    out = capsys.readouterr().out
    # onnx and torchscript, and openvino when it is installed; 2 sizes each.
    formats = 3 if openvino_available() else 2
    assert out.count(": match") == 2 * formats and "MISMATCH" not in out
    meta = json.loads(open(prefix + ".json").read())
    assert meta["class_names"] == ["a", "b", "c"] and meta["input"]["dynamic"] is True
    assert os.path.getsize(prefix + ".onnx") > 0 and os.path.getsize(prefix + ".torchscript.pt") > 0
    assert tool.main(["--weights", str(tmp_path / "missing.pth"), "--output", prefix]) == 2
