"""Distributed training under ``torchrun`` (2 CPU processes, gloo).

One launch runs the classifier (``classification.run``) and then ``tools/train_det.py`` in the
same two processes; a small driver saves each rank's final weights. Checks: the ranks end with
identical weights, only rank 0 writes files, metrics are reduced and evaluation gathered across
ranks, and the result equals one process fed the same global batch (within float tolerance:
the gradient all-reduce sums in another order).

Making one process comparable: the classifier uses FrozenBN (BN statistics of a per-rank batch
differ from the global batch's; SyncBN does not run on CPU). The detector samples anchors and
RoIs at random, so the config takes every valid one (batch sizes above the candidate counts,
positive fraction 1, NMS threshold 1 so each image has exactly POST_NMS_TOPK_TRAIN proposals):
the loss normalisers are then fixed numbers and the 2-process average equals the global mean.
Augmentation (flip) is seeded by the global stream position, so it matches too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from resdet.config import load_config
from resdet.engine import classification, detection
from resdet.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]

DRIVER = """
import os, sys
import torch
repo, cls_cfg, det_cfg, dump = sys.argv[1:5]
sys.path[:0] = [repo, os.path.join(repo, "tools")]
from resdet.config import load_config
from resdet.engine import classification, runner
from resdet.engine.checkpoint import unwrap_model
from resdet.engine.dist import get_rank
from resdet.modeling.detection.faster_rcnn import FasterRCNN

def dump_weights():
    train_loop = runner.train_loop  # the loop of both tasks' runs
    def wrapped(model, *args, **kwargs):
        state = train_loop(model, *args, **kwargs)
        trained = unwrap_model(model)
        tag = "det" if isinstance(trained, FasterRCNN) else "cls"
        torch.save(trained.state_dict(), os.path.join(dump, f"{tag}_rank{get_rank()}.pt"))
        return state
    runner.train_loop = wrapped

dump_weights()
classification.run(load_config(cls_cfg, ["OUTPUT_DIR", os.path.join(dump, "cls")]))
import train_det  # the tool, as a user runs it; it also leaves the process group at the end
sys.exit(train_det.main(["--config", det_cfg, "OUTPUT_DIR", os.path.join(dump, "det")]))
"""


def _write_folder(root: Path) -> None:
    """2 classes of noisy colour squares: 8 train and 5 val images (5: uneven shards)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 5)):
        for c, color in enumerate(((200, 40, 40), (40, 40, 200))):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(color) + rng.normal(0, 50, (32, 32, 3)), 0, 255)
                cv2.imwrite(str(d / f"{i}.png"), img.astype(np.uint8))


def _write_coco(root: Path) -> None:
    """64x64 images with exactly 2 boxes each (equal RoI counts per image), 2 classes."""
    rng = np.random.default_rng(1)
    shapes = root / "shapes"
    (shapes / "annotations").mkdir(parents=True)
    for split, n in (("train", 4), ("val", 3)):
        (shapes / split).mkdir()
        images, anns = [], []
        for i in range(n):
            img = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
            for k in range(2):
                x, y, s = int(rng.integers(0, 30)), int(rng.integers(0, 30)), 16 + 8 * k
                img[y : y + s, x : x + s] = (200, 60, 60) if k == 0 else (60, 200, 60)
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": k + 1,
                             "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0})  # fmt: skip
            cv2.imwrite(str(shapes / split / f"{i}.png"), img)
            images.append({"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 64})
        cats = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]
        data = {"images": images, "annotations": anns, "categories": cats}
        (shapes / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def _configs(tmp: Path) -> tuple:
    cls_cfg = tmp / "cls.yaml"
    cls_cfg.write_text(
        f"""_BASE_: {REPO / "configs/base/classification.yaml"}
MODEL:
  NUM_CLASSES: 2
  DEVICE: cpu
  BACKBONE: {{DEPTH: 8, STEM: cifar, SHORTCUT: A, NORM: FrozenBN, WIDTH: 16}}
INPUT: {{AUGMENT: cifar, CROP_SIZE: 32}}
DATASETS: {{CLS_TRAIN: {tmp / "folder/train"}, CLS_TEST: {tmp / "folder/val"}}}
DATALOADER: {{NUM_WORKERS: 0}}
SOLVER: {{IMS_PER_BATCH: 8, BASE_LR: 0.05, STEPS: [100], MAX_ITER: 4, CHECKPOINT_PERIOD: 2}}
TEST: {{EVAL_PERIOD: 2, IMS_PER_BATCH: 4}}
LOG_PERIOD: 1
SEED: 1
DETERMINISTIC: true
"""
    )
    det_cfg = tmp / "det.yaml"
    det_cfg.write_text(
        f"""_BASE_: {REPO / "tests/configs/tiny_fpn64.yaml"}
MODEL:
  RPN: {{BATCH_SIZE_PER_IMAGE: 4096, POSITIVE_FRACTION: 1.0, NMS_THRESH: 1.0}}
  ROI_HEADS: {{BATCH_SIZE_PER_IMAGE: 64, POSITIVE_FRACTION: 1.0}}
INPUT: {{MIN_SIZE_TRAIN: [64]}}
DATALOADER: {{NUM_WORKERS: 0}}
SOLVER: {{WARMUP_ITERS: 0, MAX_ITER: 4, CHECKPOINT_PERIOD: 2,
          LR_SCHEDULER: plateau, PLATEAU_METRIC: coco/AP, PLATEAU_MODE: max}}
TEST: {{EVAL_PERIOD: 2, AUG: {{ENABLED: true}}}}
SEED: 3
"""
    )
    return str(cls_cfg), str(det_cfg)


def _metrics(path: Path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def _assert_close_runs(ddp: Path, single: Path, rank_weights: dict) -> None:
    final = load_checkpoint(str(ddp / "model_final.pth"))
    ref = load_checkpoint(str(single / "model_final.pth"))
    assert final["model"].keys() == ref["model"].keys() == rank_weights.keys()
    for k, v in final["model"].items():
        assert torch.equal(v, rank_weights[k]), k  # rank 0 saved what it trained
        torch.testing.assert_close(v, ref["model"][k], rtol=1e-4, atol=2e-6, msg=k)
    moved = [k for k, v in ref["model"].items() if v.is_floating_point() and v.std() > 0]
    assert moved  # the weights are not trivially equal (e.g. all zero)
    ma, mb = _metrics(ddp), _metrics(single)
    # One line per iteration + evaluations: written once (rank 0), reduced over ranks.
    assert [r["iteration"] for r in ma] == [r["iteration"] for r in mb]
    for a, b in zip(ma, mb):
        for k, v in b.items():
            if k.startswith(("loss", "val/", "train_err", "lr")):
                assert a[k] == pytest.approx(v, rel=1e-4, abs=1e-6, nan_ok=True), (a, k)


@pytest.mark.slow
def test_torchrun_two_processes_match_each_other_and_one_process(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path / "ds"))
    _write_folder(tmp_path / "folder")
    _write_coco(tmp_path / "ds")
    cls_cfg, det_cfg = _configs(tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    dump = tmp_path / "ddp"
    dump.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(driver), str(REPO), cls_cfg, det_cfg, str(dump)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1 and "coco/AP" in results[0]  # train_det prints on rank 0 only
    assert "coco_tta/AP" in results[0]  # the final evaluation's fused views, sharded too

    for tag in ("cls", "det"):
        r0 = torch.load(dump / f"{tag}_rank0.pt", weights_only=True)
        r1 = torch.load(dump / f"{tag}_rank1.pt", weights_only=True)
        for k, v in r0.items():
            assert torch.equal(v, r1[k]), (tag, k)
    log = (dump / "det" / "log.txt").read_text()
    assert "world size 2" in log and "[rank1]" not in log

    # One process, same global batch (IMS_PER_BATCH is global), in this process.
    single = tmp_path / "single"
    classification.run(load_config(cls_cfg, ["OUTPUT_DIR", str(single / "cls")]))
    detection.run(load_config(det_cfg, ["OUTPUT_DIR", str(single / "det")]))
    for tag in ("cls", "det"):
        rank0 = torch.load(dump / f"{tag}_rank0.pt", weights_only=True)
        _assert_close_runs(dump / tag, single / tag, rank0)
    # The evaluation saw every image once across the ranks (5 + 5 val images, 3 detection).
    assert any(r.get("val/top1_err") is not None for r in _metrics(dump / "cls"))
    coco = json.loads((dump / "det" / "coco_results.json").read_text())
    assert {d["image_id"] for d in coco} <= {1, 2, 3}
    fused = json.loads((dump / "det" / "tta" / "coco_results.json").read_text())
    assert {d["image_id"] for d in fused} <= {1, 2, 3}
    assert any("val/coco_tta/AP" in r for r in _metrics(dump / "det"))  # compared above
