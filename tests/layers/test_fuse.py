"""Fused conv + bias + ReLU (+ residual) for CPU inference: same numbers as the plain ops, on the
fused kernels and on the fallback, and detectors unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

# pytest puts this folder on sys.path (rootdir-relative "prepend" import mode).
from test_fold import assert_same_detections, tiny_detector
from test_winograd import count_nnpack_calls

from resdet.accel import fuse_for_inference, inference_copy
from resdet.layers import fuse as fuse_module
from resdet.layers.fold import fold_frozen_bn
from resdet.layers.fuse import (
    CastOnceLinear,
    Conv1x1NCHW,
    FusedConv2d,
    mkldnn_bf16_available,
    mkldnn_fusion_available,
    winograd_available,
)
from resdet.layers.winograd import WINOGRAD_MIN_SIZE
from resdet.modeling.backbone.resnet import BasicBlock, Bottleneck, ResNet
from resdet.utils.calibrate import calibrate_

PATHS = ["fused", "fallback"] if mkldnn_fusion_available() else ["fallback"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "k,stride,relu,residual",
    [(1, 1, True, False), (3, 2, False, False), (1, 1, True, True), (3, 1, False, True)],
)
def test_fused_conv_matches_plain_ops(path, k, stride, relu, residual, monkeypatch):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, k, stride=stride, padding=k // 2)
    x = torch.randn(2, 6, 10, 12)
    ref = conv(x)
    other = torch.randn_like(ref) if residual else None
    ref = ref + other if residual else ref
    ref = F.relu(ref) if relu else ref
    fused = FusedConv2d(conv, relu)
    if path == "fallback":
        monkeypatch.setattr(FusedConv2d, "_fused_dtype", lambda self, x: None)
    with torch.inference_mode():
        out = fused(x, other)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("relu,residual", [(True, False), (False, True)])
def test_fused_conv_under_bf16_autocast(relu, residual):
    # What autocast's own convolution computes (bf16 input, weight and bias), as one fused call
    # with the weights cast once, where oneDNN computes bf16; the plain ops elsewhere.
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1)
    fused = FusedConv2d(conv, relu)
    x = torch.randn(2, 16, 12, 10)
    other = torch.randn(2, 24, 12, 10).bfloat16() if residual else None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = conv(x)
        ref = ref + other if residual else ref
        ref = F.relu(ref) if relu else ref
        out = fused(x, other)
        cast = fused._cast
        again = fused(x, other)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    if mkldnn_fusion_available() and mkldnn_bf16_available():
        assert fused._cast is cast and cast[0].dtype == torch.bfloat16  # cast once, kept
        with torch.no_grad():
            fused.weight.mul_(2)  # new weights (load_state_dict writes in place too)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            doubled = fused(x, None)
        assert fused._cast is not cast
        with torch.inference_mode():
            plain = F.conv2d(x, fused.weight, fused.bias, 1, 1)
        plain = F.relu(plain) if relu else plain
        torch.testing.assert_close(doubled.float(), plain, rtol=2e-2, atol=5e-2)


@pytest.mark.skipif(
    not mkldnn_fusion_available() or fuse_module._ACCUMULATE is None,
    reason="no oneDNN fused convolutions adding in place",
)
@pytest.mark.parametrize("bf16", [False, True])
def test_accumulate_writes_the_sum_into_the_residual(bf16):
    if bf16 and not mkldnn_bf16_available():
        pytest.skip("oneDNN computes no bf16 on this CPU")
    torch.manual_seed(0)
    fused = FusedConv2d(nn.Conv2d(8, 16, 1), relu=True)
    x = torch.randn(1, 8, 6, 7).contiguous(memory_format=torch.channels_last)
    other = torch.randn(1, 16, 6, 7).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        other = other.bfloat16() if bf16 else other
        expected = fused(x, other)
        given = other.clone()
        out = fused(x, given, accumulate=True)
    assert out.data_ptr() == given.data_ptr()  # no new output: the residual's memory
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def _fused_resnet(hook: bool = False):
    torch.manual_seed(0)
    trunk = ResNet(depth=50, width=8, norm="FrozenBN", num_classes=0, out_features=["res2", "res3"])
    calibrate_(trunk.eval(), lambda: trunk(torch.randn(1, 3, 64, 64)))
    kept = []
    if hook:  # a hook that keeps res2's first block's output
        trunk.layer1[0].register_forward_hook(lambda m, i, o: kept.append(o))
    return trunk, fuse_for_inference(fold_frozen_bn(trunk)), kept


@pytest.mark.skipif(not mkldnn_fusion_available(), reason="no oneDNN fused convolutions")
def test_blocks_after_the_first_add_into_their_input_unless_hooked():
    trunk, fused, _ = _fused_resnet()
    owns = [[b.owns_input for b in stage] for stage in (fused.layer1, fused.layer2)]
    assert owns == [
        [False, True, True],
        [False, True, True, True],
    ]  # the first reads the stage's input
    x = torch.randn(1, 3, 64, 64)
    seen = {}  # (the hooks return None: a returned value would replace the input / output)
    fused.layer1[1].register_forward_pre_hook(lambda m, i: seen.update(i=i[0].data_ptr()))
    fused.layer1[1].register_forward_hook(lambda m, i, o: seen.update(o=o.data_ptr()))
    with torch.inference_mode():
        got, want = fused(x), trunk(x)
    assert seen["o"] == seen["i"]  # the sum went into the block's input
    for name in ("res2", "res3"):  # the stage outputs the FPN reads are intact
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)
    # A forward hook on a block may keep its output: the next block then writes a new tensor.
    trunk, fused, kept = _fused_resnet(hook=True)  # the copies keep the hook
    assert not fused.layer1[1].owns_input and fused.layer1[2].owns_input
    # A block's own hook sees its input after the forward (not written into), and its output
    # (which the next block then does not write into either).
    plain, _, _ = _fused_resnet()
    plain.layer2[2].register_forward_hook(lambda m, i, o: None)
    again = fuse_for_inference(fold_frozen_bn(plain))
    assert [b.owns_input for b in again.layer2] == [False, True, False, False]
    with torch.inference_mode():
        fused(x)  # kept[0]: the fused first block's output, after the whole forward
        trunk(x)  # kept[1]: the plain one's
    torch.testing.assert_close(kept[0], kept[1], rtol=1e-4, atol=1e-4)


def test_fused_block_needs_a_folded_block():
    block = Bottleneck(16, 4, norm="FrozenBN").eval()
    with pytest.raises(ValueError, match="fold_frozen_bn"):
        block.fuse()
    fused = fold_frozen_bn(block)
    fused.fuse()
    assert fused.fused and not block.fused
    x = torch.randn(1, 16, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), block(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["fpn", "c4"])
def test_fused_detector_gives_the_same_detections(kind):
    model, inputs = tiny_detector(kind)
    fused = fuse_for_inference(fold_frozen_bn(model))
    assert fused.channels_last
    assert not any(type(m) is nn.Conv2d for m in fused.modules())
    if kind == "c4":
        assert fused.roi_heads.box_head.res5[0].fused
    else:  # the top-down add rides on the lateral convolution
        assert fused.backbone.fused and isinstance(fused.backbone.lateral[0], FusedConv2d)
        assert not model.backbone.fused
        # the box head's fully connected layers keep a bf16 weight for autocast
        assert isinstance(fused.roi_heads.box_head.fc1, CastOnceLinear)
    # ReLUs that now run inside their convolution are gone
    assert isinstance(fused.rpn.head.relu, nn.Identity)
    assert isinstance(model.rpn.head.relu, nn.ReLU)
    with torch.inference_mode():
        assert_same_detections(model(inputs)[0], fused(inputs)[0], atol=1e-4)


def test_cast_once_linear_gives_autocasts_numbers_and_casts_once():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    fast = CastOnceLinear(linear)
    x = torch.randn(5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), linear(x), rtol=0, atol=0)  # fp32: F.linear as is
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref, got = linear(x), fast(x)
            kept = fast._cast[0]
            fast(x)
            assert fast._cast[0] is kept  # cast once, then kept
        # The same bf16 operands autocast makes, so the same numbers.
        assert got.dtype == ref.dtype == torch.bfloat16 and torch.equal(got, ref)
        assert kept.dtype == torch.bfloat16 and torch.equal(kept, linear.weight.to(torch.bfloat16))
    # New weights are noticed: cast again.
    fast.load_state_dict({"weight": torch.zeros(32, 64), "bias": torch.ones(32)})
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x), torch.ones(5, 32, dtype=torch.bfloat16))


def test_inference_copy_with_fuse_leaves_the_model_alone():
    model, inputs = tiny_detector("fpn")
    fast = inference_copy(model, fuse=True)
    assert isinstance(fast.backbone.bottom_up.layer1[0], BasicBlock)  # R18's, fused
    assert fast.backbone.bottom_up.layer1[0].fused
    assert not model.backbone.bottom_up.layer1[0].fused
    assert type(model.backbone.bottom_up.layer1[0].conv1) is nn.Conv2d
    with torch.inference_mode():
        assert_same_detections(model(inputs)[0], fast(inputs)[0], atol=1e-4)


needs_winograd = pytest.mark.skipif(
    not (winograd_available() and mkldnn_fusion_available()),
    reason="NNPACK Winograd convolution not available in this torch build / CPU",
)


@needs_winograd
@pytest.mark.parametrize("size", [(19, 23), (7, 7)])  # Winograd / small map: plain conv
@pytest.mark.parametrize("relu,residual", [(True, False), (False, True), (True, True)])
def test_winograd_conv_matches_plain_ops(relu, residual, size, monkeypatch):
    calls = count_nnpack_calls(monkeypatch)
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 3, padding=1)
    x = torch.randn(2, 32, *size).contiguous(memory_format=torch.channels_last)
    ref = conv(x)
    other = torch.randn_like(ref) if residual else None
    ref = ref + other if residual else ref
    ref = F.relu(ref) if relu else ref
    fused = FusedConv2d(conv, relu, winograd=True)
    assert fused.winograd and "winograd" in repr(fused)
    with torch.inference_mode():
        out = fused(x, other)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-4, atol=1e-4)
    # NNPACK takes its Winograd path image by image (batch 2: two calls).
    assert len(calls) == (2 if min(size) >= WINOGRAD_MIN_SIZE else 0)


def test_winograd_is_only_used_where_it_applies():
    strided = FusedConv2d(nn.Conv2d(32, 32, 3, stride=2, padding=1), relu=False, winograd=True)
    narrow = FusedConv2d(nn.Conv2d(3, 32, 3, padding=1), relu=False, winograd=True)
    pointwise = FusedConv2d(nn.Conv2d(32, 32, 1), relu=False, winograd=True)
    assert not (strided.winograd or narrow.winograd or pointwise.winograd)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("residual", [False, True])
def test_conv1x1_nchw_matches_conv_and_writes_nchw(layout, residual):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 1)
    x = torch.randn(2, 6, 7, 9)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    ref = conv(x).detach()
    other = torch.randn_like(ref).contiguous() if residual else None
    ref = ref + other if residual else ref
    gemm = Conv1x1NCHW(conv)
    with torch.inference_mode():
        out = gemm(x, other)
    assert out.is_contiguous()  # NCHW, whatever the input's layout
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # Outside fp32 inference it is the convolution (with autograd).
    y = gemm(x.requires_grad_(), other)
    assert y.grad_fn is not None
    torch.testing.assert_close(y.detach(), ref, rtol=1e-5, atol=1e-5)


def test_conv1x1_nchw_refuses_other_convolutions():
    for conv in (nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1, padding=1),
                 nn.Conv2d(4, 4, 1, stride=2)):  # fmt: skip
        with pytest.raises(ValueError, match="1x1 stride-1 unpadded"):
            Conv1x1NCHW(conv)


@needs_winograd
@pytest.mark.parametrize("kind", ["fpn", "c4"])
def test_winograd_detector_gives_the_same_detections(kind):
    model, inputs = tiny_detector(kind)
    fast = inference_copy(model, fuse=True, winograd=True)
    assert any(getattr(m, "winograd", False) for m in fast.modules())
    # Winograd runs where the maps are NCHW throughout (FPN outputs, the RPN head, with GEMM
    # 1x1 convolutions), not in the residual blocks between oneDNN's NHWC convolutions.
    assert fast.rpn.head.conv.winograd
    assert isinstance(fast.rpn.head.objectness, Conv1x1NCHW)
    trunk = fast.backbone.bottom_up if kind == "fpn" else fast.backbone
    assert not any(getattr(m, "winograd", False) for m in trunk.modules())
    if kind == "fpn":
        assert all(isinstance(m, Conv1x1NCHW) for m in fast.backbone.lateral)
        assert all(m.winograd for m in fast.backbone.output)
        with torch.inference_mode():
            maps = fast.backbone(fast.preprocess(inputs).tensor)
        assert all(m.is_contiguous() for m in maps.values())  # NCHW for NNPACK
    with torch.inference_mode():
        assert_same_detections(model(inputs)[0], fast(inputs)[0], atol=1e-3)
