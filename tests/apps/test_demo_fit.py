"""The demo's iterations fitted to the measured speed (resdet_apps.demo_fit), the measurement
mocked: the longer chain trains within the budget, the count is kept for a resumed run, and
build_configs gives it to both detectors."""

from __future__ import annotations

import contextlib
import json
import os
import time

import pytest

from resdet.utils.machine import usable_cores
from resdet_apps import demo_fit
from resdet_apps.demo import DemoOptions, build_configs
from resdet_apps.demo_fit import MAX_ITERS, MIN_ITERS, fit_iterations, fitted_det_iters


def test_the_longer_chain_fits_the_budget():
    # Pretrained chain: 100 s of classifier + n x 0.25 s; from scratch: n x 0.4 s.
    n = fit_iterations(100.0, 0.25, 0.4, budget=600.0)
    assert n == 1500  # scratch binds: 600 / 0.4
    assert n * 0.4 <= 600 and 100 + n * 0.25 <= 600
    # A long classifier makes the pretrained chain the longer one.
    assert fit_iterations(300.0, 0.25, 0.3, budget=600.0) == 1200  # (600 - 300) / 0.25
    assert fit_iterations(300.0, 0.25, None, budget=600.0) == 1200  # no scratch run
    assert fit_iterations(0.0, 0.27, None, budget=600.0) == 2200  # 2222: down to a hundred
    # A CPU twice as fast trains twice as long, within the bounds.
    assert fit_iterations(50.0, 0.125, 0.2, budget=600.0) == 3000
    assert fit_iterations(0.0, 0.001, 0.001) == MAX_ITERS
    assert fit_iterations(500.0, 10.0, 10.0) == MIN_ITERS


def _configs(tmp_path, schedule="default", **kw):
    opts = DemoOptions(output=str(tmp_path / "o"), schedule=schedule, **kw)
    return opts, build_configs(opts, str(tmp_path / "data"))[0]


def test_fitted_iterations_are_measured_once_and_kept(tmp_path, monkeypatch):
    timed = []

    def step_times(model, cfg, remeasure=False):  # the probe pass of each path, seconds
        assert remeasure  # timed in this hour, not read from an older cache
        timed.append(cfg.MODEL.BACKBONE.NORM)
        return {"nchw": 0.3, "channels_last": 0.25} if cfg.MODEL.BACKBONE.NORM == "FrozenBN" \
            else {"nchw": 0.35, "winograd": 0.5}  # fmt: skip

    busy = []  # the configs the other core was kept busy with while timing

    @contextlib.contextmanager
    def other_core_busy(cfg):
        busy.append(cfg.MODEL.BACKBONE.NORM)
        yield "the sibling"

    monkeypatch.setattr("resdet.accel.training_step_times", step_times)
    monkeypatch.setattr(demo_fit, "_classifier_seconds", lambda cfg: 120.0)
    monkeypatch.setattr(demo_fit, "STEP_OVERHEAD", 2.0)
    monkeypatch.setattr(demo_fit, "other_core_busy", other_core_busy)
    opts, configs = _configs(tmp_path)
    n = fitted_det_iters(opts.output, opts.schedule, configs, budget=600.0)
    assert busy == ["BN"]  # beside the from-scratch chain's detector, as the demo trains
    # The fastest path of each x STEP_OVERHEAD (batch 2, as the probe): from scratch binds.
    assert n == fit_iterations(120.0, 0.5, 0.7, budget=600.0) == 800  # 600 / 0.7 = 857
    assert sorted(timed) == ["BN", "FrozenBN"]
    saved = json.loads((tmp_path / "o" / demo_fit.FIT_FILE).read_text())
    assert saved["det_iters"] == n and saved["schedule"] == "default"
    assert saved["timed_beside_a_busy_core"]
    # A re-run (resuming) reads the count back: same settings, nothing timed again.
    monkeypatch.setattr(demo_fit, "_classifier_seconds", pytest.fail)
    assert fitted_det_iters(opts.output, opts.schedule, configs, budget=600.0) == n
    assert len(timed) == 2
    # Another budget (or schedule) is fitted anew.
    monkeypatch.setattr(demo_fit, "_classifier_seconds", lambda cfg: 120.0)
    longer = fit_iterations(120.0, 0.5, 0.7, budget=1200.0)
    assert longer == 1700  # 1200 / 0.7 = 1714
    assert fitted_det_iters(opts.output, opts.schedule, configs, budget=1200.0) == longer
    assert len(timed) == 4
    assert fitted_det_iters(opts.output, "bf16", configs, budget=1200.0) == longer
    assert len(timed) == 6
    # Chains one after the other (--sequential): the probes are timed alone.
    busy.clear()
    fitted_det_iters(opts.output, "quick", configs, budget=1200.0, parallel=False)
    assert busy == []
    saved = json.loads((tmp_path / "o" / demo_fit.FIT_FILE).read_text())
    assert not saved["timed_beside_a_busy_core"]


@pytest.mark.skipif(usable_cores() < 2, reason="one core: nothing to keep busy")
def test_the_other_core_is_kept_busy_while_the_fit_times(tmp_path):
    _, configs = _configs(tmp_path, schedule="quick")

    def cpu_seconds(pid: int) -> float:  # user + system time of a process, from /proc
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with demo_fit.other_core_busy(configs["scratch"]) as proc:
        assert proc is not None and proc.poll() is None  # started, computing
        if os.path.exists(f"/proc/{proc.pid}/stat"):
            before = cpu_seconds(proc.pid)
            time.sleep(1.0)
            assert cpu_seconds(proc.pid) - before > 0.2  # computing (a core: ~1.0)
    assert proc.poll() is not None  # stopped with the block


def test_bf16_schedules_fit_on_the_bf16_time(tmp_path, monkeypatch):
    times = {"nchw": 0.3, "channels_last": 0.4, "bf16": 0.15}
    monkeypatch.setattr("resdet.accel.training_step_times", lambda model, cfg, remeasure: times)
    _, configs = _configs(tmp_path, schedule="bf16")
    assert configs["det"].SOLVER.AMP.ENABLED
    assert demo_fit._detector_step(configs["det"]) == pytest.approx(0.15 * demo_fit.STEP_OVERHEAD)
    _, configs = _configs(tmp_path, schedule="default")
    assert demo_fit._detector_step(configs["det"]) == pytest.approx(0.3 * demo_fit.STEP_OVERHEAD)


def test_the_classifier_is_timed_per_iteration():
    from resdet.config.load import load_config
    from resdet_apps.demo import repo_config

    cfg = load_config(repo_config("shapes_cls_r18.yaml"),
                      ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "10"])  # fmt: skip
    ten = demo_fit._classifier_seconds(cfg)
    cfg.SOLVER.MAX_ITER = 1000
    thousand = demo_fit._classifier_seconds(cfg)
    assert 0 < ten < thousand and thousand / ten == pytest.approx(100, rel=0.9)


def test_build_configs_gives_both_detectors_the_iterations(tmp_path):
    _, configs = _configs(tmp_path, det_iters=1300)
    for name in ("det", "scratch"):
        s, t = configs[name].SOLVER, configs[name].TEST
        assert (s.MAX_ITER, s.WARMUP_ITERS, t.EVAL_PERIOD, s.CHECKPOINT_PERIOD) == (
            1300,
            39,
            325,
            130,
        )
    # The user's overrides still win.
    _, configs = _configs(tmp_path, det_iters=1300, det_opts=["SOLVER.MAX_ITER", "50"])
    assert configs["det"].SOLVER.MAX_ITER == configs["scratch"].SOLVER.MAX_ITER == 50


def test_no_fit_where_the_detectors_train_on_a_gpu(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(demo_fit, "_classifier_seconds", pytest.fail)  # nothing is timed
    opts, configs = _configs(tmp_path)  # MODEL.DEVICE auto: a GPU where there is one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fitted_det_iters(opts.output, opts.schedule, configs) == 0
    assert not (tmp_path / "o" / demo_fit.FIT_FILE).exists()
