"""ResNet family: torchvision parity, the paper's CIFAR sizes, plain nets, shortcut options,
stride placement, feature contract, freezing, zero-init and error messages."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from resdet.layers.norm import FrozenBatchNorm2d
from resdet.modeling.backbone.resnet import Bottleneck, ResNet, ZeroPadShortcut

ALL_STAGES = ["stem", "res2", "res3", "res4", "res5"]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so freezing checks mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_imagenet_depths_match_torchvision(depth: int) -> None:
    # Built on the meta device: only shapes and names matter, and no weights are downloaded.
    with torch.device("meta"):
        ours = ResNet(depth=depth, num_classes=1000)
        theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert _num_params(ours) == _num_params(theirs)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    for key, value in theirs_sd.items():
        assert ours_sd[key].shape == value.shape, key


@pytest.mark.parametrize(
    ("depth", "paper_millions"),
    [(20, "0.27"), (32, "0.46"), (44, "0.66"), (56, "0.85"), (110, "1.7")],
)
def test_cifar_parameter_counts_match_paper(depth: int, paper_millions: str) -> None:
    # Table 6 of the paper, option A shortcuts (parameter-free), 10 classes.
    with torch.device("meta"):
        model = ResNet(depth=depth, stem="cifar", shortcut="A", num_classes=10)
    assert f"{_num_params(model) / 1e6:.2g}" == paper_millions


def test_plain_net_has_no_shortcuts_and_differs_from_residual() -> None:
    torch.manual_seed(0)
    plain = ResNet(depth=20, stem="cifar", plain=True, num_classes=10)
    residual = ResNet(depth=20, stem="cifar", shortcut="A", num_classes=10)
    blocks = [b for stage in plain.stages() for b in stage]
    assert len(blocks) == 9
    assert all(not b.residual and b.downsample is None for b in blocks)
    # Option A adds no parameters, so the two nets share every key: same weights, and only
    # the shortcuts differ.
    residual.load_state_dict(plain.state_dict())
    plain.eval()
    residual.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out_plain, out_res = plain(x)["logits"], residual(x)["logits"]
    assert not torch.allclose(out_plain, out_res, atol=1e-4)

    # ImageNet plain-18: no projection anywhere, so fewer parameters than the option-B net.
    with torch.device("meta"):
        plain18, res18 = ResNet(depth=18, plain=True), ResNet(depth=18, shortcut="B")
    assert all(b.downsample is None for s in plain18.stages() for b in s)
    projections = sum(
        _num_params(b.downsample) for s in res18.stages() for b in s if b.downsample is not None
    )
    assert projections > 0
    assert _num_params(plain18) == _num_params(res18) - projections


def test_zero_pad_shortcut_forward() -> None:
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).view(2, 2, 4, 4)
    out = ZeroPadShortcut(2, 5, stride=2)(x)
    assert out.shape == (2, 5, 2, 2)
    assert torch.equal(out[:, :2], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 2:], torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="option A cannot reduce channels"):
        ZeroPadShortcut(4, 2, stride=1)


def test_shortcut_options_a_b_c() -> None:
    with torch.device("meta"):
        a = ResNet(depth=20, stem="cifar", shortcut="A", num_classes=10)
        b = ResNet(depth=50, shortcut="B")
        c = ResNet(depth=18, shortcut="C")
    a_short = [blk.downsample for s in a.stages() for blk in s if blk.downsample is not None]
    # Dimensions change at the entries of stages 2 and 3 only; option A has no parameters.
    assert len(a_short) == 2
    assert all(isinstance(m, ZeroPadShortcut) and _num_params(m) == 0 for m in a_short)
    # Option B: a projection exactly at each stage entry (res2 too: 64 -> 256 channels).
    with_proj = [
        (i, j) for i, s in enumerate(b.stages()) for j, blk in enumerate(s) if blk.downsample
    ]
    assert with_proj == [(0, 0), (1, 0), (2, 0), (3, 0)]
    # Option C: every block has a conv projection.
    c_blocks = [blk for s in c.stages() for blk in s]
    assert all(isinstance(blk.downsample, nn.Sequential) for blk in c_blocks)
    assert all(isinstance(blk.downsample[0], nn.Conv2d) for blk in c_blocks)
    # Basic-block depth 18 with option B: res2 keeps 64 channels, so no projection there.
    with torch.device("meta"):
        b18 = ResNet(depth=18, shortcut="B")
    assert b18.layer1[0].downsample is None and b18.layer2[0].downsample is not None


def test_stride_in_1x1_moves_the_stride() -> None:
    with torch.device("meta"):
        msra = ResNet(depth=50, stride_in_1x1=True)
        v15 = ResNet(depth=50, stride_in_1x1=False)
    for stage in ("layer2", "layer3", "layer4"):
        m0, v0 = getattr(msra, stage)[0], getattr(v15, stage)[0]
        assert isinstance(m0, Bottleneck)
        assert m0.conv1.stride == (2, 2) and m0.conv2.stride == (1, 1)
        assert v0.conv1.stride == (1, 1) and v0.conv2.stride == (2, 2)
    # Same output geometry either way.
    torch.manual_seed(0)
    a = ResNet(depth=50, width=8, stride_in_1x1=True, num_classes=0, out_features=["res5"])
    b = ResNet(depth=50, width=8, stride_in_1x1=False, num_classes=0, out_features=["res5"])
    x = torch.randn(1, 3, 64, 64)
    assert a(x)["res5"].shape == b(x)["res5"].shape == (1, 256, 2, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 18},
        {"depth": 50},
        {"depth": 20, "stem": "cifar"},
        {"depth": 20, "stem": "cifar", "plain": True},
        {"depth": 18, "plain": True},
    ],
    ids=["r18", "r50", "cifar20", "plain20", "plain18"],
)
def test_forward_backward(kwargs: dict) -> None:
    torch.manual_seed(0)
    # ImageNet nets at a quarter of the width: same blocks and wiring, 16x fewer MACs.
    width = None if kwargs.get("stem") == "cifar" else 16
    model = ResNet(num_classes=7, width=width, **kwargs)
    size = 16 if kwargs.get("stem") == "cifar" else 64
    logits = model(torch.randn(2, 3, size, size))["logits"]
    assert logits.shape == (2, 7)
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_out_features_match_output_shape(stem: str) -> None:
    torch.manual_seed(0)
    names = ALL_STAGES if stem == "imagenet" else ALL_STAGES[:4]
    depth = 18 if stem == "imagenet" else 20
    model = ResNet(depth=depth, stem=stem, num_classes=0, out_features=names, width=16)
    x = torch.randn(1, 3, 64, 64)
    out = model(x)
    shapes = model.output_shape()
    assert list(out) == names and set(shapes) == set(names)
    for name, feat in out.items():
        assert feat.shape[1] == shapes[name].channels, name
        assert feat.shape[-2:] == (64 // shapes[name].stride, 64 // shapes[name].stride), name
    if stem == "imagenet":
        assert [shapes[n].stride for n in names] == [4, 4, 8, 16, 32]
        assert [shapes[n].channels for n in names] == [16, 16, 32, 64, 128]
    else:
        assert [shapes[n].stride for n in names] == [1, 1, 2, 4]
        assert [shapes[n].channels for n in names] == [16, 16, 32, 64]
    # The trunk stops at the deepest requested stage (C4 detection): res5 is never run.
    c4 = ResNet(depth=18, num_classes=0, out_features=["res4"], width=16)
    calls = []
    c4.layer4.register_forward_hook(lambda *a: calls.append(1))
    assert list(c4(x)) == ["res4"] and not calls


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at(freeze_at: int) -> None:
    torch.manual_seed(0)
    model = ResNet(depth=18, width=16, num_classes=0, out_features=["res5"])
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)["res5"]
    frozen = copy.deepcopy(model)
    frozen.freeze(freeze_at)
    frozen.eval()
    parts = {"stem": nn.ModuleList([frozen.conv1, frozen.bn1])}
    parts.update({f"res{i + 2}": s for i, s in enumerate(frozen.stages())})
    for k, (name, part) in enumerate(parts.items(), start=1):
        should_freeze = freeze_at >= k
        assert all(p.requires_grad != should_freeze for p in part.parameters()), name
        norms = [n for n in part.modules() if isinstance(n, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        kinds = {type(n) for n in norms}
        assert kinds == ({FrozenBatchNorm2d} if should_freeze else {nn.BatchNorm2d}), name
    with torch.no_grad():
        after = frozen(x)["res5"]
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    # Frozen BN ignores train mode: the frozen part's output is the same in train and eval.
    if freeze_at >= 2:
        frozen.train()
        with torch.no_grad():
            stem_res2 = frozen.layer1(frozen.maxpool(torch.relu(frozen.bn1(frozen.conv1(x)))))
        frozen.eval()
        with torch.no_grad():
            ref = frozen.layer1(frozen.maxpool(torch.relu(frozen.bn1(frozen.conv1(x)))))
        torch.testing.assert_close(stem_res2, ref)


def test_zero_init_residual() -> None:
    torch.manual_seed(0)
    for depth, stem in ((18, "imagenet"), (50, "imagenet"), (20, "cifar")):
        model = ResNet(depth=depth, stem=stem, zero_init_residual=True, num_classes=10, width=16)
        blocks = [b for s in model.stages() for b in s]
        assert all(torch.count_nonzero(b.last_norm().weight) == 0 for b in blocks)
        assert all(torch.all(b.bn1.weight == 1) for b in blocks)
        default = ResNet(depth=depth, stem=stem, num_classes=10, width=16)
        assert all(torch.all(b.last_norm().weight == 1) for s in default.stages() for b in s)
    # A block whose residual branch is zeroed passes its input through (after the ReLU).
    trunk = ResNet(
        depth=18, width=16, zero_init_residual=True, num_classes=0, out_features=["res2"]
    )
    block = trunk.layer1[0].eval()
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(block(x.clone()), torch.relu(x))


def test_bad_arguments_raise_helpful_errors() -> None:
    with torch.device("meta"):  # nothing is computed; skip the weight initialisation cost
        with pytest.raises(
            ValueError, match=r"depth must be one of \[18, 34, 50, 101, 152\], got 42"
        ):
            ResNet(depth=42)
        with pytest.raises(ValueError, match="6n\\+2.*got 21"):
            ResNet(depth=21, stem="cifar")
        with pytest.raises(ValueError, match="stem must be 'imagenet' or 'cifar'"):
            ResNet(depth=18, stem="tiny")
        with pytest.raises(ValueError, match="shortcut must be one of .*got 'D'"):
            ResNet(depth=18, shortcut="D")
        with pytest.raises(ValueError, match="'res5' is not one of .*'res4'"):
            ResNet(depth=20, stem="cifar", out_features=["res5"])
        with pytest.raises(ValueError, match="'logits' is not one of"):
            ResNet(depth=18, num_classes=0, out_features=["logits"])
        with pytest.raises(ValueError, match="freeze_at must be in 0..5, got 6"):
            ResNet(depth=18, freeze_at=6)


def test_missing_stage_is_a_clear_error() -> None:
    cifar = ResNet(20, stem="cifar", num_classes=0, out_features=["res4"])
    with pytest.raises(ValueError, match="no stage 'res5'"):
        cifar.stage("res5")
