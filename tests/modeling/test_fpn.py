"""FPN: output names, shapes and strides against output_shape(); top-down wiring; errors."""

from __future__ import annotations

import math

import pytest
import torch

from resdet.modeling.backbone.fpn import FPN
from resdet.modeling.backbone.resnet import ResNet

STAGES = ["res2", "res3", "res4", "res5"]


def _fpn(out_channels: int = 16) -> FPN:
    torch.manual_seed(0)
    trunk = ResNet(depth=18, width=16, num_classes=0, out_features=STAGES)
    return FPN(trunk, out_channels=out_channels)


def test_outputs_match_output_shape() -> None:
    fpn = _fpn(16)
    shapes = fpn.output_shape()
    assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32, 64]
    assert all(s.channels == 16 for s in shapes.values())
    assert fpn.size_divisibility == 32
    x = torch.randn(2, 3, 128, 96)
    out = fpn(x)
    assert list(out) == list(shapes)
    for name, feat in out.items():
        stride = shapes[name].stride
        # Sizes are multiples of 32 (size_divisibility); p6 rounds up (kernel-1 max pool).
        assert feat.shape == (2, 16, math.ceil(128 / stride), math.ceil(96 / stride)), name


def test_top_down_pathway_reaches_fine_levels() -> None:
    # res5 influences p2 through the top-down path: a gradient of p2 must reach layer4.
    fpn = _fpn(8)
    out = fpn(torch.randn(1, 3, 64, 64))
    out["p2"].sum().backward()
    assert fpn.bottom_up.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert fpn.lateral[-1].weight.grad.abs().sum() > 0
    # p6 is a stride-2 subsampling of p5 (detectron2's LastLevelMaxPool with kernel 1).
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 128, 128))
    torch.testing.assert_close(out["p6"], out["p5"][:, :, ::2, ::2])


def test_fpn_keeps_classifier_parameter_names() -> None:
    fpn = _fpn()
    keys = {k.split(".", 1)[1] for k in fpn.state_dict() if k.startswith("bottom_up.")}
    assert keys == set(fpn.bottom_up.state_dict())
    assert "conv1.weight" in keys and "layer4.1.bn2.running_var" in keys


def test_fpn_needs_all_four_stages() -> None:
    trunk = ResNet(depth=18, num_classes=0, out_features=["res4"])
    with pytest.raises(ValueError, match="FPN needs res2..res5"):
        FPN(trunk)
