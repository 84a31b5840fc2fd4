"""Atomic checkpoints, keep-last-K, weights_only loading, exact RNG resume, weight import."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from resdet.config import load_config
from resdet.engine import checkpoint as ckpt_mod
from resdet.engine.checkpoint import Checkpointer, load_checkpoint, load_model_weights
from resdet.engine.optim import build_lr_scheduler, build_optimizer
from resdet.modeling.backbone.resnet import ResNet


def _tiny(num_classes=3):
    torch.manual_seed(0)
    return ResNet(depth=8, stem="cifar", shortcut="A", num_classes=num_classes)


def _trained_state(tmp_path):
    cfg = load_config(None, ["SOLVER.WARMUP_ITERS", "0", "OUTPUT_DIR", str(tmp_path)])
    model = _tiny()
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt, 100)
    model(torch.randn(2, 3, 8, 8))["logits"].sum().backward()
    opt.step()
    sched.step()
    return cfg, model, opt, sched


def test_crash_mid_write_leaves_previous_checkpoint_valid(tmp_path, monkeypatch):
    cfg, model, opt, sched = _trained_state(tmp_path)
    ck = Checkpointer(str(tmp_path), max_to_keep=3, config=cfg)
    ck.save("model_0000010", model, opt, sched, iteration=10)
    ck.save("model_final", model, opt, sched, iteration=10)
    final_bytes = (tmp_path / "model_final.pth").read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")  # half a zip file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save("model_0000020", model, opt, sched, iteration=20)
    with pytest.raises(OSError):
        ck.save("model_final", model, opt, sched, iteration=20)
    monkeypatch.undo()

    assert not (tmp_path / "model_0000020.pth").exists()
    assert (tmp_path / "model_final.pth").read_bytes() == final_bytes
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert ck.last_checkpoint() == str(tmp_path / "model_final.pth")
    assert load_checkpoint(ck.last_checkpoint())["iteration"] == 10


def test_keeps_only_last_k_periodic_checkpoints(tmp_path):
    cfg, model, opt, sched = _trained_state(tmp_path)
    ck = Checkpointer(str(tmp_path), max_to_keep=2, config=cfg)
    for it in (5, 10, 15, 20, 25):
        ck.save(f"model_{it:07d}", model, opt, sched, iteration=it)
    ck.save("model_final", model, opt, sched, iteration=25)
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["model_0000020.pth", "model_0000025.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"


def test_checkpoint_is_weights_only_loadable_and_complete(tmp_path):
    cfg, model, opt, sched = _trained_state(tmp_path)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = Checkpointer(str(tmp_path), config=cfg).save(
        "model_0000001", model, opt, sched, scaler, iteration=1, extra={"class_names": ["a"]}
    )
    ck = load_checkpoint(path)
    assert set(ck) >= {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "iteration",
        "rng",
        "config",
        "meta",
    }
    assert ck["config"]["OUTPUT_DIR"] == str(tmp_path)
    assert ck["extra"]["class_names"] == ["a"]
    assert "conv1.weight" in ck["model"] and "fc.weight" in ck["model"]
    assert set(ck["rng"][0]) >= {"python", "numpy", "torch"}

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, bad)
    with pytest.raises(RuntimeError, match="evil.pth"):
        load_checkpoint(str(bad))


def test_resume_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    cfg, model, opt, sched = _trained_state(tmp_path)
    ck = Checkpointer(str(tmp_path), config=cfg)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    ck.save("model_0000007", model, opt, sched, iteration=7)
    expected = (random.random(), np.random.rand(), torch.rand(3))

    cfg2 = load_config(None, ["SOLVER.WARMUP_ITERS", "0"])
    fresh = ResNet(depth=8, stem="cifar", shortcut="A", num_classes=3)
    opt2 = build_optimizer(cfg2, fresh)
    sched2 = build_lr_scheduler(cfg2, opt2, 100)
    loaded = ck.resume(fresh, opt2, sched2)
    assert loaded["iteration"] == 7
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    assert sched2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    path = str(tmp_path / "cls.pth")
    torch.save({"model": _tiny(num_classes=3).state_dict()}, path)
    with pytest.raises(ValueError) as info:
        load_model_weights(_tiny(num_classes=10), path)
    msg = str(info.value)
    assert "'fc.weight'" in msg and "(3, 64)" in msg and "(10, 64)" in msg and "cls.pth" in msg


def test_loads_ddp_classifier_into_detector_backbone(tmp_path, caplog):
    classifier = _tiny()
    sd = {f"module.{k}": v for k, v in classifier.state_dict().items()}  # saved from DDP
    path = str(tmp_path / "cls.pth")
    torch.save({"model": sd, "iteration": 3}, path)

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = ResNet(
                depth=8, stem="cifar", shortcut="A", num_classes=0, out_features=["res4"]
            )
            self.head = nn.Linear(4, 4)

    det = Detector()
    with caplog.at_level(logging.INFO, logger="resdet"):
        result = load_model_weights(det, path, prefix="backbone")
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == ["fc.bias", "fc.weight"]
    assert "fc.{bias, weight}" in caplog.text
    for k, v in det.backbone.state_dict().items():
        assert torch.equal(v, classifier.state_dict()[k]), k
    with pytest.raises(ValueError, match="unexpected: fc"):
        load_model_weights(det, path, prefix="backbone", strict=True)
