"""The Python API: Predictor(config, weights)(image) gives detections in original pixels, with
class names from the checkpoint or the config's dataset, for images of any mode."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_detector import save_tiny_detector
from torchvision.ops import box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from resdet.config import config_to_dict, load_config
from resdet.data.records import DatasetError
from resdet.data.shapes import SHAPES_CLASSES
from resdet.engine.checkpoint import save_checkpoint
from resdet.evaluation.tta import fuse_detections
from resdet.modeling.classifier import build_classifier
from resdet.predictor import Predictor, resolve_class_names, to_rgb_uint8

TINY = [
    "MODEL.BACKBONE.NAME", "resnet_fpn", "MODEL.BACKBONE.DEPTH", "18",
    "MODEL.BACKBONE.WIDTH", "16", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RPN.IN_FEATURES", "[p2, p3, p4, p5, p6]",
    "MODEL.ANCHOR.SIZES", "[[16], [32], [64], [128], [256]]",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.NAME", "fpn", "MODEL.ROI_HEADS.IN_FEATURES", "[p2, p3, p4, p5]",
    "MODEL.ROI_HEADS.POOLER_RESOLUTION", "7", "MODEL.ROI_HEADS.FC_DIM", "64",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
]  # fmt: skip
NAMES = ["cat", "dog", "kite"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "model_final.pth")
    cfg = save_tiny_detector(path, TINY, extra={"class_names": NAMES})
    return path, cfg


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    return np.ascontiguousarray(np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:h, :w])


def test_detections_come_back_in_original_pixels(checkpoint):
    path, cfg = checkpoint
    predictor = Predictor(None, path, score_thresh=0.2)
    image = _image(120, 200)  # resized to 58x96 (max size bound), so scale = 200 / 96
    dets = predictor(image)
    assert len(dets) > 0 and dets.image_size == (120, 200)
    assert dets.boxes.dtype == np.float32 and dets.labels.dtype == np.int64
    assert (dets.scores > 0.2).all() and (np.diff(dets.scores) <= 0).all()
    # Same model on the resized image by hand, boxes scaled back: the Predictor's answer.
    tensor, orig = predictor.preprocess(image)
    assert orig == (120, 200) and tuple(tensor.shape) == (3, 58, 96)
    with torch.no_grad():
        (raw,) = predictor.model([{"image": tensor}])
    scale = np.array([200 / 96, 120 / 58, 200 / 96, 120 / 58], np.float32)
    expected = np.minimum(raw["boxes"].numpy() * scale, [200, 120, 200, 120])
    np.testing.assert_allclose(dets.boxes, expected, rtol=1e-5, atol=1e-3)
    assert dets.names() == [NAMES[i] for i in dets.labels]
    coco = dets.to_coco(7)
    x1, y1, x2, y2 = dets.boxes[0]
    assert coco[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.01)
    assert coco[0]["category_id"] == dets.labels[0] + 1 and coco[0]["image_id"] == 7


def test_fast_inference_copy_is_what_runs_and_can_be_switched_off(checkpoint):
    path, _ = checkpoint
    fast = Predictor(None, path, score_thresh=0.2)
    plain = Predictor(None, path, score_thresh=0.2, overrides=["TEST.FAST_INFERENCE", "False"])
    assert plain.inference_model is plain.model
    assert fast.inference_model is not fast.model
    # The copy has BN folded away; the plain model (the one export traces) keeps its norms.
    norms = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)
    assert not any(isinstance(m, norms) for m in fast.inference_model.modules())
    assert any(isinstance(m, norms) for m in fast.model.modules())
    a, b = fast(_image(120, 200, seed=3)), plain(_image(120, 200, seed=3))
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_bf16_inference_through_solver_amp(checkpoint):
    # SOLVER.AMP switches the Predictor's precision as it does evaluation's: the fused copy's
    # convolutions then run in bf16 (one autocast region per call), the boxes stay put.
    path, _ = checkpoint
    fp32 = Predictor(None, path, score_thresh=0.2)
    bf16 = Predictor(None, path, score_thresh=0.2, overrides=["SOLVER.AMP.ENABLED", "True"])
    dtypes = []
    conv = next(m for m in bf16.inference_model.modules() if type(m).__name__ == "FusedConv2d")
    conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    image = _image(120, 200, seed=3)
    a, b = fp32(image), bf16(image)
    assert dtypes == [torch.bfloat16]
    assert len(a) > 0 and b.boxes.dtype == np.float32
    top = lambda d: torch.from_numpy(d.boxes[int(np.argmax(d.scores))])[None]  # noqa: E731
    iou = float(box_iou(top(a), top(b)))
    assert iou > 0.9, iou


def test_any_image_mode(checkpoint, tmp_path):
    predictor = Predictor(checkpoint[1], checkpoint[0], score_thresh=0.2)
    grey = _image(50, 70)[:, :, 0]
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((50, 70, 1), 128, np.uint8)], axis=2)
    want = predictor(rgb)
    for variant in (grey, grey[:, :, None], rgba, rgb.astype(np.float64)):
        got = predictor(variant)
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_array_equal(got.labels, want.labels)
    with pytest.raises(DatasetError, match=r"shape \(5, 5, 2\)"):
        to_rgb_uint8(np.zeros((5, 5, 2), np.uint8))
    with pytest.raises(DatasetError, match="missing.png"):
        predictor(str(tmp_path / "missing.png"))


def test_class_names_fallbacks():
    cfg = load_config(None, ["MODEL.ROI_HEADS.NUM_CLASSES", "7", "DATASETS.TEST", "[shapes_val]"])
    assert resolve_class_names(cfg, {"class_names": list("abcdefg")})[0] == list("abcdefg")
    # No (or wrong-sized) names in the checkpoint: the config's dataset names them.
    assert resolve_class_names(cfg, {"class_names": ["a"]})[0] == list(SHAPES_CLASSES)
    cfg.DATASETS.TEST = ["voc_2007_test"]  # 20 names, not 7: skipped
    names, ids = resolve_class_names(cfg, None)
    assert names == [f"class_{i}" for i in range(7)] and ids is None


def test_classifier_checkpoint_is_refused(tmp_path, checkpoint):
    cfg = load_config(None, ["MODEL.ARCH", "classifier", "MODEL.BACKBONE.DEPTH", "18",
                             "MODEL.BACKBONE.WIDTH", "16"])  # fmt: skip
    path = str(tmp_path / "cls.pth")
    save_checkpoint(
        path, {"model": build_classifier(cfg).state_dict(), "config": config_to_dict(cfg)}
    )
    with pytest.raises(ValueError, match="not a detector"):
        Predictor(None, path)
    with pytest.raises(ValueError, match="classification checkpoint"):
        Predictor(checkpoint[1], path)


def test_import_resdet_is_light_and_predictor_is_lazy():
    code = (
        "import sys, resdet; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'Predictor' in resdet.__all__"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo, env=env)
    import resdet

    assert resdet.Predictor is Predictor
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        resdet.nope  # noqa: B018


@pytest.mark.parametrize("fast", [True, False])
def test_batched_predictions_equal_one_by_one(checkpoint, fast):
    path, _ = checkpoint
    over = [] if fast else ["TEST.FAST_INFERENCE", "False"]
    predictor = Predictor(None, path, score_thresh=0.2, overrides=over, batch_size=4)
    # Three of one size (one full padded group), one that pads to the same input size
    # (120x196 resizes to 59x96, padded like 58x96), two of other sizes, one grey.
    images = [_image(120, 200, seed=s) for s in range(3)]
    images += [_image(120, 196, seed=3), _image(200, 120, seed=4), _image(64, 64, seed=5)]
    images.append(_image(120, 200, seed=6)[:, :, 0])
    sizes = []
    model = predictor.inference_model

    def counting(batch):
        sizes.append(len(batch))
        return model(batch)

    predictor.inference_model = counting
    batched = predictor(images)
    assert sizes == [4, 1, 1, 1]  # window 1: four images of one padded size; window 2: three
    predictor.inference_model = model
    assert len(batched) == len(images)
    found = 0
    for image, got in zip(images, batched):
        alone = predictor(image)
        assert got.image_size == alone.image_size == image.shape[:2]
        np.testing.assert_array_equal(got.labels, alone.labels)
        np.testing.assert_allclose(got.boxes, alone.boxes, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.scores, alone.scores, rtol=0, atol=1e-5)
        found += len(alone)
    assert found > 10  # the comparison saw real detections
    assert predictor.predict_batch([]) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Predictor(None, path, batch_size=0)


def test_the_config_limit_on_image_pixels_holds_for_files(checkpoint, tmp_path):
    import cv2

    path = str(tmp_path / "big.png")
    cv2.imwrite(path, _image(60, 80))  # 4,800 pixels
    small = Predictor(None, checkpoint[0], overrides=["INPUT.MAX_IMAGE_PIXELS", "4000"])
    with pytest.raises(DatasetError, match="big.png.*4,800 pixels.*4,000"):
        small(path)  # refused from the header, before decoding
    assert small(_image(60, 80)).image_size == (60, 80)  # arrays are already decoded
    assert Predictor(None, checkpoint[0])(path).image_size == (60, 80)
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS is -1; expected a pixel count"):
        Predictor(None, checkpoint[0], overrides=["INPUT.MAX_IMAGE_PIXELS", "-1"])


def test_test_time_augmentation_one_view_is_the_plain_answer_and_flip_fuses(checkpoint, caplog):
    path, _ = checkpoint
    image = _image(120, 200, seed=3)
    plain = Predictor(None, path, score_thresh=0.2)(image)
    one_view = ["TEST.AUG.ENABLED", "True", "TEST.AUG.FLIP", "False"]
    same = Predictor(None, path, score_thresh=0.2, overrides=one_view)
    assert same.tta is not None
    got = same(image)
    np.testing.assert_allclose(got.boxes, plain.boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got.scores, plain.scores, rtol=1e-5)
    np.testing.assert_array_equal(got.labels, plain.labels)
    flip = Predictor(None, path, score_thresh=0.2, overrides=["TEST.AUG.ENABLED", "True"])
    with caplog.at_level(logging.INFO, logger="resdet.predictor"):  # batches are not used
        Predictor(None, path, batch_size=4, overrides=["TEST.AUG.ENABLED", "True"])
    assert "each image runs alone, one pass per view (2 views), not in batches of 4" in caplog.text
    fused = flip([image, image])
    assert len(fused) == 2 and len(fused[0]) > 0
    np.testing.assert_allclose(fused[0].boxes, fused[1].boxes)
    # The fusion of the plain answer and the mirrored image's answer mapped back, both at the
    # config's own threshold (the views'); the 0.2 applies to the fused scores.
    assert flip.tta.score_thresh == 0.2
    assert flip.model.roi_heads.score_thresh == min(
        0.2, load_config(None, TINY).MODEL.ROI_HEADS.SCORE_THRESH_TEST
    )
    single = Predictor(None, path)
    views = []
    for img, mirrored in ((image, False), (np.ascontiguousarray(image[:, ::-1]), True)):
        d = single(img)
        boxes = d.boxes.copy()
        if mirrored:
            boxes[:, [0, 2]] = 200 - boxes[:, [2, 0]]
        views.append({"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(d.scores),
                      "labels": torch.from_numpy(d.labels)})  # fmt: skip
    expected = fuse_detections(
        views, fuse_iou=0.55, nms_thresh=0.5, score_thresh=0.2, max_detections=100
    )
    np.testing.assert_allclose(fused[0].boxes, expected["boxes"].numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(fused[0].scores, expected["scores"].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(fused[0].labels, expected["labels"].numpy())
    assert (fused[0].scores > 0.2).all() and (np.diff(fused[0].scores) <= 0).all()


def test_a_config_object_passed_in_is_not_changed(checkpoint):
    # The Predictor resolves its settings on a copy: the caller's Config keeps its values.
    path, _ = checkpoint
    cfg = load_config(None, [*TINY, "MODEL.ROI_HEADS.NUM_CLASSES", "0"])  # the last one wins
    before = config_to_dict(cfg)
    predictor = Predictor(cfg, path, score_thresh=0.9)
    assert predictor.cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3  # from the checkpoint's config
    assert predictor.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.9
    assert config_to_dict(cfg) == before
