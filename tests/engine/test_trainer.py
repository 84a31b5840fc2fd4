"""The training loop and its hooks: NaN handling, metrics file, eval + plateau feedback."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from resdet.config import load_config
from resdet.config.load import ConfigError
from resdet.engine.checkpoint import Checkpointer, load_checkpoint
from resdet.engine.hooks import (
    CheckpointHook,
    EvalHook,
    LRFeedbackHook,
    MetricsHook,
    MetricsWriter,
    build_hooks,
)
from resdet.engine.optim import build_lr_scheduler
from resdet.engine.trainer import Hook, train_loop


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(8, 4, generator=g)
        yield x, x.sum(1, keepdim=True)


class _Recorder(Hook):
    def __init__(self):
        self.events, self.steps = [], []

    def before_train(self, state):
        self.events.append("before")

    def after_step(self, state):
        self.steps.append((state.iteration, dict(state.losses), dict(state.extra)))

    def after_train(self, state):
        self.events.append("after")

    def close(self):
        self.events.append("close")


def _setup(lr=0.05, **solver):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opts = ["SOLVER.BASE_LR", str(lr), "SOLVER.WARMUP_ITERS", "0"]
    for k, v in solver.items():
        opts += [f"SOLVER.{k}", str(v)]
    cfg = load_config(None, opts)
    return cfg, model, opt, build_lr_scheduler(cfg, opt, 100)


def _mse(model, batch):
    x, y = batch
    err = (model(x) - y).pow(2).mean()
    return {"loss_mse": err, "loss_half": 0.5 * err, "abs_err": (model(x) - y).abs().mean()}


def test_loop_trains_calls_hooks_and_reports_losses():
    _, model, opt, sched = _setup()
    rec = _Recorder()
    state = train_loop(model, _mse, _batches(), opt, sched, 0, 30, [rec], ims_per_batch=8)
    assert rec.events == ["before", "after", "close"]
    assert [s[0] for s in rec.steps] == list(range(1, 31)) and state.iteration == 30
    first, last = rec.steps[0][1], rec.steps[-1][1]
    assert first["loss"] == pytest.approx(first["loss_mse"] + first["loss_half"])
    assert last["loss"] < 0.2 * first["loss"]
    extra = rec.steps[0][2]
    assert extra["lr"] == pytest.approx(0.05) and extra["images_per_s"] > 0
    assert "abs_err" in extra and "abs_err" not in rec.steps[0][1]  # metric, not optimised


def test_nan_raises_naming_iteration_and_terms_and_no_checkpoint_after(tmp_path):
    cfg, model, opt, sched = _setup()

    def losses(m, batch):
        out = _mse(m, batch)
        if losses.calls == 2:  # the third iteration
            out["loss_half"] = out["loss_half"] * float("nan")
        losses.calls += 1
        return out

    losses.calls = 0
    ck = Checkpointer(str(tmp_path), max_to_keep=0, config=cfg)
    rec = _Recorder()
    with pytest.raises(FloatingPointError) as info:
        train_loop(model, losses, _batches(), opt, sched, 0, 10, [rec, CheckpointHook(ck, 1)])
    msg = str(info.value)
    assert "iteration 3" in msg and "loss_half=nan" in msg and "loss_mse=" in msg
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "model_0000001.pth",
        "model_0000002.pth",
    ]
    assert rec.events == ["before", "close"]  # no after_train (no final checkpoint)
    saved = load_checkpoint(str(tmp_path / "model_0000002.pth"))["model"]
    for k, v in model.state_dict().items():  # the bad step was never applied
        assert torch.equal(v, saved[k]), k


def test_metrics_hook_writes_window_means_and_resume_truncates(tmp_path):
    _, model, opt, sched = _setup()
    rec = _Recorder()
    writer = MetricsWriter(str(tmp_path), enabled=True)
    train_loop(
        model, _mse, _batches(), opt, sched, 0, 10, [rec, MetricsHook(writer, 4)], ims_per_batch=8
    )
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [4, 8, 10]  # every 4 and the last iteration
    window = [s[1]["loss_mse"] for s in rec.steps[4:8]]
    assert lines[1]["loss_mse"] == pytest.approx(sum(window) / 4)
    assert {"lr", "loss", "loss_half", "abs_err", "time", "images_per_s"} <= set(lines[0])
    assert list(tmp_path.glob("events.out.tfevents.*"))

    MetricsWriter(str(tmp_path), start_iter=8, enabled=True)  # a resume from iteration 8
    kept = [
        json.loads(x)["iteration"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert kept == [4, 8]


def test_eval_hook_feeds_plateau_scheduler_and_writes_val_lines(tmp_path):
    _, model, opt, sched = _setup(lr=0.1, LR_SCHEDULER="plateau", PLATEAU_PATIENCE=2)
    evals = []

    def eval_fn():
        model.eval()
        evals.append(model.training)
        return {"top1_err": 0.5}

    writer = MetricsWriter(str(tmp_path), enabled=True)
    rec = _Recorder()
    hooks = [EvalHook(2, eval_fn, writer), LRFeedbackHook(sched, "top1_err"), rec]
    train_loop(model, _mse, _batches(), opt, sched, 0, 9, hooks)
    lrs = [s[2]["lr"] for s in rec.steps]
    # Evaluations after iterations 2 (best), 4 (bad), 6 (bad -> lr / 10), 8 (bad), 9 (final).
    assert lrs[:6] == pytest.approx([0.1] * 6)
    assert lrs[6:] == pytest.approx([0.01] * 3)
    assert len(evals) == 5 and model.training
    val = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in val] == [2, 4, 6, 8, 9]
    assert all(math.isclose(r["val/top1_err"], 0.5) for r in val)


def test_plateau_metric_missing_from_eval_results_is_an_error():
    _, model, opt, sched = _setup(LR_SCHEDULER="plateau")
    hooks = [EvalHook(2, lambda: {"bbox/AP": 0.3}), LRFeedbackHook(sched, "top1_err")]
    with pytest.raises(KeyError, match="PLATEAU_METRIC 'top1_err'.*bbox/AP"):
        train_loop(model, _mse, _batches(), opt, sched, 0, 4, hooks)


def test_plateau_on_a_test_time_augmented_metric_is_refused_up_front(tmp_path):
    # TEST.AUG's fused metrics exist only after training: no periodic evaluation has them.
    cfg, model, opt, sched = _setup(LR_SCHEDULER="plateau", PLATEAU_METRIC="coco_tta/AP")
    ckpt = Checkpointer(str(tmp_path))
    with pytest.raises(ConfigError, match="PLATEAU_METRIC coco_tta/AP: test-time augmentation"):
        build_hooks(cfg, None, ckpt, sched, lambda: {}, None, {})
    cfg.SOLVER.PLATEAU_METRIC = "shapes_tta/coco/AP"  # a test set named *_tta is no TTA result
    assert build_hooks(cfg, None, ckpt, sched, lambda: {}, None, {})


def test_train_error_feedback_ends_resnet110_warmup():
    _, model, opt, sched = _setup(lr=0.1, WARMUP_UNTIL_TRAIN_ERR=0.8, STEPS="[1000]")
    window = sched.window

    def losses(m, batch):
        out = _mse(m, batch)
        out["train_err"] = torch.tensor(0.5)  # below 0.8 from the start
        return out

    rec = _Recorder()
    train_loop(model, losses, _batches(), opt, sched, 0, window + 3, [LRFeedbackHook(sched), rec])
    lrs = [s[2]["lr"] for s in rec.steps]
    assert lrs[:window] == pytest.approx([0.01] * window)  # until the window has filled
    assert lrs[window:] == pytest.approx([0.1] * 3)


def test_bf16_autocast_on_cpu_and_fp16_cpu_is_rejected():
    from resdet.engine.amp import autocast_factory, build_grad_scaler

    _, model, opt, sched = _setup()
    scaler = build_grad_scaler("cpu", True, "bfloat16")
    assert not scaler.is_enabled()
    rec = _Recorder()
    train_loop(
        model,
        _mse,
        _batches(),
        opt,
        sched,
        0,
        3,
        [rec],
        amp_ctx_factory=autocast_factory("cpu", True, "bfloat16"),
        scaler=scaler,
    )
    assert all(math.isfinite(s[1]["loss"]) for s in rec.steps)
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        autocast_factory("cpu", True, "float16")
