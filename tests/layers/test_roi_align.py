"""RoIAlign with the sparse CPU backward: torchvision's forward and the same gradients, for every
sampling mode and for boxes torchvision treats specially (empty, outside, on the border); the
sparse forward of channels_last maps gives torchvision's output, in inference and in training
(where the gradient comes back channels_last too)."""

from __future__ import annotations

import pytest
import torch
import torchvision

# pytest puts this folder on sys.path (rootdir-relative "prepend" import mode).
from test_fold import tiny_detector

import resdet.layers.roi_align as roi_align_module
from resdet.layers.roi_align import MultiScaleRoIAlign, RoIAlignFunction, roi_align, roi_align_taps


def _rois(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 80 - 10  # some start outside
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 60
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:4, 2:] = boxes[:4, :2]  # empty boxes
    boxes[4] = torch.tensor([0.0, 0.0, 68.0, 52.0])  # the whole map, to its last pixel
    batch = torch.randint(0, 2, (n, 1), generator=g).double()
    return torch.cat([batch, boxes], 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_same_output_and_gradient_as_torchvision(aligned, sampling_ratio):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 13, 17, dtype=torch.float64, requires_grad=True)
    rois = _rois(40, 1)
    args = ((7, 5), 0.25, sampling_ratio, aligned)
    ref = torchvision.ops.roi_align(x, rois, *args)
    out = roi_align(x, rois, *args)
    assert out.grad_fn is not None and "RoIAlignFunction" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn_like(ref)
    (want,) = torch.autograd.grad(ref, x, g)
    (got,) = torch.autograd.grad(out, x, g)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_channels_last_training_pools_and_returns_gradient_nhwc(
    aligned, sampling_ratio, monkeypatch
):
    # A channels_last map with a gradient (the training fast path) is pooled by the sparse
    # product, not torchvision's NCHW kernel (which would copy the map), and its gradient comes
    # back channels_last (an NCHW one would make the sum with the convolutions' gradients a
    # mixed-layout add and one more copy); values as torchvision's.
    torch.manual_seed(0)
    x = torch.randn(2, 6, 13, 17)
    rois = _rois(40, 1).float()
    args = ((7, 5), 0.25, sampling_ratio, aligned)
    ref_x = x.clone().requires_grad_()
    ref = torchvision.ops.roi_align(ref_x, rois, *args)
    g = torch.randn_like(ref)
    (want,) = torch.autograd.grad(ref, ref_x, g)

    def no_torchvision(*a):
        raise AssertionError("torchvision's kernel called for a channels_last map")

    monkeypatch.setattr(torch.ops.torchvision, "roi_align", no_torchvision)
    nhwc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = roi_align(nhwc, rois, *args)
    assert "RoIAlignFunction" in type(out.grad_fn).__name__
    (got,) = torch.autograd.grad(out, nhwc, g)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_channels_last_backward_reuses_the_forward_taps(monkeypatch):
    # The taps of a channels_last map are built once, by the forward; the backward sorts them
    # rather than building them again. A second backward (retain_graph) builds its own.
    calls = []
    real = roi_align_module.roi_align_taps
    monkeypatch.setattr(roi_align_module, "roi_align_taps", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    x = torch.randn(2, 6, 13, 17).contiguous(memory_format=torch.channels_last).requires_grad_()
    rois = _rois(40, 1).float()
    out = roi_align(x, rois, (7, 5), 0.25, 0, True)
    g = torch.randn_like(out)
    (first,) = torch.autograd.grad(out, x, g, retain_graph=True)
    assert len(calls) == 1
    (second,) = torch.autograd.grad(out, x, g)
    assert len(calls) == 2
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_taps_reproduce_the_forward():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    rois = _rois(12, 2)
    bins, pixel, weight = roi_align_taps(rois, x.shape, (4, 4), 0.2, 0, True)
    rows = x.permute(0, 2, 3, 1).reshape(-1, 3)
    out = torch.zeros(12 * 16, 3, dtype=torch.float64)
    out.index_add_(0, bins, rows[pixel] * weight[:, None])
    ref = torchvision.ops.roi_align(x, rois, 4, 0.2, 0, True)
    torch.testing.assert_close(out.view(12, 4, 4, 3).permute(0, 3, 1, 2), ref)


def test_without_gradients_it_is_torchvisions_call():
    x = torch.randn(1, 4, 10, 10)
    boxes = [torch.tensor([[1.0, 1.0, 30.0, 20.0]])]
    with torch.no_grad():
        out = roi_align(x.requires_grad_(), boxes, 3, 0.25)
    assert out.grad_fn is None
    torch.testing.assert_close(out, torchvision.ops.roi_align(x.detach(), boxes, 3, 0.25))


@pytest.mark.parametrize("channels_last", [False, True])
def test_multiscale_pooler_matches_torchvision(channels_last):
    # channels_last: the training fast path's maps, pooled and given their gradients NHWC.
    torch.manual_seed(0)
    feats = {f"p{i}": torch.randn(2, 4, 1024 >> i, 1280 >> i) for i in range(2, 6)}
    feats = {k: v.requires_grad_() for k, v in feats.items()}
    mine = feats
    if channels_last:
        mine = {
            k: v.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
            for k, v in feats.items()
        }
    boxes = []
    for _ in range(2):
        b = torch.rand(60, 4) * 200
        # Sides 8 to 600 px, log-uniform: every level (p2 below 112 px ... p5 from 448) gets boxes.
        b[:, 2:] = b[:, :2] + torch.empty(60, 2).uniform_(2.0, 6.4).exp()
        b[:4, 2:] = b[:4, :2] + torch.tensor([[40.0], [150.0], [300.0], [600.0]])  # p2..p5
        boxes.append(b)
    shapes = [(1024, 1280)] * 2
    ref_pool = torchvision.ops.MultiScaleRoIAlign(list(feats), 7, 0)
    ours = MultiScaleRoIAlign(list(feats), 7, 0)
    ref = ref_pool(feats, boxes, shapes)
    out = ours(mine, boxes, shapes)
    tol = 1e-5 if channels_last else 0.0  # the sparse product rounds differently
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, list(feats.values()), g)
    got = torch.autograd.grad(out, list(mine.values()), g)
    for level, (a, b) in enumerate(zip(got, want)):
        assert b.abs().sum() > 0, f"no box on level {level}"
        assert a.is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_channels_last_pooled_output_can_be_changed_in_place():
    # The sparse product writes into a tensor of its own, not a view made inside the autograd
    # Function (which autograd forbids changing in place): relu_ on it works, with the gradient.
    torch.manual_seed(0)
    x = torch.randn(1, 5, 20, 24)
    rois = torch.tensor([[0.0, 2.0, 3.0, 60.0, 70.0], [0.0, 10.0, 5.0, 90.0, 40.0]])
    ref_x = x.clone().requires_grad_()
    ref = torchvision.ops.roi_align(ref_x, rois, 7, 0.25, 0, True).relu_()
    nhwc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = roi_align(nhwc, rois, 7, 0.25, 0, True).relu_()
    g = torch.randn_like(ref)
    (want,) = torch.autograd.grad(ref, ref_x, g)
    (got,) = torch.autograd.grad(out, nhwc, g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_channels_last_without_rois_gives_a_zero_gradient():
    x = torch.randn(2, 3, 8, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = roi_align(x, torch.zeros(0, 5), 7, 0.5, 0, True)
    assert out.shape == (0, 3, 7, 7)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.shape == x.shape and not grad.any()


@pytest.mark.parametrize("canonical", [224, 56])
def test_multiscale_pooler_canonical_size_moves_boxes_up_the_levels(canonical):
    # ROI_HEADS.POOLER_CANONICAL_SIZE: a box of that side goes to p4, each halving one lower.
    torch.manual_seed(0)
    feats = {
        f"p{i}": torch.randn(1, 3, 256 >> i, 256 >> i, requires_grad=True) for i in (2, 3, 4, 5)
    }
    sides = torch.tensor([20.0, 40.0, 60.0, 120.0])
    boxes = [torch.cat([torch.full((4, 2), 8.0), 8.0 + sides[:, None].expand(4, 2)], 1)]
    ours = MultiScaleRoIAlign(list(feats), 7, 0, canonical_scale=canonical)
    ref = torchvision.ops.MultiScaleRoIAlign(list(feats), 7, 0, canonical_scale=canonical)
    out = ours(feats, boxes, [(256, 256)])  # the gradient path: our own level loop
    torch.testing.assert_close(out, ref(feats, boxes, [(256, 256)]), rtol=0, atol=0)
    levels = [int(v) for v in ours.map_levels(boxes)]  # 0 = p2
    assert levels == ([0, 0, 0, 1] if canonical == 224 else [0, 1, 2, 3])


def test_function_keeps_torchvisions_backward_signature():
    # Six forward arguments, gradient only for the feature map.
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    rois = torch.tensor([[0.0, 0.0, 0.0, 16.0, 16.0]])
    y = RoIAlignFunction.apply(x, rois, (2, 2), 0.5, 0, False)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.shape == x.shape
    assert float(g.sum()) == pytest.approx(8.0)  # 4 bins x 2 channels, weights sum to 1


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_channels_last_inference_forward_matches_torchvision(aligned, sampling_ratio, monkeypatch):
    # The no-grad forward of a channels_last map is the sparse product, not torchvision's call.
    torch.manual_seed(0)
    x = torch.randn(2, 6, 13, 17)
    rois = _rois(40, 3).float()
    args = ((7, 5), 0.25, sampling_ratio, aligned)
    ref = torchvision.ops.roi_align(x, rois, *args)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    calls = []
    real = roi_align_module._sparse_forward_nhwc
    monkeypatch.setattr(
        roi_align_module, "_sparse_forward_nhwc", lambda *a: calls.append(1) or real(*a)
    )
    with torch.inference_mode():
        out = roi_align(nhwc, rois, *args)
        as_list = roi_align(nhwc, [rois[rois[:, 0] == 0, 1:]], *args)
    assert len(calls) == 2
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert ref.abs().sum() > 0
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(as_list, ref[rois[:, 0] == 0], rtol=1e-5, atol=1e-5)


def test_channels_last_bf16_forward_under_autocast():
    # What the fused bf16 path hands the pooler: a bf16 NHWC map inside CPU autocast. The
    # product runs in fp32 (the sparse kernel has no bf16) and comes back in bf16.
    torch.manual_seed(0)
    x = torch.randn(1, 8, 20, 24).bfloat16().contiguous(memory_format=torch.channels_last)
    rois = _rois(30, 4).float()
    rois[:, 0] = 0
    ref = torchvision.ops.roi_align(x.float(), rois, 7, 0.5, 0, False)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(x, rois, 7, 0.5, 0, False)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


def test_multiscale_pooler_channels_last_inference():
    torch.manual_seed(0)
    feats = {f"p{i}": torch.randn(2, 4, 512 >> i, 640 >> i) for i in range(2, 6)}
    boxes = []
    for _ in range(2):
        b = torch.rand(50, 4) * 100
        b[:, 2:] = b[:, :2] + torch.empty(50, 2).uniform_(2.0, 6.0).exp()
        boxes.append(b)
    shapes = [(512, 640)] * 2
    pool = MultiScaleRoIAlign(list(feats), 7, 0)
    with torch.inference_mode():
        ref = torchvision.ops.MultiScaleRoIAlign(list(feats), 7, 0)(feats, boxes, shapes)
        nhwc = {k: v.contiguous(memory_format=torch.channels_last) for k, v in feats.items()}
        out = pool(nhwc, boxes, shapes)
    assert len({int(v) for v in pool.map_levels(boxes)}) > 1  # several levels were pooled
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
def test_multiscale_pooler_pools_nchw_inference_maps_nhwc(aligned, monkeypatch):
    # The Winograd inference path hands the pooler NCHW maps: they take the sparse product too
    # (after one channels_last copy), with torchvision's result.
    torch.manual_seed(0)
    feats = {f"p{i}": torch.randn(1, 4, 512 >> i, 640 >> i) for i in range(2, 6)}
    boxes = [torch.rand(40, 4) * 100]
    boxes[0][:, 2:] = boxes[0][:, :2] + torch.empty(40, 2).uniform_(2.0, 6.0).exp()
    calls = []
    real = roi_align_module._sparse_forward_nhwc
    monkeypatch.setattr(
        roi_align_module, "_sparse_forward_nhwc", lambda *a: calls.append(a[0].shape) or real(*a)
    )
    pool = MultiScaleRoIAlign(list(feats), 7, 0, aligned=aligned)
    with torch.inference_mode():
        out = pool(feats, boxes, [(512, 640)])
    ref_pool = MultiScaleRoIAlign(list(feats), 7, 0, aligned=aligned)
    monkeypatch.setattr(roi_align_module, "_pools_nhwc", lambda x, any_layout=False: False)
    with torch.inference_mode():
        ref = ref_pool(feats, boxes, [(512, 640)])  # torchvision's kernel, level by level
    assert len({int(v) for v in pool.map_levels(boxes)}) > 1  # several levels were pooled
    assert [shape[1:] for shape in calls] == [v.shape[1:] for v in feats.values()]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_autocast_forward_and_backward_keep_fp32_boxes(channels_last):
    # Under CPU bf16 autocast: the RoIs stay fp32 (a bf16 x near 1000 px is only good to 4 px),
    # the pooling runs in fp32, and the sparse backward (fp32-only kernel) returns a bf16
    # gradient close to the fp32 one; NHWC for an NHWC map (the +cl+bf16 training path).
    torch.manual_seed(0)
    x = torch.randn(1, 4, 300, 300)
    rois = torch.tensor([[0.0, 1001.0, 1003.0, 1150.0, 1110.0], [0.0, 5.0, 7.0, 90.0, 60.0]])
    ref_x = x.clone().requires_grad_()
    ref = torchvision.ops.roi_align(ref_x, rois, 7, 0.25, 0, True)
    g = torch.randn_like(ref)
    (want,) = torch.autograd.grad(ref, ref_x, g)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    xb = x.bfloat16().contiguous(memory_format=layout).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(xb, rois, 7, 0.25, 0, True)
    (got,) = torch.autograd.grad(out, xb, g.to(out.dtype))
    assert out.dtype == got.dtype == torch.bfloat16
    assert got.is_contiguous(memory_format=layout)
    # The boxes were not rounded: bf16 map and gradient rounding only (~1e-2), not 4-px shifts.
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=3e-2)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("kind", ["fpn", "c4"])
def test_bf16_autocast_detector_training_step(kind, monkeypatch):
    model, inputs = tiny_detector(kind)
    model.train()
    # A small RoI sample: on CPUs without native bf16 (AVX2) autocast emulates it, and 512
    # RoIs through C4's res5 took over a minute; the dtypes checked here are the same.
    model.rpn.post_nms_topk[True] = 128
    model.roi_heads.batch_size_per_image = 64
    for x in inputs:
        x["boxes"] = torch.tensor([[10.0, 10.0, 60.0, 70.0], [30.0, 20.0, 100.0, 90.0]])
        x["labels"] = torch.tensor([1, 2])
    pooled = []  # (map dtype, RoI dtype) of every RoIAlign call
    real = RoIAlignFunction.apply
    monkeypatch.setattr(
        RoIAlignFunction, "apply", lambda *a: pooled.append((a[0].dtype, a[1].dtype)) or real(*a)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(inputs)
    sum(losses.values()).backward()
    # FPN pools bf16 maps (its output convolutions ran under autocast); C4's res4 ends in a
    # frozen-BN residual sum, fp32. Either way the RoIs arrive in fp32.
    expected_map = torch.bfloat16 if kind == "fpn" else torch.float32
    assert pooled and all(p == (expected_map, torch.float32) for p in pooled), pooled
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
