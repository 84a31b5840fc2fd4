"""model_best.pth and early stopping, driven by fake metric sequences through the real loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from resdet.config import ConfigError, load_config
from resdet.engine.checkpoint import Checkpointer, load_checkpoint
from resdet.engine.hooks import CheckpointHook, EvalHook, MetricsHook, MetricsWriter
from resdet.engine.optim import build_lr_scheduler
from resdet.engine.selection import (
    BestCheckpointHook,
    EarlyStopHook,
    MetricTracker,
    build_selection_hooks,
)
from resdet.engine.trainer import train_loop


def _batches():
    g = torch.Generator().manual_seed(0)
    while True:
        x = torch.randn(8, 4, generator=g)
        yield x, x.sum(1, keepdim=True)


def _mse(model, batch):
    x, y = batch
    return {"loss_mse": (model(x) - y).pow(2).mean()}


def _fake_eval(values, key="coco/AP50"):
    """An eval_fn returning the next value of ``values`` at each call (and counting calls)."""
    seq = iter(values)
    calls = []

    def fn():
        calls.append(1)
        return {key: next(seq), "coco/AP": 0.0}

    return fn, calls


def _train(tmp_path, values, patience=0, mode="max", max_iter=60, hook_state=None, start=0):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    cfg = load_config(None, ["SOLVER.WARMUP_ITERS", "0"])
    sched = build_lr_scheduler(cfg, opt, max_iter)
    ckpt = Checkpointer(str(tmp_path), max_to_keep=2)
    eval_fn, calls = _fake_eval(values)
    writer = MetricsWriter(str(tmp_path), start, enabled=True)
    hooks = [
        MetricsHook(writer, period=7),
        EvalHook(10, eval_fn, writer),
        BestCheckpointHook(ckpt, "coco/AP50", mode, extra={"class_names": ["a"]}),
    ]
    if patience:
        hooks.append(EarlyStopHook("coco/AP50", mode, patience))
    hooks.append(CheckpointHook(ckpt, 10))
    state = train_loop(
        model, _mse, _batches(), opt, sched, start, max_iter, hooks, hook_state=hook_state
    )
    return state, calls, ckpt


def test_best_checkpoint_follows_the_best_value_and_never_moves_last_checkpoint(tmp_path):
    # Evaluations at 10, 20, 30, 40, 50 and the final one at 60; the best is 0.5 at 40
    # (0.3 at 30 equals 20's 0.3: not an improvement; NaN never is).
    state, calls, ckpt = _train(tmp_path, [0.1, 0.3, 0.3, 0.5, math.nan, 0.4])
    assert len(calls) == 6 and state.iteration == 60
    best = load_checkpoint(str(tmp_path / "model_best.pth"))
    assert best["iteration"] == 40
    assert best["extra"]["best"] == {
        "metric": "coco/AP50", "value": 0.5, "mode": "max", "iteration": 40
    }  # fmt: skip
    assert best["extra"]["metrics"]["coco/AP50"] == 0.5
    assert best["extra"]["class_names"] == ["a"] and best["optimizer"] == {}
    assert ckpt.last_checkpoint() == str(tmp_path / "model_final.pth")
    # Pruning keeps two periodic checkpoints; model_best.pth is never pruned.
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["model_0000040.pth", "model_0000050.pth", "model_best.pth",
                     "model_final.pth"]  # fmt: skip
    # The final checkpoint carries the tracker for a resume.
    final = load_checkpoint(str(tmp_path / "model_final.pth"))
    rec = final["extra"]["hook_state"]["best_checkpoint"]
    assert (rec["best"], rec["best_iter"], rec["bad_evals"]) == (0.5, 40, 2)


def test_min_mode_saves_at_each_lower_value(tmp_path):
    _train(tmp_path, [3.0, 2.0, 2.5, 1.0, 1.5, 1.2], mode="min")
    best = load_checkpoint(str(tmp_path / "model_best.pth"))
    assert best["iteration"] == 40 and best["extra"]["best"]["value"] == 1.0


def test_early_stop_after_patience_evaluations_ends_cleanly(tmp_path, caplog):
    caplog.set_level("INFO", logger="resdet")
    # Best 0.4 at iteration 20; 30 and 40 do not improve: patience 2 stops at 40.
    state, calls, ckpt = _train(tmp_path, [0.2, 0.4, 0.3, 0.4, 0.9, 0.9], patience=2)
    assert state.iteration == 40 and len(calls) == 4  # no second evaluation at the stop
    assert "early stopping: coco/AP50 has not improved on 0.4000 (iteration 20)" in (
        state.stop_reason
    )
    assert "training stopped at iteration 40: early stopping" in caplog.text
    final = load_checkpoint(str(tmp_path / "model_final.pth"))
    assert final["iteration"] == 40 and final["extra"]["metrics"]["coco/AP50"] == 0.4
    assert load_checkpoint(str(tmp_path / "model_best.pth"))["iteration"] == 20
    # The window since the last log line (iterations 36-40) was written, not lost.
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if "loss" in r][-2:] == [35, 40]

    # --resume after the stop does not train further: the stop is in the checkpoint.
    hook_state = final["extra"]["hook_state"]
    state2, calls2, _ = _train(tmp_path, [0.9], patience=2, hook_state=hook_state, start=40)
    assert state2.iteration == 40 and state2.stop_reason == state.stop_reason
    assert len(calls2) == 1  # the final evaluation only


def test_resumed_run_remembers_the_best_value_and_the_count(tmp_path):
    # Stopped (killed) at 30 after 0.4 at 20 and 0.3 at 30: one evaluation without improvement.
    tracker = MetricTracker("coco/AP50", "max")
    tracker.update(0.4, 20)
    tracker.update(0.3, 30)
    hook_state = {
        "best_checkpoint": tracker.state_dict(),
        "early_stop": {"tracker": tracker.state_dict()},
    }
    # 0.35 at 40 is the second evaluation without improvement: patience 2 stops there.
    state, calls, _ = _train(
        tmp_path, [0.35, 0.9], patience=2, hook_state=hook_state, start=30, max_iter=60
    )
    assert state.iteration == 40 and len(calls) == 1
    assert not (tmp_path / "model_best.pth").exists()  # 0.35 < 0.4 from before the resume


def test_selection_config_errors(tmp_path):
    ckpt = Checkpointer(str(tmp_path))

    def hooks(*opts, has_eval=True):
        return build_selection_hooks(load_config(None, list(opts)), ckpt, {}, has_eval)

    assert hooks() == []
    kinds = [type(h).__name__ for h in hooks("SOLVER.BEST_METRIC", "coco/AP", "TEST.EVAL_PERIOD",
                                             "100", "SOLVER.EARLY_STOP_PATIENCE", "3")]  # fmt: skip
    assert kinds == ["BestCheckpointHook", "EarlyStopHook"]
    with pytest.raises(ConfigError, match="EARLY_STOP_PATIENCE needs SOLVER.BEST_METRIC"):
        hooks("SOLVER.EARLY_STOP_PATIENCE", "2")
    with pytest.raises(ConfigError, match="BEST_MODE must be 'max' or 'min', got 'maximum'"):
        hooks("SOLVER.BEST_METRIC", "coco/AP", "SOLVER.BEST_MODE", "maximum")
    with pytest.raises(ConfigError, match="needs a validation set"):
        hooks("SOLVER.BEST_METRIC", "coco/AP", has_eval=False)
    with pytest.raises(ConfigError, match="needs TEST.VAL_LOSS True"):
        hooks("SOLVER.BEST_METRIC", "loss", "SOLVER.BEST_MODE", "min")
    with pytest.raises(ConfigError, match="final evaluation only"):
        hooks("SOLVER.BEST_METRIC", "coco_tta/AP", "TEST.AUG.ENABLED", "True")
    with pytest.raises(ConfigError, match="final evaluation only"):
        hooks("SOLVER.BEST_METRIC", "val2/voc_tta/mAP07")  # one of several test sets
    assert hooks("SOLVER.BEST_METRIC", "shapes_tta/coco/AP")  # a test set named *_tta


def test_unknown_metric_names_the_available_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"'coco/AP50' is not among .*\['bbox/AP'\]"):
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        sched = build_lr_scheduler(load_config(None, []), opt, 20)
        hooks = [
            EvalHook(10, lambda: {"bbox/AP": 0.1}),
            BestCheckpointHook(Checkpointer(str(tmp_path)), "coco/AP50"),
        ]
        train_loop(model, _mse, _batches(), opt, sched, 0, 20, hooks)
