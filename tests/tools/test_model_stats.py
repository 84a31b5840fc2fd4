"""Model statistics: MACs and parameters against published and hand-computed numbers, the
per-stage breakdown, detector rows, and the tools/model_stats.py command line."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tool_loader import load_tool

from resdet.config import load_config
from resdet.modeling.backbone.resnet import ResNet
from resdet.modeling.detection.build import build_detector
from resdet.modeling.stats import (
    classifier_stats,
    count_macs,
    default_input_size,
    detector_stats,
    model_stats,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_DET = [
    "MODEL.BACKBONE.DEPTH", "18", "MODEL.BACKBONE.WIDTH", "16",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ANCHOR.SIZES", "[[16, 32, 64]]",
]  # fmt: skip
TINY_FPN = [
    "MODEL.BACKBONE.NAME", "resnet_fpn", "MODEL.ROI_HEADS.NAME", "fpn",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RPN.IN_FEATURES", "[p2, p3, p4, p5, p6]",
    "MODEL.ANCHOR.SIZES", "[[16], [32], [64], [128], [256]]",
    "MODEL.ROI_HEADS.IN_FEATURES", "[p2, p3, p4, p5]", "MODEL.ROI_HEADS.POOLER_RESOLUTION", "7",
    "MODEL.ROI_HEADS.FC_DIM", "64",
]  # fmt: skip


def _conv(cin: int, cout: int, k: int, hw: int) -> int:
    """MACs of a k x k convolution producing an hw x hw map."""
    return cin * cout * k * k * hw * hw


def _cifar_macs(n: int) -> int:
    """Hand count for a CIFAR ResNet-(6n+2) on 32x32 with option A (parameter-free) shortcuts."""
    total = _conv(3, 16, 3, 32)
    total += 2 * n * _conv(16, 16, 3, 32)
    total += _conv(16, 32, 3, 16) + (2 * n - 1) * _conv(32, 32, 3, 16)
    total += _conv(32, 64, 3, 8) + (2 * n - 1) * _conv(64, 64, 3, 8)
    return total + 64 * 10  # fc


def _check_rows_add_up(stats) -> None:
    top = [r for r in stats.rows if r.indent == 0]
    assert sum(r.macs for r in top) == stats.total_macs
    assert sum(r.params for r in top) == stats.total_params


def test_resnet50_and_18_match_published_numbers() -> None:
    r50 = classifier_stats(ResNet(depth=50), (224, 224))
    # torchvision's ResNet-50: 25.557 M parameters, 4.09 "GFLOPS" (multiply-adds).
    assert r50.total_params == 25_557_032 == r50.trainable_params
    assert r50.total_macs / 1e9 == pytest.approx(4.09, abs=0.01)
    assert [r.name for r in r50.rows] == ["stem", "res2", "res3", "res4", "res5", "fc"]
    _check_rows_add_up(r50)
    # The stem: a 7x7/2 conv, 3 -> 64 channels, onto a 112x112 map.
    assert r50.rows[0].macs == _conv(3, 64, 7, 112)
    assert r50.rows[-1].macs == 2048 * 1000
    r18 = classifier_stats(ResNet(depth=18), (224, 224))
    assert r18.total_macs / 1e9 == pytest.approx(1.81, abs=0.01)
    assert r18.total_params / 1e6 == pytest.approx(11.69, abs=0.01)


@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_macs_match_hand_count(depth: int) -> None:
    model = ResNet(depth=depth, stem="cifar", shortcut="A", num_classes=10)
    stats = classifier_stats(model, (32, 32))
    assert stats.total_macs == _cifar_macs((depth - 2) // 6)
    assert [r.name for r in stats.rows] == ["stem", "res2", "res3", "res4", "fc"]
    _check_rows_add_up(stats)
    if depth == 56:
        assert stats.total_macs / 1e6 == pytest.approx(125.5, abs=0.1)  # ~0.125 GMACs


def test_frozen_parameters_are_not_trainable() -> None:
    stats = classifier_stats(ResNet(depth=18, freeze_at=2), (64, 64))
    frozen = sum(r.params for r in stats.rows if r.name in ("stem", "res2"))
    assert stats.trainable_params == stats.total_params - frozen


def test_count_macs_module_paths() -> None:
    model = ResNet(depth=18, num_classes=0, out_features=["res3"]).eval()
    out, macs = count_macs(model, torch.zeros(1, 3, 32, 32))
    assert list(out) == ["res3"]
    assert macs[""] == macs["Global"] == macs["conv1"] + macs["layer1"] + macs["layer2"]
    assert macs["layer1.0.conv1"] == _conv(64, 64, 3, 8)
    assert "layer3" not in macs  # the trunk stopped at res3


def test_c4_detector_rows() -> None:
    torch.manual_seed(0)
    model = build_detector(load_config(None, TINY_DET)).train()
    bn = model.resnet.layer4[0].bn1
    before = bn.running_mean.clone()
    stats = detector_stats(model, (60, 100), num_rois=10)
    # Counting leaves the model as it was: still training, res5's BN statistics untouched.
    assert model.training and bn.training and torch.equal(bn.running_mean, before)
    assert stats.padded_size == (64, 128) and stats.num_rois == 10
    names = [(r.indent, r.name) for r in stats.rows]
    assert names == [
        (0, "backbone"), (1, "stem"), (1, "res2"), (1, "res3"), (1, "res4"),
        (0, "rpn"), (0, "roi_heads"), (1, "res5 (per-RoI head)"), (1, "predictor"),
    ]  # fmt: skip
    _check_rows_add_up(stats)
    assert stats.total_params == sum(p.numel() for p in model.parameters())
    rows = {r.name: r for r in stats.rows}
    # res5 of R18 at width 16 on a 14x14 RoI feature: 64 -> 128 channels onto 7x7.
    res5 = 49 * (64 * 128 * 9 + 3 * 128 * 128 * 9 + 64 * 128)
    assert rows["res5 (per-RoI head)"].macs == 10 * res5
    assert rows["predictor"].macs == 10 * 128 * (4 + 12)
    # RPN: 3x3 conv 64 -> 64 and the 1x1 siblings (9 anchors: 9 + 36 outputs) on 4x8.
    assert rows["rpn"].macs == 32 * (64 * 64 * 9 + 64 * 45)
    more = detector_stats(model, (60, 100), num_rois=20)
    assert {r.name: r.macs for r in more.rows}["roi_heads"] == 2 * rows["roi_heads"].macs
    assert {r.name: r.macs for r in more.rows}["backbone"] == rows["backbone"].macs


def test_fpn_detector_rows() -> None:
    torch.manual_seed(0)
    model = build_detector(load_config(None, TINY_DET + TINY_FPN))
    stats = detector_stats(model, (64, 64), num_rois=5)
    names = [r.name for r in stats.rows if r.indent == 0]
    assert names == ["backbone", "fpn", "rpn", "roi_heads"]
    assert [r.name for r in stats.rows if r.indent == 1][:5] == [
        "stem",
        "res2",
        "res3",
        "res4",
        "res5",
    ]
    _check_rows_add_up(stats)
    rows = {r.name: r for r in stats.rows}
    # FPN laterals (1x1 from 16/32/64/128 channels) and 3x3 outputs onto 16/8/4/2 maps.
    sides = [(16, 16), (32, 8), (64, 4), (128, 2)]
    fpn = sum(_conv(c, 32, 1, s) + _conv(32, 32, 3, s) for c, s in sides)
    assert rows["fpn"].macs == fpn
    assert rows["box_head (2fc)"].macs == 5 * (32 * 49 * 64 + 64 * 64)
    assert "padded" not in stats.format_table()


def test_model_stats_defaults() -> None:
    cls_cfg = load_config(None, ["MODEL.ARCH", "classifier", "INPUT.CROP_SIZE", "64"])
    assert default_input_size(cls_cfg) == (64, 64)
    det_cfg = load_config(None, TINY_DET)
    assert default_input_size(det_cfg) == (800, 1333)
    stats = model_stats(det_cfg)
    assert stats.input_size == (800, 1333) and stats.padded_size == (800, 1344)
    assert stats.num_rois == det_cfg.MODEL.RPN.POST_NMS_TOPK_TEST
    assert "padded to 800x1344" in stats.format_table()
    with pytest.raises(ValueError, match="MODEL.ARCH"):
        model_stats(load_config(None, ["MODEL.ARCH", "detr"]))


def test_small_crops_with_batch_norm_are_counted() -> None:
    # 32x32 crops leave 1x1 maps at res5: counting must not trip a train-mode BN (batch of 1).
    cfg = load_config(os.path.join(REPO, "configs", "shapes_cls_r18.yaml"))
    assert cfg.INPUT.CROP_SIZE == 32 and cfg.MODEL.BACKBONE.NORM == "BN"
    stats = model_stats(cfg)
    assert stats.input_size == (32, 32) and stats.total_macs > 0


def _tool():
    return load_tool("model_stats")


def test_tool_prints_table_and_json(tmp_path, capsys) -> None:
    cfg = tmp_path / "cifar.yaml"
    cfg.write_text(
        "MODEL:\n  ARCH: classifier\n  NUM_CLASSES: 10\n"
        "  BACKBONE:\n    STEM: cifar\n    DEPTH: 20\n    SHORTCUT: A\nINPUT:\n  CROP_SIZE: 32\n"
    )
    tool = _tool()
    assert tool.main(["--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "classifier at input 32x32" in out and "1 MAC = 1 multiply-add = 2 FLOPs" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert set(lines) >= {"stem", "res2", "res3", "res4", "fc", "total"}
    assert float(lines["total"][2]) == pytest.approx(_cifar_macs(3) / 1e9, abs=1e-3)
    # Overrides and --size apply; --json is machine-readable.
    assert tool.main(["--config", str(cfg), "--size", "64", "64", "--json",
                      "MODEL.BACKBONE.DEPTH", "32"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert data["input_size"] == [64, 64]
    assert data["total_macs"] == 4 * (_cifar_macs(5) - 640) + 640  # 4x the pixels; fc once


def test_tool_reports_config_errors(tmp_path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("MODEL:\n  BACKBONE:\n    DEPHT: 50\n")
    assert _tool().main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "did you mean 'DEPTH'" in err
