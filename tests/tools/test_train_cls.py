"""End-to-end classification: tools/train_cls.py on a tiny generated ImageFolder.

Checks that the loss falls, the run directory holds what it should, ``--resume`` continues
from the checkpoint, and a run stopped at k and resumed to N ends with exactly the weights of
an uninterrupted run to N (CPU, DETERMINISTIC, NUM_WORKERS 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from resdet.config import ConfigError, load_config
from resdet.engine.checkpoint import load_checkpoint
from resdet.engine.classification import run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """3 classes of noisy single-colour 36x36 images: 12 train and 4 val per class."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c, color in enumerate(COLORS):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                noise = rng.normal(0, 40, (36, 36, 3))
                img = np.clip(np.array(color)[None, None] + noise, 0, 255).astype(np.uint8)
                cv2.imwrite(str(d / f"{i}.png"), img[:, :, ::-1])
    return root


def _write_config(tmp_path, data_dir) -> str:
    base = os.path.join(REPO, "configs", "base", "classification.yaml")
    text = f"""
_BASE_: {base}
MODEL:
  NUM_CLASSES: 3
  DEVICE: cpu
  BACKBONE: {{DEPTH: 8, STEM: cifar, SHORTCUT: A}}
INPUT: {{AUGMENT: generic, CROP_SIZE: 32, SCALE_RANGE: [32, 40], TEST_RESIZE: 34}}
DATASETS: {{CLS_TRAIN: {data_dir / "train"}, CLS_TEST: {data_dir / "val"}}}
DATALOADER: {{NUM_WORKERS: 0}}
SOLVER: {{IMS_PER_BATCH: 12, BASE_LR: 0.02, STEPS: [1000], MAX_ITER: 30, CHECKPOINT_PERIOD: 10,
          MAX_TO_KEEP: 2}}
TEST: {{EVAL_PERIOD: 15, IMS_PER_BATCH: 16}}
LOG_PERIOD: 3
SEED: 3
DETERMINISTIC: true
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return str(path)


def _train_cls(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_cls.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _records(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        lines = [json.loads(x) for x in f]
    return [r for r in lines if "loss" in r], [r for r in lines if "val/top1_err" in r]


@pytest.mark.slow
def test_train_cls_learns_writes_run_dir_and_resumes(tmp_path, data_dir):
    cfg_path = _write_config(tmp_path, data_dir)
    out = str(tmp_path / "run")
    proc = _train_cls("--config", cfg_path, "OUTPUT_DIR", out)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert load_config(os.path.join(out, "config.yaml")).SOLVER.MAX_ITER == 30
    train, val = _records(out)
    assert [r["iteration"] for r in train] == list(range(3, 31, 3))
    first = np.mean([r["loss"] for r in train[:3]])
    last = np.mean([r["loss"] for r in train[-3:]])
    assert last < 0.5 * first, [r["loss"] for r in train]
    assert [r["iteration"] for r in val] == [15, 30]
    assert os.path.getsize(os.path.join(out, "log.txt")) > 0
    assert [f for f in os.listdir(out) if f.startswith("events.out.tfevents")]
    pths = sorted(f for f in os.listdir(out) if f.endswith(".pth"))
    assert pths == ["model_0000010.pth", "model_0000020.pth", "model_final.pth"]
    final = load_checkpoint(os.path.join(out, "model_final.pth"))  # weights_only=True
    assert final["iteration"] == 30
    assert tuple(final["model"]["fc.weight"].shape) == (3, 64)
    assert "conv1.weight" in final["model"] and "layer3.0.bn2.running_mean" in final["model"]
    assert final["config"]["MODEL"]["NUM_CLASSES"] == 3
    assert final["extra"]["class_names"] == ["class0", "class1", "class2"]

    proc = _train_cls("--config", cfg_path, "--resume", "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "36")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in open(os.path.join(out, "log.txt")).read()
    train, _ = _records(out)
    assert [r["iteration"] for r in train] == list(range(3, 37, 3))  # no restart from 0
    assert load_checkpoint(os.path.join(out, "model_final.pth"))["iteration"] == 36


def test_resumed_run_matches_uninterrupted_run_exactly(tmp_path, data_dir):
    cfg_path = _write_config(tmp_path, data_dir)
    common = ["SOLVER.CHECKPOINT_PERIOD", "4", "TEST.EVAL_PERIOD", "3", "LOG_PERIOD", "1"]
    full = load_config(
        cfg_path, [*common, "SOLVER.MAX_ITER", "8", "OUTPUT_DIR", str(tmp_path / "a")]
    )
    run(full)
    first = load_config(
        cfg_path, [*common, "SOLVER.MAX_ITER", "5", "OUTPUT_DIR", str(tmp_path / "b")]
    )
    run(first)
    second = load_config(
        cfg_path, [*common, "SOLVER.MAX_ITER", "8", "OUTPUT_DIR", str(tmp_path / "b")]
    )
    run(second, resume=True)

    a = load_checkpoint(str(tmp_path / "a" / "model_final.pth"))
    b = load_checkpoint(str(tmp_path / "b" / "model_final.pth"))
    assert a["iteration"] == b["iteration"] == 8
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for i, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    la = {r["iteration"]: r["loss"] for r in _records(str(tmp_path / "a"))[0]}
    lb = {r["iteration"]: r["loss"] for r in _records(str(tmp_path / "b"))[0]}
    assert la == lb  # same losses at every logged iteration, before and after the resume

    # --eval-only on the final weights reproduces the end-of-training evaluation, plus 10-crop.
    ev = load_config(cfg_path, ["TEST.TEN_CROP", "true", "OUTPUT_DIR", str(tmp_path / "ev")])
    results = run(ev, eval_only=True, weights=str(tmp_path / "a" / "model_final.pth"))
    final_val = _records(str(tmp_path / "a"))[1][-1]
    assert results["top1_err"] == pytest.approx(final_val["val/top1_err"])
    assert 0.0 <= results["tencrop_top1_err"] <= 1.0 and "tencrop_top5_err" in results
    assert json.load(open(tmp_path / "ev" / "eval_results.json"))["top1_err"] == results["top1_err"]


def test_config_mistakes_fail_before_training(tmp_path, data_dir):
    cfg_path = _write_config(tmp_path, data_dir)
    bad = load_config(cfg_path, ["MODEL.NUM_CLASSES", "5", "OUTPUT_DIR", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match="NUM_CLASSES is 5 but .* has 3 classes"):
        run(bad)
    plateau = load_config(
        cfg_path,
        [
            "SOLVER.LR_SCHEDULER",
            "plateau",
            "TEST.EVAL_PERIOD",
            "0",
            "OUTPUT_DIR",
            str(tmp_path / "y"),
        ],
    )
    with pytest.raises(ConfigError, match="plateau needs"):
        run(plateau)
    assert not (tmp_path / "model_final.pth").exists()


def test_best_checkpoint_by_val_error(tmp_path, data_dir):
    cfg_path = _write_config(tmp_path, data_dir)
    out = str(tmp_path / "best")
    opts = ["SOLVER.MAX_ITER", "8", "TEST.EVAL_PERIOD", "2", "SOLVER.BEST_METRIC", "top1_err",
            "SOLVER.BEST_MODE", "min", "OUTPUT_DIR", out]  # fmt: skip
    run(load_config(cfg_path, opts))
    _, val = _records(out)
    errors = [(r["val/top1_err"], r["iteration"]) for r in val]
    assert [it for _, it in errors] == [2, 4, 6, 8]
    best_err = min(e for e, _ in errors)
    best = load_checkpoint(os.path.join(out, "model_best.pth"))
    assert best["extra"]["best"]["value"] == pytest.approx(best_err)
    assert best["iteration"] == next(it for e, it in errors if e == best_err)  # the first
    assert best["extra"]["class_names"] == ["class0", "class1", "class2"]
