"""Whole-detector import: torchvision parity, detectron2 names, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from resdet import Predictor
from resdet.accel import inference_model
from resdet.config.load import config_from_dict
from resdet.data.shapes_render import make_scene
from resdet.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from resdet.export.convert import ConversionError, convert_weights
from resdet.export.convert_detector import coco_categories
from resdet.modeling.detection.build import build_detector
from resdet.utils.calibrate import calibrate_

SIZE = (340, 460)  # p5 11x15 -> p6 6x8: torchvision's p6 strides are 58 and 60, not 64


def _image() -> torch.Tensor:
    image, _, _ = make_scene(SIZE, index=3)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


@pytest.fixture(scope="module")
def tv_model_and_file(tmp_path_factory):
    """A random torchvision R50-FPN with calibrated BN (so it detects), saved as a state dict."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=SIZE[0], max_size=SIZE[1]
    ).eval()
    image = _image().float() / 255.0
    calibrate_(tv, lambda: tv([image]))
    path = tmp_path_factory.mktemp("tv") / "fasterrcnn_resnet50_fpn.pth"
    torch.save(tv.state_dict(), path)
    return tv, str(path)


def _tv_detections(tv) -> dict:
    with torch.inference_mode():
        (out,) = tv([_image().float() / 255.0])
    return out


def _resdet_detections(model) -> dict:
    with torch.inference_mode():
        (out,) = model([{"image": _image()}])
    return out


def _assert_same(ours: dict, theirs: dict, ids, box_tol: float = 1e-3) -> None:
    """Same detections: each of ours has its own source detection of the same class with a
    score within 1e-4 and a box within ``box_tol`` px (detections of equal score may come in
    either order, so they are matched rather than compared by position)."""
    assert len(theirs["scores"]) > 20, "the calibrated source detects objects"
    assert len(ours["scores"]) == len(theirs["scores"])
    labels = torch.as_tensor(ids)[ours["labels"]]
    free = torch.ones(len(theirs["scores"]), dtype=torch.bool)
    for box, score, label in zip(ours["boxes"], ours["scores"], labels):
        box_err = (theirs["boxes"] - box).abs().amax(dim=1)
        ok = free & (theirs["labels"] == label) & ((theirs["scores"] - score).abs() <= 1e-4)
        ok &= box_err <= box_tol
        near = int(torch.argmin(box_err + 1e3 * (theirs["labels"] != label)))
        assert ok.any(), (
            f"no source detection for {label}, {score:.7f}, {box.tolist()}; nearest: "
            f"{theirs['scores'][near]:.7f}, {theirs['boxes'][near].tolist()}"
        )
        free[torch.nonzero(ok)[0, 0]] = False


@pytest.mark.slow
def test_torchvision_detector_same_detections(tv_model_and_file, tmp_path):
    """All 90 outputs kept: the converted detector reproduces torchvision's detections, plain and
    through the fused inference copy the Predictor and evaluation run."""
    tv, src = tv_model_and_file
    dst = str(tmp_path / "tv.pth")
    cfg, fmt = convert_weights(src, dst, keep_unused_classes=True)
    assert fmt == "torchvision-detector" and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 90
    ckpt = load_checkpoint(dst)
    ids = ckpt["extra"]["category_ids"]
    assert ids == list(range(1, 91)) and ckpt["extra"]["class_names"][11] == "N/A"
    model = build_detector(config_from_dict(ckpt["config"]))
    load_model_weights(model, ckpt, strict=True)
    model.eval()
    theirs = _tv_detections(tv)
    _assert_same(_resdet_detections(model), theirs, ids)
    # The fused copy folds BN into the convolutions: the same detections up to float rounding
    # (features move ~1e-6 relative, boxes by up to a few thousandths of a pixel).
    fast = inference_model(model, cfg)
    assert fast is not model
    _assert_same(_resdet_detections(fast), theirs, ids, box_tol=1e-2)


@pytest.mark.slow
def test_torchvision_coco80_names_and_ids(tv_model_and_file, tmp_path):
    """The default keeps COCO's 80 classes with their real ids. The 10 unused outputs never see
    a positive in training; made as improbable as training makes them, detections are equal."""
    tv, _ = tv_model_and_file
    names, ids = coco_categories()
    unused = [i for i in range(1, 91) if i not in ids]
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.bias[unused] -= 50.0
    src = str(tmp_path / "tv_trained_like.pth")
    torch.save(tv.state_dict(), src)
    dst = str(tmp_path / "tv80.pth")
    cfg, _ = convert_weights(src, dst)
    ckpt = load_checkpoint(dst)
    assert ckpt["extra"]["class_names"] == names and len(names) == 80
    assert names[0] == "person" and ids[names.index("toothbrush")] == 90
    assert cfg.DATASETS.TEST == ["coco_2017_val"]
    model = build_detector(cfg).eval()
    load_model_weights(model, ckpt, strict=True)
    theirs = _tv_detections(tv)
    _assert_same(_resdet_detections(model), theirs, ids)

    # The Predictor (and tools/infer.py) run the converted file as it is, with COCO's names.
    test_size = ["INPUT.MIN_SIZE_TEST", str(SIZE[0]), "INPUT.MAX_SIZE_TEST", str(SIZE[1])]
    predictor = Predictor(None, dst, device="cpu", overrides=test_size)
    dets = predictor(_image().permute(1, 2, 0).numpy())
    table = dict(zip(ids, names))
    top = [table[int(i)] for i in theirs["labels"][:5]]
    assert dets.names()[:5] == top and "N/A" not in dets.names()


def test_torchvision_v2_is_refused(tmp_path):
    v2 = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, num_classes=3
    )
    src = str(tmp_path / "v2.pth")
    torch.save(v2.state_dict(), src)
    with pytest.raises(ConversionError, match="v2.pth.*fasterrcnn_resnet50_fpn_v2"):
        convert_weights(src, str(tmp_path / "out.pth"))
    assert not (tmp_path / "out.pth").exists()


# ----------------------------------------------------------------------------- detectron2
# detectron2's published names (modeling/backbone/resnet.py, fpn.py, proposal_generator/rpn.py,
# roi_heads/roi_heads.py, fast_rcnn.py), written out here independently of the converter.


def _d2_block(prefix: str, idx: int, in_ch: int, mid: int, out: int, shortcut: bool) -> dict:
    g = torch.Generator().manual_seed(hash((prefix, idx)) % 2**31)
    sd = {}

    def conv_bn(name: str, cin: int, cout: int, k: int) -> None:
        sd[f"{prefix}.{idx}.{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05
        for stat, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0)):
            sd[f"{prefix}.{idx}.{name}.norm.{stat}"] = torch.rand(cout, generator=g) * 0.1 + value
        sd[f"{prefix}.{idx}.{name}.norm.running_var"] = torch.rand(cout, generator=g) + 0.5

    if shortcut:
        conv_bn("shortcut", in_ch, out, 1)
    conv_bn("conv1", in_ch, mid, 1)
    conv_bn("conv2", mid, mid, 3)
    conv_bn("conv3", mid, out, 1)
    return sd


def _d2_resnet50(prefix: str, stages=(2, 3, 4, 5)) -> dict:
    sd = {f"{prefix}stem.conv1.weight": torch.randn(64, 3, 7, 7) * 0.05}
    for stat in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{prefix}stem.conv1.norm.{stat}"] = torch.ones(64) if "w" in stat else torch.zeros(64)
    in_ch = 64
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        mid, out = 64 * 2 ** (stage - 2), 256 * 2 ** (stage - 2)
        name = f"{prefix}res{stage}" if stage in stages else f"roi_heads.res{stage}"
        for b in range(blocks):
            sd.update(_d2_block(name, b, in_ch if b == 0 else out, mid, out, b == 0))
        in_ch = out
    return sd


def _d2_heads(sd: dict, rpn_ch: int, anchors: int, box_in: int, classes: int) -> dict:
    sd["proposal_generator.rpn_head.conv.weight"] = torch.randn(rpn_ch, rpn_ch, 3, 3) * 0.01
    sd["proposal_generator.rpn_head.conv.bias"] = torch.zeros(rpn_ch)
    sd["proposal_generator.rpn_head.objectness_logits.weight"] = torch.randn(anchors, rpn_ch, 1, 1)
    sd["proposal_generator.rpn_head.objectness_logits.bias"] = torch.zeros(anchors)
    sd["proposal_generator.rpn_head.anchor_deltas.weight"] = torch.randn(4 * anchors, rpn_ch, 1, 1)
    sd["proposal_generator.rpn_head.anchor_deltas.bias"] = torch.zeros(4 * anchors)
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.randn(classes + 1, box_in)
    sd["roi_heads.box_predictor.cls_score.bias"] = torch.randn(classes + 1)
    sd["roi_heads.box_predictor.bbox_pred.weight"] = torch.randn(4 * classes, box_in)
    sd["roi_heads.box_predictor.bbox_pred.bias"] = torch.randn(4 * classes)
    return {k: v.numpy() for k, v in sd.items()}  # model-zoo pickles hold numpy arrays


def _d2_c4(classes: int = 80) -> dict:
    sd = _d2_resnet50("backbone.", stages=(2, 3, 4))
    sd["pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    sd["pixel_std"] = torch.tensor([1.0, 1.0, 1.0]).view(3, 1, 1)
    return _d2_heads(sd, 1024, 15, 2048, classes)


def _d2_fpn(classes: int = 80) -> dict:
    sd = _d2_resnet50("backbone.bottom_up.")
    for lvl, ch in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
        sd[f"backbone.fpn_lateral{lvl}.weight"] = torch.randn(256, ch, 1, 1) * 0.02
        sd[f"backbone.fpn_lateral{lvl}.bias"] = torch.zeros(256)
        sd[f"backbone.fpn_output{lvl}.weight"] = torch.randn(256, 256, 3, 3) * 0.02
        sd[f"backbone.fpn_output{lvl}.bias"] = torch.zeros(256)
    sd["roi_heads.box_head.fc1.weight"] = torch.randn(1024, 256 * 49) * 0.01
    sd["roi_heads.box_head.fc1.bias"] = torch.zeros(1024)
    sd["roi_heads.box_head.fc2.weight"] = torch.randn(1024, 1024) * 0.01
    sd["roi_heads.box_head.fc2.bias"] = torch.zeros(1024)
    return _d2_heads(sd, 256, 3, 1024, classes)


def _pickle(tmp_path, name: str, model: dict) -> str:
    import pickle

    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    return str(path)


def test_detectron2_c4_names_and_config(tmp_path):
    d2 = _d2_c4()
    cfg, fmt = convert_weights(
        _pickle(tmp_path, "model_final_c4.pkl", d2), str(tmp_path / "c4.pth")
    )
    assert fmt == "detectron2-detector"
    m = cfg.MODEL
    assert (m.BACKBONE.NAME, m.BACKBONE.DEPTH, m.BACKBONE.STRIDE_IN_1X1) == ("resnet", 50, True)
    assert m.ANCHOR.SIZES == [[32.0, 64.0, 128.0, 256.0, 512.0]]  # 15 anchors
    assert (m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST) == (6000, 1000)
    assert (m.ROI_HEADS.NAME, m.ROI_HEADS.POOLER_ALIGNED, m.ROI_HEADS.POOLER_RESOLUTION) == (
        "c4", True, 14)  # fmt: skip
    assert m.INPUT_FORMAT == "BGR" and m.PIXEL_STD == [1.0, 1.0, 1.0]
    assert cfg.INPUT.SIZE_DIVISIBILITY == 1 and cfg.DATASETS.TEST == ["coco_2017_val"]
    sd = load_checkpoint(str(tmp_path / "c4.pth"))["model"]
    # res5 runs in the RoI head in detectron2, in resdet it is the trunk's layer4 (borrowed).
    np.testing.assert_array_equal(sd["backbone.layer4.2.conv3.weight"],
                                  d2["roi_heads.res5.2.conv3.weight"])  # fmt: skip
    np.testing.assert_array_equal(sd["backbone.layer3.0.downsample.1.running_var"],
                                  d2["backbone.res4.0.shortcut.norm.running_var"])  # fmt: skip
    np.testing.assert_array_equal(sd["backbone.bn1.weight"], d2["backbone.stem.conv1.norm.weight"])
    # detectron2's background logit is the last one already: the predictor is copied as it is.
    np.testing.assert_array_equal(sd["roi_heads.predictor.cls_score.bias"],
                                  d2["roi_heads.box_predictor.cls_score.bias"])  # fmt: skip
    d2_deltas = d2["proposal_generator.rpn_head.anchor_deltas.weight"]
    np.testing.assert_array_equal(sd["rpn.head.deltas.weight"], d2_deltas)


def test_detectron2_fpn_voc_and_errors(tmp_path):
    d2 = _d2_fpn(classes=20)
    cfg, _ = convert_weights(_pickle(tmp_path, "voc_fpn.pkl", d2), str(tmp_path / "fpn.pth"))
    m = cfg.MODEL
    assert m.BACKBONE.NAME == "resnet_fpn" and m.ROI_HEADS.POOLER_ALIGNED is True
    assert cfg.INPUT.SIZE_DIVISIBILITY == 32 and cfg.DATASETS.TEST == ["voc_2007_test"]
    ckpt = load_checkpoint(str(tmp_path / "fpn.pth"))
    assert ckpt["extra"]["class_names"][0] == "aeroplane"
    np.testing.assert_array_equal(ckpt["model"]["backbone.lateral.3.weight"],
                                  d2["backbone.fpn_lateral5.weight"])  # fmt: skip
    np.testing.assert_array_equal(ckpt["model"]["backbone.output.0.bias"],
                                  d2["backbone.fpn_output2.bias"])  # fmt: skip

    agnostic = dict(d2)
    agnostic["roi_heads.box_predictor.bbox_pred.weight"] = np.zeros((4, 1024), np.float32)
    agnostic["roi_heads.box_predictor.bbox_pred.bias"] = np.zeros(4, np.float32)
    with pytest.raises(ConversionError, match="agnostic.pkl.*class-agnostic"):
        convert_weights(_pickle(tmp_path, "agnostic.pkl", agnostic), str(tmp_path / "x.pth"))
    conv_head = dict(d2)
    conv_head["roi_heads.box_head.conv1.weight"] = np.zeros((256, 256, 3, 3), np.float32)
    with pytest.raises(ConversionError, match="roi_heads.box_head.conv1.weight"):
        convert_weights(_pickle(tmp_path, "convhead.pkl", conv_head), str(tmp_path / "x.pth"))
    truncated = {k: v for k, v in d2.items() if "res3.1." not in k}
    with pytest.raises(ConversionError, match="does not load"):
        convert_weights(_pickle(tmp_path, "truncated.pkl", truncated), str(tmp_path / "x.pth"))


def test_detectron2_stored_anchors_are_checked(tmp_path):
    d2 = _d2_c4()
    d2["proposal_generator.anchor_generator.cell_anchors.0"] = np.zeros((15, 4), np.float32)
    with pytest.raises(ConversionError, match="anchors of level 0"):
        convert_weights(_pickle(tmp_path, "anchors.pkl", d2), str(tmp_path / "x.pth"))


def test_detectron2_torch_checkpoint(tmp_path):
    """A detectron2 ``.pth`` (DetectionCheckpointer: ``{"model", "iteration"}``) converts too."""
    d2 = {k: torch.from_numpy(v) for k, v in _d2_c4(classes=3).items()}
    src = str(tmp_path / "model_0009999.pth")
    save_checkpoint(src, {"model": d2, "iteration": 9999})
    cfg, fmt = convert_weights(src, str(tmp_path / "out.pth"))
    assert fmt == "detectron2-detector" and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert load_checkpoint(str(tmp_path / "out.pth"))["extra"]["class_names"] == [
        "class_0", "class_1", "class_2"]  # fmt: skip
