"""resdet.accel: the training path a config and CPU call for, applied in place (same parameters,
keys and optimizer), and the generic fusing walk on a model resdet did not build."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
from torchvision.models import resnet18
from torchvision.ops.misc import FrozenBatchNorm2d

from resdet.accel import fuse_for_inference, prepare_for_training, to_channels_last
from resdet.config import load_config
from resdet.layers.fold import ConvFrozenBN, fold_frozen_bn
from resdet.layers.fuse import FusedConv2d
from resdet.layers.winograd import WinogradConv2d, winograd_available
from resdet.modeling.detection.build import build_detector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_detector() -> nn.Module:
    torch.manual_seed(0)
    cfg = load_config(
        os.path.join(REPO, "configs", "base", "fpn.yaml"),
        ["MODEL.BACKBONE.DEPTH", "18", "MODEL.BACKBONE.WIDTH", "16",
         "MODEL.ROI_HEADS.NUM_CLASSES", "3"],
    )  # fmt: skip
    return build_detector(cfg), cfg


@pytest.mark.parametrize("capability", ["AVX2", "AVX512", "DEFAULT"])
def test_prepare_for_training_keeps_parameters_and_keys(capability, monkeypatch):
    if capability == "AVX2" and not winograd_available():
        pytest.skip("NNPACK Winograd convolution not in this torch build / CPU")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    model, cfg = small_detector()
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    assert prepare_for_training(model, cfg, torch.device("cpu")) is model
    assert [id(p) for p in model.parameters()] == params  # an optimizer built before still fits
    assert list(model.state_dict()) == keys
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert any(type(m) is ConvFrozenBN for m in convs)  # SOLVER.FOLD_FROZEN_BN
    winograd = [m for m in convs if getattr(m, "winograd", False)]
    assert bool(winograd) == (capability == "AVX2")
    assert any(type(m) is WinogradConv2d for m in winograd) == (capability == "AVX2")
    assert model.channels_last == (capability == "AVX512")
    conv1 = model.backbone.bottom_up.conv1.weight
    assert conv1.is_contiguous(memory_format=torch.channels_last) == (capability == "AVX512")


def test_to_channels_last_uses_the_models_own_method():
    model, _ = small_detector()
    assert to_channels_last(model) is model and model.channels_last
    plain = to_channels_last(nn.Sequential(nn.Conv2d(3, 4, 3)))
    assert plain[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_fuse_walk_on_a_model_without_fuse_methods():
    # torchvision's ResNet has no fuse(): every convolution is fused without ReLU and the
    # outputs stay the same.
    torch.manual_seed(0)
    model = resnet18(weights=None, norm_layer=FrozenBatchNorm2d, num_classes=5).eval()
    fused = fuse_for_inference(fold_frozen_bn(model))
    assert not any(type(m) is nn.Conv2d for m in fused.modules())
    assert sum(isinstance(m, FusedConv2d) for m in fused.modules()) == 20
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
