"""Winograd 3x3 convolutions for training: the same outputs and gradients as ``F.conv2d``, the
same parameters and keys, and the ordinary convolution wherever the kernels do not apply."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

# pytest puts this folder on sys.path (rootdir-relative "prepend" import mode).
from test_fold import features_and_grads, tiny_detector

from resdet.accel import inference_copy
from resdet.layers import winograd
from resdet.layers.fold import fold_frozen_bn_training_
from resdet.layers.winograd import (
    WINOGRAD_MIN_SIZE,
    undo_winograd_training_,
    winograd_applies,
    winograd_autograd,
    winograd_available,
    winograd_conv2d,
    winograd_training_,
    winograd_weight_grad,
)

needs_winograd = pytest.mark.skipif(
    not winograd_available(), reason="NNPACK Winograd convolution not in this torch build / CPU"
)


def count_nnpack_calls(monkeypatch) -> list:
    """A list that grows by one entry per NNPACK convolution call from now on."""
    calls: list = []
    nnpack = torch._nnpack_spatial_convolution
    monkeypatch.setattr(
        torch, "_nnpack_spatial_convolution", lambda *a: calls.append(1) or nnpack(*a)
    )
    return calls


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.detach().double() - ref).abs().max() / ref.abs().max())


def _reference(x, w, b, g):
    """Output and (x, w, b) gradients of F.conv2d in float64."""
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    y = F.conv2d(xd, wd, bd, 1, 1)
    return (y.detach(), *torch.autograd.grad(y, (xd, wd, bd), g.double()))


@pytest.mark.parametrize("shape", [(2, 32, 16, 20), (1, 40, 13, 29), (3, 48, 9, 5)])
@pytest.mark.parametrize("band", [1, 8])
def test_weight_grad_matches_the_direct_convolution(shape, band):
    torch.manual_seed(0)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w)
    grad = torch.randn(n, 24, h, w)
    weight = torch.randn(24, c, 3, 3)
    ref = torch.ops.aten.convolution_backward(
        grad.double(), x.double(), weight.double(), [24], [1, 1], [1, 1], [1, 1], False,
        [0, 0], 1, [False, True, False],
    )[1]  # fmt: skip
    out = winograd_weight_grad(x, grad, band=band)
    assert out.shape == (24, c, 3, 3)
    assert _rel_err(out, ref) < 5e-5


@needs_winograd
@pytest.mark.parametrize("batch", [1, 2])
def test_function_matches_conv2d_forward_and_backward(batch):
    torch.manual_seed(0)
    x = torch.randn(batch, 32, 30, 41, requires_grad=True)
    w = (torch.randn(48, 32, 3, 3) * 0.05).requires_grad_()
    b = torch.randn(48, requires_grad=True)
    y = winograd_autograd(x, w, b)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), g)
    ref = _reference(x, w, b, g)
    for got, want, name in zip((y, *grads), ref, ("output", "input", "weight", "bias")):
        assert _rel_err(got, want) < 5e-5, name


@needs_winograd
def test_only_the_needed_gradients_are_computed(monkeypatch):
    calls = count_nnpack_calls(monkeypatch)
    x = torch.randn(2, 32, 16, 16)  # a frozen stage's output: no input gradient
    w = torch.randn(32, 32, 3, 3, requires_grad=True)
    y = winograd_conv2d(x, w, None)
    assert len(calls) == 2  # forward, image by image
    (gw,) = torch.autograd.grad(y.sum(), (w,))
    assert len(calls) == 2  # the weight gradient is not an NNPACK call; no input gradient
    assert _rel_err(gw, _reference(x, w, torch.zeros(32), torch.ones_like(y))[2]) < 5e-5


@needs_winograd
def test_ordinary_convolution_where_winograd_does_not_apply():
    w = torch.randn(32, 32, 3, 3)
    small = torch.randn(1, 32, WINOGRAD_MIN_SIZE - 1, 20)
    assert not winograd_applies(small, w)
    assert winograd_applies(torch.randn(1, 32, 20, 20), w)
    assert not winograd_applies(torch.randn(1, 32, 20, 20).double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd_applies(torch.randn(1, 32, 20, 20), w)
        out = winograd_conv2d(torch.randn(1, 32, 20, 20), w)
    assert out.dtype == torch.bfloat16  # autocast's own convolution ran
    torch.testing.assert_close(winograd_conv2d(small, w), F.conv2d(small, w, None, 1, 1))


@needs_winograd
def test_training_switch_keeps_keys_outputs_and_gradients(monkeypatch):
    model, _ = tiny_detector("fpn")
    live = copy.deepcopy(model)
    keys = list(live.state_dict())
    fold_frozen_bn_training_(live)
    names = winograd_training_(live)
    assert list(live.state_dict()) == keys
    # Winograd shapes only: 3x3 stride-1 convolutions of 32+ channels (FPN outputs, RPN head,
    # res3..res5 of this 16-wide R18); not the stem, strided, or 16-channel ones.
    assert "rpn.head.conv" in names and "backbone.output.0" in names
    assert "backbone.bottom_up.layer3.1.conv2" in names
    assert "backbone.bottom_up.conv1" not in names  # 7x7
    assert "backbone.bottom_up.layer3.0.conv1" not in names  # stride 2
    assert "backbone.bottom_up.layer1.0.conv1" not in names  # 16 channels

    calls = count_nnpack_calls(monkeypatch)
    # ReLU's kink turns a rounding-sized difference in a pre-activation that happens to sit at
    # zero into a whole gradient entry (on an AVX-512 machine one of layer4's 4,096 flipped and
    # moved layer2-4's weight gradients by ~1%); a smooth activation leaves only rounding.
    silu = F.silu
    monkeypatch.setattr(F, "relu", lambda t, inplace=False: silu(t))
    torch.manual_seed(1)
    outputs, grads = features_and_grads((model, live), torch.randn(2, 3, 128, 128), rpn_head=True)
    assert calls, "the Winograd kernels did not run"
    for k, f in outputs[0].items():
        f = f.detach()
        torch.testing.assert_close(
            outputs[1][k].detach(), f, rtol=1e-4, atol=1e-4 * float(f.abs().max())
        )
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-3, atol=1e-4 * float(g.abs().max()),
                                   msg=name)  # fmt: skip

    # An inference copy starts from plain convolutions; undo restores the classes.
    fast = inference_copy(live, fuse=True, winograd=True)
    assert not any(type(m).__name__.startswith("Winograd") for m in fast.modules())
    assert undo_winograd_training_(live) == len(names)
    assert not any(type(m).__name__.startswith("Winograd") for m in live.modules())


def test_switch_leaves_other_convolutions_alone():
    model = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 3, 2, 1),
                          nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=2,
                                                                    dilation=2))  # fmt: skip
    assert winograd_training_(model) == ["0"]
    assert type(model[1]) is nn.Conv2d and type(model[3]) is nn.Conv2d


@needs_winograd
@pytest.mark.parametrize(
    "capability,expected", [("AVX2", "winograd"), ("AVX512", "channels_last"), ("DEFAULT", "none")]
)
def test_training_path_follows_the_cpu(capability, expected, monkeypatch):
    # AVX2-only: Winograd (NNPACK beats oneDNN); AVX-512: oneDNN's NHWC kernels; each key
    # switches its own path off, and MODEL.CHANNELS_LAST already is NHWC.
    from resdet.accel import cpu_training_path
    from resdet.config import Config

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cfg, cpu = Config(), torch.device("cpu")
    assert cpu_training_path(cfg, cpu) == expected
    assert cpu_training_path(cfg, torch.device("cuda")) == "none"
    cfg.SOLVER.WINOGRAD = cfg.SOLVER.CPU_CHANNELS_LAST = False
    assert cpu_training_path(cfg, cpu) == "none"
    cfg.SOLVER.CPU_CHANNELS_LAST, cfg.MODEL.CHANNELS_LAST = True, True
    assert cpu_training_path(cfg, cpu) == "none"


@needs_winograd
@pytest.mark.parametrize("capability,expected", [("AVX2", True), ("AVX512", False)])
def test_evaluation_uses_winograd_where_it_beats_onednn(capability, expected, monkeypatch):
    # TEST.WINOGRAD asks for it; the CPU decides (AVX-512: oneDNN's kernels are faster).
    from resdet.accel import inference_model
    from resdet.config import Config

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    model, _ = tiny_detector("fpn")
    cfg = Config()
    fast = inference_model(model, cfg)
    assert any(getattr(m, "winograd", False) for m in fast.modules()) == expected
    cfg.TEST.WINOGRAD = False
    fast = inference_model(model, cfg)
    assert not any(getattr(m, "winograd", False) for m in fast.modules())


@needs_winograd
@pytest.mark.parametrize("bands", [1, 3, 40])
def test_banded_convolution_matches_conv2d(bands, monkeypatch):
    # Large maps go through NNPACK in bands of rows (bounding its workspace): the same result
    # as one call, forward and (with the training band size) both gradients.
    torch.manual_seed(0)
    x = torch.randn(2, 32, 40, 24, requires_grad=True)
    w = torch.randn(32, 32, 3, 3, requires_grad=True)
    b = torch.randn(32)
    per_image = 32 * 40 * 24 * 4
    band = -(-per_image // bands)
    monkeypatch.setattr(winograd, "WINOGRAD_BAND_BYTES", band)
    monkeypatch.setattr(winograd, "WINOGRAD_TRAIN_BAND_BYTES", band)
    calls = count_nnpack_calls(monkeypatch)
    ref = F.conv2d(x, w, b, padding=1)
    with torch.no_grad():
        out = winograd.winograd_forward(x, w, b)
    scale = float(ref.detach().abs().max())  # Winograd's rounding: ~1e-5 of the output's range
    torch.testing.assert_close(out, ref.detach(), rtol=1e-4, atol=1e-4 * scale)
    assert len(calls) == 2 * min(bands, 40)  # per image, per band
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (x, w), g)
    got = torch.autograd.grad(winograd_autograd(x, w, b), (x, w), g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-3 * float(e.abs().max()))
