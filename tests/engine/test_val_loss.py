"""TEST.VAL_LOSS: the four losses on the val set at each evaluation, finite, without touching
BN statistics or the training RNG stream (a run with it trains the very same weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
from test_resume_kill import write_tiny_coco, write_tiny_config

from resdet.config import load_config
from resdet.engine.checkpoint import load_checkpoint
from resdet.engine.detection import run
from resdet.engine.val_loss import loss_mode

TERMS = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg")


def test_loss_mode_keeps_bn_statistics_and_restores_flags():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    model.eval()
    model[2].train()  # a submodule whose own flag differs must get it back
    before = model[1].running_mean.clone()
    with loss_mode(model):
        assert model.training and model[0].training and not model[1].training
        model(torch.randn(2, 3, 8, 8) * 5 + 3)
    assert torch.equal(model[1].running_mean, before)
    assert [m.training for m in model.modules()] == [False, False, False, True]


def test_val_loss_logged_finite_and_training_unchanged(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path / "ds"))
    write_tiny_coco(tmp_path / "ds", n_train=4, n_val=2)
    cfg_path = write_tiny_config(tmp_path / "tiny.yaml")
    opts = ["DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "2",
            "SOLVER.CHECKPOINT_PERIOD", "0", "MODEL.BACKBONE.NORM", "BN"]  # fmt: skip
    with_loss = tmp_path / "with"
    by_loss = ["TEST.VAL_LOSS", "True", "SOLVER.BEST_METRIC", "loss", "SOLVER.BEST_MODE", "min"]
    run(load_config(cfg_path, [*opts, "OUTPUT_DIR", str(with_loss), *by_loss]))
    lines = [json.loads(x) for x in (with_loss / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "val/coco/AP" in r]
    assert [r["iteration"] for r in evals] == [2, 4]
    for r in evals:
        for k in (*TERMS, "loss"):
            assert math.isfinite(r[f"val/{k}"]) and r[f"val/{k}"] >= 0, (k, r)
        assert r["val/loss"] == sum(r[f"val/{k}"] for k in TERMS)
    best = load_checkpoint(str(with_loss / "model_best.pth"))
    assert best["extra"]["best"]["metric"] == "loss"
    assert best["extra"]["best"]["value"] == min(r["val/loss"] for r in evals)

    # The same run without VAL_LOSS trains identical weights, BN statistics included: the
    # loss pass neither draws from the training RNG nor updates running statistics.
    plain = tmp_path / "plain"
    run(load_config(cfg_path, [*opts, "OUTPUT_DIR", str(plain)]))
    a = load_checkpoint(str(with_loss / "model_final.pth"))["model"]
    b = load_checkpoint(str(plain / "model_final.pth"))["model"]
    assert any("running_mean" in k for k in a)
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
