"""resdet.accel decides the fast paths by a measurement on the model (mocked here both ways),
by the CPU-capability rule, or by the config; resdet.accel.measure times and caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import resdet.accel as accel
import resdet.accel.measure as measure
from resdet.config import load_config
from resdet.config.load import ConfigError
from resdet.engine.launch import tool_main
from resdet.layers.winograd import winograd_available
from resdet.modeling.detection.build import build_detector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "configs", "tiny_fpn.yaml")
CPU = torch.device("cpu")
needs_winograd = pytest.mark.skipif(not winograd_available(), reason="no NNPACK in this build")


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    cfg = load_config(TINY)
    return build_detector(cfg), cfg


@pytest.fixture
def measured(monkeypatch):
    """ACCEL.DECIDE "measure" with the timing replaced: ``set(train=..., infer=...)``; the
    calls are counted in ``calls``."""
    monkeypatch.delenv("RESDET_ACCEL_DECIDE", raising=False)
    state = {"train": {}, "infer": {}, "calls": []}

    def fake(model, size, train, settings="", remeasure=False):
        state["calls"].append((size, train))
        return dict(state["train" if train else "infer"])

    monkeypatch.setattr(accel, "measured_times", fake)
    return state


@needs_winograd
@pytest.mark.parametrize(
    "train, expected",
    [
        ({"nchw": 1.0, "channels_last": 0.8, "winograd": 0.9}, "channels_last"),
        ({"nchw": 1.0, "channels_last": 0.9, "winograd": 0.7}, "winograd"),
        ({"nchw": 1.0, "channels_last": 1.1, "winograd": 1.2}, "none"),
        ({"nchw": 1.0, "channels_last": 0.99, "winograd": 0.985}, "none"),  # within 3%: plain
    ],
)
def test_training_path_follows_the_measurement(tiny, measured, train, expected):
    model, cfg = tiny
    measured["train"] = train
    assert accel.cpu_training_path(cfg, CPU, model) == expected
    assert measured["calls"] == [(160, True)]  # the probe at the config's training size


@needs_winograd
def test_training_path_only_among_what_the_config_allows(tiny, measured):
    model, cfg = tiny
    measured["train"] = {"nchw": 1.0, "channels_last": 0.5, "winograd": 0.7}
    cfg.SOLVER.CPU_CHANNELS_LAST = False
    assert accel.cpu_training_path(cfg, CPU, model) == "winograd"
    cfg.SOLVER.WINOGRAD = False
    assert accel.cpu_training_path(cfg, CPU, model) == "none"
    assert len(measured["calls"]) == 1  # nothing allowed: nothing timed
    assert accel.cpu_training_path(cfg, torch.device("cuda"), model) == "none"


@needs_winograd
@pytest.mark.parametrize("fused, winograd, expected", [(1.0, 0.8, True), (1.0, 1.2, False)])
def test_inference_winograd_follows_the_measurement(tiny, measured, fused, winograd, expected):
    model, cfg = tiny
    measured["infer"] = {"fused": fused, "fused_winograd": winograd}
    assert accel.inference_winograd(model, cfg) is expected
    fast = accel.inference_model(model, cfg)
    assert any(getattr(m, "winograd", False) for m in fast.modules()) is expected
    cfg.TEST.WINOGRAD = False
    assert accel.inference_winograd(model, cfg) is False


@pytest.mark.parametrize("bf16, expected", [(0.6, True), (0.95, False), (1.3, False)])
def test_bf16_follows_the_measurement_where_native(tiny, measured, monkeypatch, bf16, expected):
    model, cfg = tiny
    monkeypatch.setattr(accel, "native_bf16", lambda: True)
    measured["train"] = {"nchw": 1.2, "channels_last": 1.0, "bf16": bf16}  # vs the best fp32
    assert accel.bf16_pays(model, cfg, train=True) is expected


def test_bf16_never_timed_without_native_bf16(tiny, measured, monkeypatch):
    model, cfg = tiny
    monkeypatch.setattr(accel, "native_bf16", lambda: False)
    measured["train"] = {"nchw": 1.0, "bf16": 0.1}
    assert accel.bf16_pays(model, cfg) is False
    assert measured["calls"] == []


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_isa_rule_is_untimed(tiny, measured, monkeypatch, capability):
    model, cfg = tiny
    cfg.ACCEL.DECIDE = "isa"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(accel, "native_bf16", lambda: True)
    monkeypatch.setattr(accel, "cpu_has_flag", lambda flag: flag == "amx_bf16")
    path = accel.cpu_training_path(cfg, CPU, model)
    if capability == "AVX2":
        assert path == ("winograd" if winograd_available() else "none")
    else:
        assert path == "channels_last"
    assert accel.bf16_pays(model, cfg) is True  # AMX
    assert measured["calls"] == []


def test_config_rule_and_the_environment_override(tiny, measured, monkeypatch):
    model, cfg = tiny
    cfg.ACCEL.DECIDE = "config"
    cfg.SOLVER.WINOGRAD = False
    assert accel.cpu_training_path(cfg, CPU, model) == "channels_last"
    monkeypatch.setenv("RESDET_ACCEL_DECIDE", "isa")
    assert accel.decide_mode(cfg) == "isa"
    monkeypatch.setenv("RESDET_ACCEL_DECIDE", "fastest")
    with pytest.raises(ConfigError, match="RESDET_ACCEL_DECIDE.*'fastest'.*'measure'"):
        accel.decide_mode(cfg)
    assert measured["calls"] == []


def test_weight_paths_do_not_change_what_is_measured(tiny, monkeypatch):
    # The probe's key holds what the speed depends on: another checkpoint path reads the same
    # measurement (the demo's fit and its training run), another RPN setting does not.
    model, cfg = tiny
    seen = []

    remeasured = []

    def fake(model, size, train, settings="", remeasure=False):
        seen.append(settings)
        remeasured.append(remeasure)
        return {"nchw": 1.0}

    monkeypatch.setattr(accel, "measured_times", fake)
    accel.training_step_times(model, cfg)
    cfg.MODEL.WEIGHTS, cfg.MODEL.BACKBONE.PRETRAINED = "a/model_final.pth", "b/cls.pth"
    accel.training_step_times(model, cfg, remeasure=True)  # the demo's fit: timed afresh
    assert remeasured == [False, True]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN += 1
    accel.training_step_times(model, cfg)
    assert seen[0] == seen[1] != seen[2]
    assert "cls.pth" not in seen[1] and cfg.MODEL.BACKBONE.PRETRAINED == "b/cls.pth"


def test_a_wrong_decide_value_in_the_config_names_the_key(monkeypatch):
    monkeypatch.delenv("RESDET_ACCEL_DECIDE", raising=False)
    with pytest.raises(ConfigError, match="ACCEL.DECIDE"):
        accel.decide_mode(load_config(TINY, ["ACCEL.DECIDE", "always"]))


def test_measured_times_are_cached_per_machine_threads_and_model(tiny, monkeypatch, tmp_path):
    model, cfg = tiny
    monkeypatch.setenv("RESDET_CACHE_DIR", str(tmp_path))
    calls = []

    def fake(m, size, train, rounds=3, budget=6.0):
        calls.append((size, train))
        return {"nchw": 1.0 + len(calls)}

    monkeypatch.setattr(measure, "measure_paths", fake)
    first = measure.measured_times(model, 4096, train=True)
    assert calls == [(measure.PROBE_MAX_SIZE, True)]  # capped
    assert measure.measured_times(model, 4096, train=True) == first  # from the cache
    assert len(calls) == 1
    saved = json.loads((tmp_path / "fastpaths.json").read_text())
    assert list(saved.values()) == [first]
    assert f"torch {torch.__version__}" in next(iter(saved))
    measure.measured_times(model, 4096, train=False)  # inference: its own entry
    measure.measured_times(model, 4096, train=True, settings="other RPN")  # other config
    previous = torch.get_num_threads()
    torch.set_num_threads(previous + 1)
    try:
        measure.measured_times(model, 4096, train=True)  # other thread count
    finally:
        torch.set_num_threads(previous)
    assert len(calls) == 4
    assert measure.measured_times(model, 4096, train=True, remeasure=True) != first
    assert len(calls) == 5
    # Times of an older version of the paths' kernels are not taken for the current ones.
    monkeypatch.setattr(measure, "PATHS_VERSION", measure.PATHS_VERSION + 1)
    measure.measured_times(model, 4096, train=True)
    assert len(calls) == 6


def test_an_unwritable_cache_only_warns(tiny, monkeypatch, tmp_path, caplog):
    model, _ = tiny
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RESDET_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(measure, "measure_paths", lambda *a, **k: {"nchw": 1.0})
    assert measure.measured_times(model, 64, train=True) == {"nchw": 1.0}
    assert "could not write the fast-path cache" in caplog.text


def test_a_corrupt_cache_is_measured_again(tiny, monkeypatch, tmp_path):
    model, _ = tiny
    monkeypatch.setenv("RESDET_CACHE_DIR", str(tmp_path))
    (tmp_path / "fastpaths.json").write_text("{not json")
    monkeypatch.setattr(measure, "measure_paths", lambda *a, **k: {"nchw": 2.0})
    assert measure.measured_times(model, 64, train=True) == {"nchw": 2.0}
    assert json.loads((tmp_path / "fastpaths.json").read_text())  # rewritten, valid
    umask = os.umask(0)
    os.umask(umask)
    # The umask's mode like any file the user writes (a shared cache folder can be read).
    assert (tmp_path / "fastpaths.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["fastpaths.json"]  # no temp file left


@pytest.mark.parametrize("train", [True, False])
def test_the_real_probe_times_every_candidate_and_leaves_the_model(tiny, train):
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    times = measure.measure_paths(model, size=64, train=train, rounds=1)
    expected = {"nchw", "channels_last"} if train else {"fused"}
    if winograd_available():
        expected.add("winograd" if train else "fused_winograd")
    if measure.native_bf16():
        expected.add("bf16")
    assert set(times) == expected and all(t > 0 for t in times.values())
    assert model.training  # not switched to eval
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.channels_last


def test_set_threads():
    previous = torch.get_num_threads()
    try:
        assert accel.set_threads(0) == previous
        assert accel.set_threads(1) == 1 == torch.get_num_threads()
        with pytest.raises(ConfigError, match="THREADS"):
            accel.set_threads(-2)
    finally:
        torch.set_num_threads(previous)


def test_threads_flag_and_key_set_the_runs_threads(tmp_path):
    from resdet.engine.runner import Task, run_task

    seen = {}

    def resolve(cfg, eval_only):
        seen["threads"] = (cfg.ACCEL.THREADS, torch.get_num_threads())
        raise KeyboardInterrupt  # stop before any work

    task = Task("t", "DATASETS.TEST", build_model=None, parts=None, resolve_config=resolve)

    def run(cfg, resume, eval_only, weights):
        return run_task(task, cfg, resume, eval_only, weights)

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            tool_main("doc", run, ["--config", TINY, "--threads", "1",
                                   "OUTPUT_DIR", str(tmp_path)])  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    assert seen["threads"] == (1, 1)


def test_fast_paths_tool_prints_the_times_and_choices(tmp_path):
    env = dict(os.environ, RESDET_CACHE_DIR=str(tmp_path), RESDET_ACCEL_DECIDE="measure")
    cmd = [sys.executable, os.path.join(REPO, "tools", "fast_paths.py"), "--config", TINY,
           "--threads", "1", "--json",
           "INPUT.MIN_SIZE_TRAIN", "[64]", "INPUT.MIN_SIZE_TEST", "64"]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["mode"] == "measure"
    assert report["training_path"] in ("none", "winograd", "channels_last")
    assert "nchw" in report["times"]["train"] and "fused" in report["times"]["infer"]
    assert (tmp_path / "fastpaths.json").exists()


def test_the_probe_leaves_torchs_random_state(tiny):
    model, _ = tiny
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    measure.measure_paths(model, size=64, train=True, rounds=1)
    assert torch.equal(torch.rand(3), expected)  # training after it draws what it would have


def test_a_distributed_run_takes_rank_0s_training_path(tiny, measured, monkeypatch):
    model, cfg = tiny
    measured["train"] = {"nchw": 1.0, "channels_last": 0.5, "winograd": 0.9}
    sent = []

    def broadcast(box, src):
        sent.append((list(box), src))
        box[0] = "none"  # what rank 0 measured

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast)
    assert accel.cpu_training_path(cfg, CPU, model) == "none"
    assert sent == [(["channels_last"], 0)]


@pytest.mark.parametrize("budget, passes", [(0.0, 1), (1e9, 4)])
def test_long_first_passes_are_the_measurement(tiny, monkeypatch, budget, passes):
    model, _ = tiny
    count = {"a": 0, "b": 0}

    def candidates(model, size, train, bf16):
        def run(name):
            count[name] += 1

        return {name: (lambda n=name: run(n)) for name in count}

    monkeypatch.setattr(measure, "_candidates", candidates)
    times = measure.measure_paths(model, size=64, rounds=3, budget=budget)
    assert set(times) == {"a", "b"} and count == {"a": passes, "b": passes}
