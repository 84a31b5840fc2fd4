"""1x1 convolutions as GEMMs for NCHW training: the same outputs and gradients as ``F.conv2d``
(forward, both gradients, the on-the-fly folded convolution), the same parameters and keys,
and the ordinary convolution wherever the GEMMs do not apply."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

# pytest puts this folder on sys.path (rootdir-relative "prepend" import mode).
from test_fold import features_and_grads, tiny_detector

from resdet.accel import inference_copy, training_paths_
from resdet.layers import gemm
from resdet.layers.fold import ConvFrozenBN, fold_frozen_bn_training_
from resdet.layers.gemm import (
    GEMM_MIN_PIXELS,
    GemmConv2d,
    gemm_applies,
    gemm_autograd,
    gemm_conv2d,
    gemm_forward,
    gemm_training_,
    undo_gemm_training_,
)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_conv2d_and_writes_nchw(layout, bias):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(5, 6, 1, 1), torch.randn(5) if bias else None
    out = gemm_forward(x, w, b)
    assert out.is_contiguous()
    torch.testing.assert_close(out, F.conv2d(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_function_gradients_match_conv2d(batch):
    torch.manual_seed(0)
    x = torch.randn(batch, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gemm_autograd, (x, w, b))
    g = torch.randn(batch, 4, 7, 5, dtype=torch.float64)
    got = torch.autograd.grad(gemm_autograd(x, w, b), (x, w, b), g)
    want = torch.autograd.grad(F.conv2d(x, w, b), (x, w, b), g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)


def test_only_the_needed_gradients_are_computed():
    x = torch.randn(1, 4, 50, 50)
    w = torch.randn(3, 4, 1, 1, requires_grad=True)
    y = gemm_autograd(x, w, None)
    (gw,) = torch.autograd.grad(y.sum(), (w,))
    torch.testing.assert_close(gw, torch.autograd.grad(F.conv2d(x, w).sum(), (w,))[0])


def test_ordinary_convolution_where_the_gemms_do_not_apply(monkeypatch):
    side = int(GEMM_MIN_PIXELS**0.5) + 1
    big, small = torch.randn(1, 4, side, side), torch.randn(1, 4, 8, 8)
    w = torch.randn(3, 4, 1, 1)
    assert gemm_applies(big, w) and not gemm_applies(small, w)
    assert not gemm_applies(big.double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not gemm_applies(big, w)
    calls = []
    monkeypatch.setattr(gemm, "gemm_forward", lambda *a: calls.append(1) or F.conv2d(*a))
    gemm_conv2d(small, w)
    assert not calls
    gemm_conv2d(big, w)
    assert calls == [1]


def test_switch_keeps_keys_outputs_and_gradients(monkeypatch):
    monkeypatch.setattr(gemm, "GEMM_MIN_PIXELS", 0)  # the tiny model's maps are small
    model, _ = tiny_detector("fpn")
    # The reference folds its BN as well: folding alone changes float rounding in the forward
    # enough to flip a few ReLUs near zero (the RPN conv's weight gradient then moved by 3e-4
    # of its largest entry on an AVX-512 CPU), which is not the GEMMs' doing.
    fold_frozen_bn_training_(model)
    live = copy.deepcopy(model)
    keys, params = list(live.state_dict()), [id(p) for p in live.parameters()]
    names = gemm_training_(live)
    assert list(live.state_dict()) == keys
    assert [id(p) for p in live.parameters()] == params  # an optimizer built before still fits
    # 1x1 convolutions only: FPN laterals, RPN 1x1s (plain), the folded projection shortcuts
    # (stride 2 in R18: on the subsampled input) - not the 3x3 convolutions.
    assert "backbone.lateral.0" in names and "rpn.head.objectness" in names
    assert isinstance(live.backbone.lateral[0], GemmConv2d)
    assert "backbone.bottom_up.layer2.0.downsample.0" in names  # stride 2
    assert not any(n.endswith("conv1") or n.endswith("conv2") for n in names)
    calls = []
    real = gemm.gemm_forward
    monkeypatch.setattr(gemm, "gemm_forward", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(1)
    outputs, grads = features_and_grads((model, live), torch.randn(2, 3, 128, 128), rpn_head=True)
    assert calls, "the GEMMs did not run"
    for k, f in outputs[0].items():
        torch.testing.assert_close(outputs[1][k].detach(), f.detach(), rtol=1e-4, atol=1e-4)
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-3, atol=1e-4 * float(g.abs().max()),
                                   msg=name)  # fmt: skip
    # An inference copy starts from plain convolutions; undo restores the classes.
    fast = inference_copy(live, fuse=True)
    assert not any(isinstance(m, GemmConv2d) for m in fast.modules())
    assert undo_gemm_training_(live) == len(names)
    assert not any(isinstance(m, GemmConv2d) for m in live.modules())


def test_folded_one_by_one_convolution_takes_the_gemms(monkeypatch):
    # A stride-1 projection shortcut (R50's first block) folded on the fly with its frozen BN.
    monkeypatch.setattr(gemm, "GEMM_MIN_PIXELS", 0)
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    bn = FrozenBatchNorm2d(8)
    bn.weight.uniform_(0.5, 2.0)
    bn.running_var.uniform_(0.5, 2.0)
    plain = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), bn)
    live = copy.deepcopy(plain)
    fold_frozen_bn_training_(live)
    assert isinstance(live[0], ConvFrozenBN)
    assert gemm_training_(live) == ["0"] and live[0].gemm
    x = torch.randn(2, 4, 6, 6)
    outs = [m(x) for m in (plain, live)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    g = torch.randn_like(outs[0])
    want = torch.autograd.grad(outs[0], plain[0].weight, g)[0]
    got = torch.autograd.grad(outs[1], live[0].weight, g)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_training_paths_switch_both_nchw_kernels():
    model, _ = tiny_detector("fpn")
    done = training_paths_(model, fold=True, winograd=True)
    assert done["gemm"] > 0 and done["winograd"] > 0
    assert isinstance(model.rpn.head.objectness, GemmConv2d)


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("side", [9, 101])  # subsampled: 5x5 (oneDNN's call), 51x51 (GEMMs)
def test_strided_one_by_one_convolution_subsamples_for_the_gemms(monkeypatch, folded, side):
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    bn = FrozenBatchNorm2d(8)
    bn.weight.uniform_(0.5, 2.0)
    bn.running_var.uniform_(0.5, 2.0)
    plain = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=not folded), bn)
    live = copy.deepcopy(plain)
    if folded:
        fold_frozen_bn_training_(live)
        assert isinstance(live[0], ConvFrozenBN)
    assert gemm_training_(live) == ["0"] and live[0].gemm
    calls = []
    real = gemm.gemm_forward
    monkeypatch.setattr(gemm, "gemm_forward", lambda *a: calls.append(a[0].shape) or real(*a))
    if folded:  # fold.py holds the kernels' pair as imported
        monkeypatch.setattr(
            "resdet.layers.fold.GEMM_KERNELS", (gemm.gemm_forward, gemm.gemm_backward)
        )
    x = torch.randn(2, 4, side, side, requires_grad=True)
    outs = [m(x) for m in (plain, live)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    sub = (side + 1) // 2
    assert calls == ([torch.Size([2, 4, sub, sub])] if sub * sub >= GEMM_MIN_PIXELS else [])
    g = torch.randn_like(outs[0])
    want = torch.autograd.grad(outs[0], (x, plain[0].weight), g)
    got = torch.autograd.grad(outs[1], (x, live[0].weight), g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
