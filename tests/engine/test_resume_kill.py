"""Runs that survive: SIGKILL mid-run + ``--resume`` equals an uninterrupted run bit for bit,
and a NaN loss stops training with a clear error while the last good checkpoint stays usable.

Tiny Faster R-CNN (R18 width 16, FPN, 64x64 images) on CPU with DETERMINISTIC, multi-scale +
flip augmentation (seeded by stream position, so the resumed run sees exactly the
augmentations the uninterrupted one saw, whatever the number of DataLoader workers).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tool_loader import load_tool

from resdet.config import load_config
from resdet.engine.checkpoint import Checkpointer, load_checkpoint
from resdet.engine.detection import run
from resdet.modeling.detection.faster_rcnn import FasterRCNN

REPO = Path(__file__).resolve().parents[2]
TINY_BASE = REPO / "tests" / "configs" / "tiny_fpn64.yaml"
TIMING_KEYS = {"time", "data_time", "images_per_s"}


def write_tiny_coco(root: Path, n_train: int = 6, n_val: int = 2, size: int = 64) -> None:
    """Two coloured rectangles per noisy ``size``-square image, 2 classes, in the layout of the
    ``shapes_train`` / ``shapes_val`` catalog entries under ``$RESDET_DATASETS = root``."""
    rng = np.random.default_rng(0)
    shapes = root / "shapes"
    (shapes / "annotations").mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val)):
        (shapes / split).mkdir()
        images, anns = [], []
        for i in range(n):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            for _ in range(2):
                w, h = (int(v) for v in rng.integers(14, 30, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                c = int(rng.integers(0, 2))
                img[y : y + h, x : x + w] = (200, 60, 60) if c == 0 else (60, 200, 60)
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1,
                             "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
            cv2.imwrite(str(shapes / split / f"{i}.png"), img)
            images.append({"id": i + 1, "file_name": f"{i}.png", "height": size, "width": size})
        cats = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]
        data = {"images": images, "annotations": anns, "categories": cats}
        (shapes / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def write_tiny_config(path: Path, extra: str = "") -> str:
    path.write_text(
        f"""_BASE_: {TINY_BASE}
MODEL:
  ROI_HEADS: {{BATCH_SIZE_PER_IMAGE: 32}}
INPUT: {{MIN_SIZE_TRAIN: [56, 64]}}
DATALOADER: {{NUM_WORKERS: 2}}
SOLVER: {{WARMUP_ITERS: 2, STEPS: [8], MAX_ITER: 12, CHECKPOINT_PERIOD: 3, MAX_TO_KEEP: 2}}
SEED: 7
{extra}"""
    )
    return str(path)


@pytest.fixture()
def tiny(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path / "ds"))
    write_tiny_coco(tmp_path / "ds")
    return write_tiny_config(tmp_path / "tiny.yaml")


def _metrics(out: Path):
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in lines]


def _popen_train(cfg: str, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "tools/train_det.py"), "--config", cfg]
    log = open(out.parent / f"{out.name}.stderr", "w")
    # Own session: the kill takes the DataLoader workers too, as a scheduler killing a job does.
    return subprocess.Popen(
        [*cmd, "OUTPUT_DIR", str(out)], env=env, stdout=log, stderr=log, start_new_session=True
    )


def _train_det_tool():
    return load_tool("train_det")


def _kill_after_first_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 240
    while not (out / "last_checkpoint").exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            return  # finished or failed on its own: the test reports it
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run_bitwise(tmp_path: Path, tiny) -> None:
    killed = tmp_path / "killed"
    proc = _popen_train(tiny, killed)
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(proc, killed))
    killer.start()
    # Meanwhile (the subprocess spends its first seconds importing) the reference: the same
    # run, never interrupted, in this process and with 0 workers instead of 2 -- augmentation
    # is seeded by stream position, so the worker count must not matter either.
    ref = tmp_path / "ref"
    run(load_config(tiny, ["OUTPUT_DIR", str(ref), "DATALOADER.NUM_WORKERS", "0"]))
    killer.join()
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.stderr").read_text()[-3000:]
    assert not (killed / "model_final.pth").exists()
    stopped_at = load_checkpoint(str(Checkpointer(str(killed)).last_checkpoint()))["iteration"]
    assert 3 <= stopped_at < 12 and stopped_at % 3 == 0

    # `train_det.py --resume` (in this process: a second interpreter start-up costs ~10 s).
    opts = ["OUTPUT_DIR", str(killed), "DATALOADER.NUM_WORKERS", "2"]
    assert _train_det_tool().main(["--config", tiny, "--resume", *opts]) == 0
    assert f"resumed from {killed}/model_{stopped_at:07d}.pth" in (killed / "log.txt").read_text()

    a = load_checkpoint(str(ref / "model_final.pth"))
    b = load_checkpoint(str(killed / "model_final.pth"))
    assert a["iteration"] == b["iteration"] == 12
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for i, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    # Every logged iteration (before and after the kill) and the final evaluation agree;
    # lines the killed run wrote past its checkpoint were dropped, not duplicated.
    ma, mb = _metrics(ref), _metrics(killed)
    assert [r["iteration"] for r in mb] == [*range(1, 13), 12]
    assert json.dumps(ma) == json.dumps(mb)  # NaN-safe exact comparison
    assert "val/coco/AP" in mb[-1]
    # A kill during a save would leave a temp file; the next save cleans such leftovers.
    assert not [f for f in os.listdir(killed) if f.endswith(".tmp")]
    pths = sorted(f for f in os.listdir(killed) if f.endswith(".pth"))
    assert pths == ["model_0000006.pth", "model_0000009.pth", "model_final.pth"]


def test_nan_loss_stops_with_iteration_and_terms_and_keeps_last_good_checkpoint(
    tmp_path: Path, tiny, monkeypatch, capsys
) -> None:
    forward = FasterRCNN.forward
    calls = {"train": 0}

    def nan_at_fifth_step(self, batch, *args, **kwargs):
        out = forward(self, batch, *args, **kwargs)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 5:
                out = {**out, "loss_box_reg": out["loss_box_reg"] * math.inf * 0}  # NaN
        return out

    monkeypatch.setattr(FasterRCNN, "forward", nan_at_fifth_step)
    tool = _train_det_tool()
    out = tmp_path / "nan"
    opts = ["DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out)]
    assert tool.main(["--config", tiny, *opts]) == 2
    err = capsys.readouterr().err
    assert "error: iteration 5: total loss is nan" in err
    assert "loss_box_reg=nan" in err and "loss_rpn_cls=" in err and "loss_cls=" in err
    assert "weights are those after iteration 4" in err

    last = Checkpointer(str(out)).last_checkpoint()
    assert last == str(out / "model_0000004.pth") and not (out / "model_final.pth").exists()
    ckpt = load_checkpoint(last)  # weights_only: loads, and holds finite weights
    assert ckpt["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [r["iteration"] for r in _metrics(out)] == [1, 2, 3, 4]

    # Fixed (here: the patch removed), --resume continues from the good checkpoint.
    monkeypatch.setattr(FasterRCNN, "forward", forward)
    assert tool.main(["--config", tiny, "--resume", *opts, "SOLVER.MAX_ITER", "6"]) == 0
    assert load_checkpoint(str(out / "model_final.pth"))["iteration"] == 6
    assert [r["iteration"] for r in _metrics(out) if "loss" in r] == [1, 2, 3, 4, 5, 6]
