"""Folding frozen BN into convolutions: exact math, which pairs fold, detectors unchanged, and
the original model (and its checkpoints) untouched."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn
from torchvision.models import resnet18
from torchvision.ops import box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from resdet.accel import inference_copy
from resdet.config import load_config
from resdet.data.shapes_render import make_scene
from resdet.layers.fold import (
    find_conv_bn_pairs,
    fold_conv_bn_,
    fold_frozen_bn,
    fold_frozen_bn_training_,
)
from resdet.modeling.backbone.resnet import ResNet
from resdet.modeling.detection.build import build_detector
from resdet.utils.calibrate import calibrate_

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["MODEL.BACKBONE.DEPTH", "18", "MODEL.BACKBONE.WIDTH", "16",
        "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
        "MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE", "30"]  # fmt: skip


def tiny_detector(kind: str) -> tuple:
    """A calibrated (non-degenerate) R18/16-wide detector and its fixed 128x128 input."""
    torch.manual_seed(0)
    extra = ["MODEL.ANCHOR.SIZES", "[[16, 32, 64]]"] if kind == "c4" else [
        "MODEL.ANCHOR.SIZES", "[[8], [16], [32], [64], [128]]"]  # fmt: skip
    cfg = load_config(os.path.join(REPO, "configs", "base", f"{kind}.yaml"), TINY + extra)
    model = build_detector(cfg).eval()
    image, _, _ = make_scene((128, 128), 0, 0)
    inputs = [{"image": torch.from_numpy(image.transpose(2, 0, 1).copy())}]
    calibrate_(model, lambda: model(inputs))
    return model, inputs


def features_and_grads(models, x: torch.Tensor, rpn_head: bool = False) -> tuple:
    """Each model's backbone features on ``x`` and the gradients (by full parameter name) of a
    fixed random projection of them (and, with ``rpn_head``, of the RPN head's outputs on p2):
    the detector's own losses would sample RoIs, where float rounding can flip a near-tie."""
    outputs, grads = [], []
    for m in models:
        m.train()
        feats = m.backbone(x)
        proj = torch.Generator().manual_seed(2)
        loss = sum((f * torch.randn(f.shape, generator=proj)).sum() for f in feats.values())
        if rpn_head:
            logits, deltas = m.rpn.head([feats["p2"]])
            loss = loss + logits[0].sum() + deltas[0].square().sum()
        loss.backward()
        outputs.append(feats)
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    return outputs, grads


def assert_same_detections(a: dict, b: dict, atol: float) -> None:
    """Same number of detections, and each of ``a``'s has one in ``b`` with the same label,
    box and score within ``atol`` (order may differ between near-equal scores)."""
    assert len(a["boxes"]) == len(b["boxes"]) > 0
    iou = box_iou(a["boxes"], b["boxes"])
    iou[a["labels"][:, None] != b["labels"][None, :]] = -1
    match = iou.argmax(dim=1)
    assert (b["boxes"][match] - a["boxes"]).abs().max() <= atol
    assert (b["scores"][match] - a["scores"]).abs().max() <= atol


@pytest.mark.parametrize("norm", ["frozen", "bn"])
def test_fold_conv_bn_equals_conv_then_norm(norm):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=(norm == "bn"))
    bn = FrozenBatchNorm2d(7) if norm == "frozen" else nn.BatchNorm2d(7).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3.0)
    x = torch.randn(2, 5, 9, 11)
    with torch.no_grad():
        ref = bn(conv(x))
        fold_conv_bn_(conv, bn)
        out = conv(x)
    assert conv.bias is not None
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_pairs_found_in_resdet_and_torchvision_resnets():
    # R50: stem + 16 blocks x 3 + 4 projection shortcuts = 53 norms, all after a conv.
    r50 = ResNet(50, norm="FrozenBN", num_classes=0, out_features=["res5"])
    pairs = find_conv_bn_pairs(r50)
    assert len(pairs) == 53
    assert ("conv1", "bn1") in pairs and ("layer1.0.downsample.0", "layer1.0.downsample.1") in pairs
    tv = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    assert len(find_conv_bn_pairs(tv)) == 20
    # A norm that no convolution feeds is left alone.
    odd = nn.Sequential(nn.ReLU(), FrozenBatchNorm2d(3))
    assert find_conv_bn_pairs(odd) == []
    assert isinstance(fold_frozen_bn(odd)[1], FrozenBatchNorm2d)


@pytest.mark.parametrize("kind", ["fpn", "c4"])
def test_folded_detector_gives_the_same_detections(kind):
    model, inputs = tiny_detector(kind)
    keys = set(model.state_dict())
    folded = fold_frozen_bn(model)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    assert all(not p.requires_grad for p in folded.parameters())
    if kind == "c4":  # the C4 head borrows res5: the copy must fold the one it runs
        assert folded.roi_heads.box_head.res5 is folded.backbone.layer4
        assert isinstance(folded.roi_heads.box_head.res5[0].bn1, nn.Identity)
    with torch.inference_mode():
        ref_feats, new_feats = (
            model.backbone(torch.ones(1, 3, 64, 64)),
            folded.backbone(torch.ones(1, 3, 64, 64)),
        )
        ref, new = model(inputs)[0], folded(inputs)[0]
    for name in ref_feats:
        scale = ref_feats[name].abs().max()
        assert (ref_feats[name] - new_feats[name]).abs().max() <= 1e-5 * scale
    assert_same_detections(ref, new, atol=1e-4)
    # The original is untouched: same keys, still norms, and a checkpoint of it loads strictly.
    assert set(model.state_dict()) == keys
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    fresh = build_detector(load_config(os.path.join(REPO, "configs", "base", f"{kind}.yaml"),
                                       TINY + (["MODEL.ANCHOR.SIZES", "[[16, 32, 64]]"]
                                               if kind == "c4" else
                                               ["MODEL.ANCHOR.SIZES",
                                                "[[8], [16], [32], [64], [128]]"])))  # fmt: skip
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_inference_copy_channels_last():
    model, inputs = tiny_detector("fpn")
    fast = inference_copy(model, fold=True, channels_last=True)
    assert fast.channels_last and not model.channels_last and not fast.training
    with torch.inference_mode():
        assert_same_detections(model(inputs)[0], fast(inputs)[0], atol=1e-4)


def test_training_fold_keeps_keys_outputs_and_gradients():
    model, inputs = tiny_detector("fpn")
    live = copy.deepcopy(model)
    keys = list(live.state_dict())
    assert fold_frozen_bn_training_(live) == 20  # R18: stem + 8 blocks x 2 + 3 projections
    assert list(live.state_dict()) == keys
    live.load_state_dict(model.state_dict(), strict=True)
    torch.manual_seed(1)
    _, grads = features_and_grads((model, live), torch.randn(2, 3, 64, 64))
    assert grads[0].keys() == grads[1].keys()
    assert "backbone.bottom_up.layer4.0.conv1.weight" in grads[0]  # trainable stages
    assert "backbone.bottom_up.layer1.0.conv1.weight" not in grads[0]  # FREEZE_AT 2: frozen
    for name, g in grads[0].items():
        torch.testing.assert_close(
            grads[1][name], g, rtol=1e-4, atol=1e-5 * g.abs().max(), msg=name
        )
    # An inference copy of a live-folded model folds each norm exactly once.
    model.eval()
    live.eval()
    with torch.inference_mode():
        assert_same_detections(model(inputs)[0], fold_frozen_bn(live)(inputs)[0], 1e-4)


@pytest.mark.parametrize(
    "geometry", [{"stride": 2, "padding": 1}, {"dilation": 2, "padding": 2, "groups": 2}]
)
def test_a_scaled_kernel_call_differentiates_like_conv2d(geometry):
    import torch.nn.functional as F

    from resdet.layers.kernel_function import conv2d_kernels, kernel_autograd

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, bias=False, **geometry)
    x = torch.randn(2, 4, 11, 13, dtype=torch.float64, requires_grad=True)
    w = conv.weight.detach().double().requires_grad_()
    s = torch.rand(6, dtype=torch.float64).add(0.5).requires_grad_()  # the folded BN's scale
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    got = kernel_autograd(x, w, b, *conv2d_kernels(conv), scale=s)
    want = F.conv2d(x, w * s.view(-1, 1, 1, 1), b, conv.stride, conv.padding, conv.dilation,
                    conv.groups)  # fmt: skip
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    for a, r in zip(torch.autograd.grad(got, (x, w, s, b), g),
                    torch.autograd.grad(want, (x, w, s, b), g)):  # fmt: skip
        torch.testing.assert_close(a, r)
