"""Weight import: torchvision and MSRA/Caffe2 ResNets become resdet checkpoints that compute
exactly what the source computed; hostile pickles and wrong shapes are refused."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from tool_loader import load_tool

from resdet.config import config_from_dict, config_to_dict, load_config
from resdet.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from resdet.export.convert import (
    CAFFE2_PIXEL_MEAN_BGR,
    FROZEN_BN_EPS,
    ConversionError,
    convert_weights,
    load_foreign_weights,
)
from resdet.modeling.backbone.resnet import ResNet
from resdet.modeling.classifier import build_classifier
from resdet.utils.safe_pickle import UnsafePickleError


def _tool(name: str):
    return load_tool(name)


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, so a swapped mean/var or a lost eps would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _load_converted(path: str) -> ResNet:
    ckpt = load_checkpoint(path)
    model = build_classifier(config_from_dict(ckpt["config"])).eval()
    load_model_weights(model, ckpt, strict=True)
    return model


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_weights_give_torchvision_logits(tmp_path, arch):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(num_classes=10).eval()
    _randomize_bn(tv, 1)
    src, dst = str(tmp_path / f"{arch}.pth"), str(tmp_path / "converted.pth")
    torch.save(tv.state_dict(), src)
    cfg, fmt = convert_weights(src, dst)
    assert fmt == "torchvision"
    assert cfg.MODEL.BACKBONE.DEPTH == int(arch[6:]) and cfg.MODEL.NUM_CLASSES == 10
    assert not cfg.MODEL.BACKBONE.STRIDE_IN_1X1 and cfg.MODEL.INPUT_FORMAT == "RGB"
    assert cfg.MODEL.PIXEL_STD == pytest.approx([58.395, 57.12, 57.375])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(_load_converted(dst)(x)["logits"], tv(x), atol=1e-5, rtol=1e-5)


def _msra_source(seed: int = 0) -> ResNet:
    """A ResNet-50 as MSRA's Caffe2 nets are: stride in the 1x1, BN a pure affine x * s + b.

    A quarter of the width (stem 16 channels) keeps the test fast: pickle protocol 2 pushes
    every array through a latin1 string, ~2 s each way for the 100 MB of a full ResNet-50.
    """
    torch.manual_seed(seed)
    model = ResNet(50, stride_in_1x1=True, norm="FrozenBN", num_classes=1000, width=16).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d):
            n = m.weight.shape[0]
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.fill_(1.0 - FROZEN_BN_EPS)  # so that the layer is exactly x * s + b
    return model


def _to_caffe2_blobs(model: ResNet) -> dict:
    """The model's weights under Caffe2 names, as in Detectron's ImageNetPretrained/MSRA/*.pkl."""
    blobs = {"conv1_w": model.conv1.weight, "fc1000_w": model.fc.weight, "fc1000_b": model.fc.bias}
    blobs["res_conv1_bn_s"], blobs["res_conv1_bn_b"] = model.bn1.weight, model.bn1.bias
    for s, stage in enumerate(model.stages(), start=2):
        for i, block in enumerate(stage):
            for branch, conv, bn in (
                ("2a", block.conv1, block.bn1),
                ("2b", block.conv2, block.bn2),
                ("2c", block.conv3, block.bn3),
            ) + ((("1", block.downsample[0], block.downsample[1]),) if block.downsample else ()):
                name = f"res{s}_{i}_branch{branch}"
                blobs[name + "_w"], blobs[name + "_bn_s"] = conv.weight, bn.weight
                blobs[name + "_bn_b"] = bn.bias
    out = {k: v.detach().numpy().copy() for k, v in blobs.items()}
    # What else such files carry: SGD momenta and bookkeeping, not weights.
    out["conv1_w_momentum"] = np.zeros(1, np.float32)
    out["lr"] = np.array([0.1], np.float32)
    return out


def test_msra_pickle_converts_to_identical_features(tmp_path):
    source = _msra_source()
    src = tmp_path / "R-50.pkl"
    with open(src, "wb") as f:
        # protocol 2 as Python 2 era files; arrays' buffers go through the latin1 path
        pickle.dump({"blobs": _to_caffe2_blobs(source)}, f, protocol=2)
    dst = str(tmp_path / "r50_msra.pth")
    cfg, fmt = convert_weights(str(src), dst)
    assert fmt == "caffe2" and cfg.MODEL.BACKBONE.DEPTH == 50 and cfg.MODEL.BACKBONE.WIDTH == 16
    assert cfg.MODEL.BACKBONE.STRIDE_IN_1X1 and cfg.MODEL.BACKBONE.NORM == "FrozenBN"
    assert cfg.MODEL.INPUT_FORMAT == "BGR" and cfg.MODEL.PIXEL_MEAN == CAFFE2_PIXEL_MEAN_BGR
    assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
    converted = _load_converted(dst)
    converted.out_features, converted._last = ["res4", "logits"], 5  # also compare features
    source.out_features, source._last = ["res4", "logits"], 5
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 50
    with torch.no_grad():
        want, got = source(x), converted(x)
    for key in ("res4", "logits"):
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)

    # --rgb: conv1 reads RGB instead, so the BGR image reversed gives the same result. The
    # reversed channel sum rounds differently, and 50 random layers amplify that: the stem is
    # compared tightly, the logits relative to their scale.
    rgb_dst = str(tmp_path / "r50_rgb.pth")
    cfg_rgb, _ = convert_weights(str(src), rgb_dst, to_rgb=True)
    assert cfg_rgb.MODEL.INPUT_FORMAT == "RGB"
    assert cfg_rgb.MODEL.PIXEL_MEAN == CAFFE2_PIXEL_MEAN_BGR[::-1]
    rgb = _load_converted(rgb_dst)
    rgb.out_features, source.out_features = ["stem", "logits"], ["stem", "logits"]
    with torch.no_grad():
        got, want = rgb(x.flip(1)), source(x)
    torch.testing.assert_close(got["stem"], want["stem"], atol=1e-4, rtol=1e-5)
    scale = want["logits"].abs().max().item()
    assert (got["logits"] - want["logits"]).abs().max().item() < 1e-4 * scale


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "was_run"
    src = tmp_path / "R-50.pkl"
    with open(src, "wb") as f:
        pickle.dump({"conv1_w": _RunsCode(str(marker))}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match="posix.mkdir|os.mkdir"):
        convert_weights(str(src), str(tmp_path / "out.pth"))
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    sd = torchvision.models.resnet18().state_dict()
    sd["layer2.0.conv2.weight"] = torch.zeros(128, 128, 5, 5)
    src = tmp_path / "bad.pth"
    torch.save(sd, src)
    with pytest.raises(ValueError, match=r"layer2\.0\.conv2\.weight.*\(128, 128, 5, 5\).*"
                       r"\(128, 128, 3, 3\)"):  # fmt: skip
        convert_weights(str(src), str(tmp_path / "out.pth"))


def test_unknown_layout_and_resdet_checkpoint(tmp_path):
    src = tmp_path / "odd.pkl"
    with open(src, "wb") as f:
        pickle.dump({"weights": np.zeros(3, np.float32)}, f, protocol=2)
    with pytest.raises(ConversionError, match="odd.pkl.*no Caffe2 ResNet blobs"):
        convert_weights(str(src), str(tmp_path / "out.pth"))

    # A tools/train_cls.py checkpoint is already resdet: loaded as is, not converted.
    cfg = load_config(None, ["MODEL.ARCH", "classifier", "MODEL.BACKBONE.DEPTH", "18"])
    model = build_classifier(cfg)
    path = str(tmp_path / "model_final.pth")
    save_checkpoint(path, {"model": model.state_dict(), "config": config_to_dict(cfg)})
    sd, loaded_cfg, fmt = load_foreign_weights(path)
    assert fmt == "resdet" and loaded_cfg.MODEL.BACKBONE.DEPTH == 18
    assert load_model_weights(build_classifier(loaded_cfg), sd, strict=True) is not None
    with pytest.raises(ConversionError, match="no conversion needed"):
        convert_weights(path, str(tmp_path / "again.pth"))


def test_cli_prints_detector_overrides(tmp_path, capsys):
    src, dst = tmp_path / "r18.pth", tmp_path / "r18_resdet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), src)
    convert_main = _tool("convert_weights").main
    assert convert_main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "ResNet-18" in out and f"MODEL.BACKBONE.PRETRAINED {dst}" in out
    assert "MODEL.BACKBONE.STRIDE_IN_1X1 False" in out
    assert convert_main([str(tmp_path / "missing.pkl"), str(dst)]) == 2


def test_detectron2_pickle_of_torchvision_weights(tmp_path):
    """detectron2's ImageNetPretrained/torchvision/R-*.pkl: torchvision tensors, d2 names."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10).eval()
    _randomize_bn(tv, 4)
    d2 = {}
    for k, v in tv.state_dict().items():  # what detectron2's convert-torchvision-to-d2.py does
        if "layer" not in k:
            k = "stem." + k
        for t in range(1, 5):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in range(1, 4):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        d2[k] = v.numpy()
    src = tmp_path / "R-18.pkl"
    with open(src, "wb") as f:
        pickle.dump({"model": d2, "__author__": "torchvision", "matching_heuristics": True}, f)
    cfg, fmt = convert_weights(str(src), str(tmp_path / "out.pth"))
    assert fmt == "detectron2" and not cfg.MODEL.BACKBONE.STRIDE_IN_1X1
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = _load_converted(str(tmp_path / "out.pth"))(x)["logits"]
        torch.testing.assert_close(got, tv(x), atol=1e-5, rtol=1e-5)
