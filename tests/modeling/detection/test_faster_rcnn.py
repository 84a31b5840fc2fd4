"""Faster R-CNN: one contract test over every registered backbone/head combination, the
classifier -> detector checkpoint seam, input handling, seeded reproducibility and an
overfit run scored with the COCO evaluator."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from resdet.config import load_config
from resdet.config.schema import Config
from resdet.data.records import DatasetMeta, DetectionRecord
from resdet.evaluation.coco import COCOEvaluator
from resdet.layers.norm import FrozenBatchNorm2d
from resdet.modeling.classifier import build_classifier
from resdet.modeling.detection.build import BACKBONES, BOX_HEADS, build_detector

K = 3
COMMON = [
    "MODEL.BACKBONE.DEPTH", "18",
    "MODEL.BACKBONE.WIDTH", "16",  # R18 at a quarter of the width: res5 has 128 channels
    "MODEL.BACKBONE.FREEZE_AT", "2",
    "MODEL.ROI_HEADS.NUM_CLASSES", str(K),
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
]  # fmt: skip
BACKBONE_OPTS = {
    "resnet": ["MODEL.BACKBONE.NAME", "resnet", "MODEL.ANCHOR.SIZES", "[[16, 32, 64]]"],
    "resnet_fpn": [
        "MODEL.BACKBONE.NAME", "resnet_fpn",
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.RPN.IN_FEATURES", "[p2, p3, p4, p5, p6]",
        "MODEL.ANCHOR.SIZES", "[[16], [32], [64], [128], [256]]",
    ],
}  # fmt: skip
HEAD_OPTS = {
    "c4": ["MODEL.ROI_HEADS.NAME", "c4"],
    "fpn": [
        "MODEL.ROI_HEADS.NAME", "fpn",
        "MODEL.ROI_HEADS.IN_FEATURES", "[p2, p3, p4, p5]",
        "MODEL.ROI_HEADS.POOLER_RESOLUTION", "7",
        "MODEL.ROI_HEADS.FC_DIM", "64",
    ],
}  # fmt: skip
COMBOS = [("resnet", "c4"), ("resnet_fpn", "fpn")]
LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}


def tiny_cfg(backbone: str = "resnet", head: str = "c4", extra: List[str] = ()) -> Config:
    return load_config(None, [*COMMON, *BACKBONE_OPTS[backbone], *HEAD_OPTS[head], *extra])


def _inputs(seed: int = 0) -> List[Dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8),
         "boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0]]), "labels": torch.tensor([1])},
        {"image": torch.randint(0, 256, (3, 48, 64), generator=g, dtype=torch.uint8),
         "boxes": torch.tensor([[0.0, 4.0, 30.0, 40.0], [30.0, 10.0, 62.0, 44.0]]),
         "labels": torch.tensor([0, 2])},
    ]  # fmt: skip


def test_combos_cover_the_registries() -> None:
    # A new registered backbone or head must be added to this contract test.
    assert set(BACKBONES.names()) == {b for b, _ in COMBOS}
    assert set(BOX_HEADS.names()) == {h for _, h in COMBOS}


@pytest.mark.parametrize(("backbone", "head"), COMBOS)
def test_train_step_contract(backbone: str, head: str) -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(backbone, head)).train()
    losses = model(_inputs())
    assert set(losses) == LOSS_KEYS
    for name, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), name
    sum(losses.values()).backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("conv1" in n for n in frozen) and any("layer1" in n for n in frozen)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    # FREEZE_AT 2 turned the stem's and res2's BN into frozen affines.
    assert isinstance(model.resnet.bn1, FrozenBatchNorm2d)
    assert isinstance(model.resnet.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(model.resnet.layer2[0].bn1, torch.nn.BatchNorm2d)


@pytest.mark.parametrize(("backbone", "head"), COMBOS)
def test_eval_detections_in_original_pixels(backbone: str, head: str) -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(backbone, head)).eval()
    image = _inputs()[0]["image"]
    with torch.no_grad():
        (plain,) = model([{"image": image}])
        (scaled,) = model([{"image": image, "orig_size": (96, 128)}])
    assert set(scaled) == {"boxes", "scores", "labels"}
    assert 0 < len(scaled["boxes"]) <= 100
    assert ((scaled["labels"] >= 0) & (scaled["labels"] < K)).all()
    assert (scaled["scores"] >= 0.05).all()
    b = scaled["boxes"]
    assert (b >= 0).all() and (b[:, 0::2] <= 128).all() and (b[:, 1::2] <= 96).all()
    # The 64x64 input was resized from 96x128: x scales by 2, y by 1.5.
    expected = plain["boxes"] * torch.tensor([2.0, 1.5, 2.0, 1.5])
    torch.testing.assert_close(b, expected)
    torch.testing.assert_close(scaled["scores"], plain["scores"])


@pytest.mark.parametrize(("backbone", "head"), COMBOS)
def test_image_without_objects_trains(backbone: str, head: str) -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(backbone, head)).train()
    inputs = _inputs()
    for x in inputs:
        x["boxes"], x["labels"] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    losses = model(inputs)
    assert set(losses) == LOSS_KEYS
    assert losses["loss_rpn_loc"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    assert losses["loss_rpn_cls"].item() > 0 and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert model.roi_heads.predictor.cls_score.weight.grad.abs().sum() > 0


def test_preprocess_normalizes_pads_and_flips_bgr() -> None:
    image = torch.stack([torch.full((50, 70), v) for v in (10.0, 100.0, 200.0)])
    cfg = tiny_cfg()
    mean, std = cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD
    rgb = build_detector(cfg).preprocess([{"image": image}])
    bgr = build_detector(tiny_cfg(extra=["MODEL.INPUT_FORMAT", "BGR"])).preprocess(
        [{"image": image}]
    )
    assert rgb.tensor.shape == (1, 3, 64, 96) and rgb.image_sizes == [(50, 70)]
    for c, (v_rgb, v_bgr) in enumerate(zip((10.0, 100.0, 200.0), (200.0, 100.0, 10.0))):
        assert rgb.tensor[0, c, 0, 0].item() == pytest.approx((v_rgb - mean[c]) / std[c])
        assert bgr.tensor[0, c, 0, 0].item() == pytest.approx((v_bgr - mean[c]) / std[c])
    assert (rgb.tensor[0, :, 50:, :] == 0).all() and (rgb.tensor[0, :, :, 70:] == 0).all()


def test_seeded_losses_are_reproducible() -> None:
    def one_step() -> Dict[str, float]:
        torch.manual_seed(0)
        model = build_detector(tiny_cfg("resnet", "c4")).train()
        return {k: v.item() for k, v in model(_inputs()).items()}

    first, second = one_step(), one_step()
    assert first == second
    assert len(set(first.values())) == 4  # four distinct, real numbers


@pytest.mark.parametrize(("backbone", "head"), COMBOS)
def test_classifier_checkpoint_loads_into_detector(backbone: str, head: str) -> None:
    torch.manual_seed(0)
    cls_cfg = load_config(
        None,
        ["MODEL.ARCH", "classifier", "MODEL.NUM_CLASSES", "10",
         "MODEL.BACKBONE.DEPTH", "18", "MODEL.BACKBONE.WIDTH", "16"],
    )  # fmt: skip
    classifier = build_classifier(cls_cfg)
    for m in classifier.modules():  # distinct statistics, to see that they are copied
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    state = classifier.state_dict()
    detector = build_detector(tiny_cfg(backbone, head))
    result = detector.resnet.load_state_dict(state, strict=False)
    assert sorted(result.unexpected_keys) == ["fc.bias", "fc.weight"]
    assert result.missing_keys == []
    trunk = detector.resnet
    torch.testing.assert_close(trunk.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    # A frozen BN (res2, FREEZE_AT 2) and the C4 head's res5 took the classifier's values.
    torch.testing.assert_close(trunk.layer1[0].bn1.running_mean, state["layer1.0.bn1.running_mean"])
    torch.testing.assert_close(trunk.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_incompatible_choices_fail_clearly() -> None:
    with pytest.raises(ValueError, match="needs a plain ResNet backbone"):
        build_detector(tiny_cfg("resnet_fpn", "c4"))
    with pytest.raises(ValueError, match=r"IN_FEATURES \['p2', 'p3', 'p4', 'p5'\] not produced"):
        build_detector(tiny_cfg("resnet", "fpn"))
    with pytest.raises(KeyError, match="did you mean 'resnet_fpn'"):
        build_detector(tiny_cfg(extra=["MODEL.BACKBONE.NAME", "resnet_fpm"]))
    with pytest.raises(ValueError, match="POOLER_CANONICAL_SIZE must be > 0"):
        build_detector(
            tiny_cfg("resnet_fpn", "fpn", ["MODEL.ROI_HEADS.POOLER_CANONICAL_SIZE", "0"])
        )


def test_pooler_canonical_size_reaches_the_fpn_pooler() -> None:
    model = build_detector(
        tiny_cfg("resnet_fpn", "fpn", ["MODEL.ROI_HEADS.POOLER_CANONICAL_SIZE", "56"])
    )
    pooler = model.roi_heads.box_head.pooler
    assert (pooler.canonical_scale, pooler.canonical_level) == (56, 4)


# --- overfit: the whole detector learns 4 synthetic images -----------------------------

COLORS = [(230, 40, 40), (40, 200, 40), (40, 60, 230)]


def _scenes(n: int = 4, size: int = 96, seed: int = 0) -> List[tuple]:
    """``n`` grey noisy images with 1-2 non-overlapping rectangles; class = colour."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        img = np.full((size, size, 3), 110, np.uint8)
        img += rng.integers(0, 30, img.shape, dtype=np.uint8)
        boxes: List[List[int]] = []
        labels: List[int] = []
        for _ in range(int(rng.integers(1, 3))):
            for _attempt in range(50):
                w, h = (int(v) for v in rng.integers(24, 48, 2))
                x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                box = [x0, y0, x0 + w, y0 + h]
                if all(
                    min(box[2], o[2]) <= max(box[0], o[0]) or min(box[3], o[3]) <= max(box[1], o[1])
                    for o in boxes
                ):
                    break
            label = int(rng.integers(0, 3))
            img[box[1] : box[3], box[0] : box[2]] = COLORS[label]
            boxes.append(box)
            labels.append(label)
        scenes.append((img, np.array(boxes, np.float32), np.array(labels, np.int64)))
    return scenes


@pytest.mark.slow
def test_overfit_four_images_reaches_high_ap() -> None:
    # The _one_thread fixture keeps this seeded run independent of the core count.
    torch.manual_seed(0)
    cfg = tiny_cfg(
        "resnet_fpn", "fpn",
        ["MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.ROI_HEADS.FC_DIM", "128",
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
         "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "500", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
         "MODEL.RPN.PRE_NMS_TOPK_TEST", "500", "MODEL.RPN.POST_NMS_TOPK_TEST", "100"],
    )  # fmt: skip
    model = build_detector(cfg)
    scenes = _scenes()
    inputs = [
        {"image": torch.from_numpy(img).permute(2, 0, 1).contiguous(),
         "boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}
        for img, boxes, labels in scenes
    ]  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    model.train()
    history = []
    for _ in range(60):
        loss = sum(model(inputs).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    start, end = np.mean(history[:3]), np.mean(history[-5:])
    assert end < 0.4 * start, (start, end)

    model.eval()
    with torch.no_grad():
        dets = model([{"image": x["image"], "orig_size": (96, 96)} for x in inputs])
    records = [
        DetectionRecord(f"scene{i}.png", i, 96, 96, boxes, labels)
        for i, (_, boxes, labels) in enumerate(scenes)
    ]
    evaluator = COCOEvaluator(records, DatasetMeta("overfit", ["red", "green", "blue"]))
    evaluator.process([{**d, "image_id": i} for i, d in enumerate(dets)])
    metrics = evaluator.evaluate()
    assert metrics["AP50"] > 0.7, metrics


def test_zero_classes_is_refused_when_building():
    from resdet.config.load import load_config
    from resdet.modeling.detection.build import build_detector

    cfg = load_config("configs/shapes_r18_fpn.yaml", ["MODEL.ROI_HEADS.NUM_CLASSES", "0"])
    with pytest.raises(ValueError, match="NUM_CLASSES is 0.*resolved by the tools"):
        build_detector(cfg)
