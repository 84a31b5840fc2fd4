"""tools/train_det.py and tools/eval_det.py end to end on a tiny generated shapes dataset."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
from tool_loader import REPO, TINY_FPN, run_tool

from resdet.accel import channels_last_pays_for_training, winograd_pays
from resdet.data.shapes import generate_shapes

TINY = """
_BASE_: {tiny}
DATASETS: {{TRAIN: [shapes_train], TEST: [shapes_val]}}
TEST: {{EVALUATORS: [coco, voc]}}
SOLVER: {{MAX_ITER: 6, WARMUP_ITERS: 2, STEPS: [4], CHECKPOINT_PERIOD: 3}}
LOG_PERIOD: 2
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_shapes(str(root / "shapes"), num_train=6, num_val=3, crops=False, progress=False)
    cfg = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    cfg.write_text(TINY.format(tiny=TINY_FPN))
    env = {**os.environ, "RESDET_DATASETS": str(root)}
    return str(cfg), env


def test_train_then_eval(tiny, tmp_path) -> None:
    cfg, env = tiny
    out = tmp_path / "run"
    r = run_tool(["tools/train_det.py", "--config", cfg, "OUTPUT_DIR", str(out)], env)
    assert r.returncode == 0, r.stderr[-3000:]
    expected = [
        "config.yaml",
        "log.txt",
        "metrics.jsonl",
        "model_final.pth",
        "last_checkpoint",
        "coco_metrics.json",
        "coco_per_class.md",
        "voc_metrics.json",
        "coco_results.json",
    ]
    for name in expected:
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x]
    assert [x["iteration"] for x in train] == [2, 4, 6]
    assert all(k in train[0] for k in ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"))
    assert any("val/coco/AP50" in x for x in lines) and any("val/voc/mAP07" in x for x in lines)

    ev = tmp_path / "eval"
    weights = str(out / "model_final.pth")
    r = run_tool(
        ["tools/eval_det.py", "--config", cfg, "--weights", weights, "OUTPUT_DIR", str(ev)], env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((ev / "eval_results.json").read_text())
    trained = json.loads((out / "coco_metrics.json").read_text())
    # Evaluating the saved weights reproduces the end-of-training evaluation.
    assert results["coco/AP"] == pytest.approx(trained["AP"], abs=1e-6)
    assert 0.0 <= results["voc/mAP07"] <= 1.0

    # Test-time augmentation: one pass scores the plain detections (the same numbers) and the
    # fused ones, whose files go into tta/.
    aug = tmp_path / "tta"
    r = run_tool(["tools/eval_det.py", "--config", cfg, "--weights", weights,
                  "OUTPUT_DIR", str(aug), "TEST.AUG.ENABLED", "True",
                  "TEST.AUG.MIN_SIZES", "[64]"], env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    both = json.loads((aug / "eval_results.json").read_text())
    for key in ("coco/AP", "coco/AP50", "voc/mAP07"):
        assert both[key] == pytest.approx(results[key], abs=1e-9), key
        assert 0.0 <= both[key.replace("/", "_tta/")] <= 1.0
    fused = json.loads((aug / "tta" / "coco_results.json").read_text())
    single = json.loads((aug / "coco_results.json").read_text())
    assert single == json.loads((ev / "coco_results.json").read_text())
    assert fused and fused != single

    # Both ran the folded + fused inference copy (TEST.FAST_INFERENCE); the plain model agrees.
    plain = tmp_path / "plain"
    r = run_tool(["tools/eval_det.py", "--config", cfg, "--weights", weights,
                  "OUTPUT_DIR", str(plain), "TEST.FAST_INFERENCE", "False"], env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    slow = json.loads((plain / "eval_results.json").read_text())
    for key in ("coco/AP", "coco/AP50", "voc/mAP07"):
        assert slow[key] == pytest.approx(results[key], abs=2e-3), key


def test_training_fast_paths_match_the_plain_model(tiny, tmp_path) -> None:
    """SOLVER.FOLD_FROZEN_BN and the CPU's convolution path (SOLVER.WINOGRAD on AVX2-only CPUs,
    SOLVER.CPU_CHANNELS_LAST on AVX-512 ones; all on by default) against all off."""
    cfg, env = tiny
    losses = {}
    for fast in ("True", "False"):
        out = tmp_path / fast
        args = ["tools/train_det.py", "--config", cfg, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER",
                "2", "DATASETS.TEST", "[]", "SOLVER.FOLD_FROZEN_BN", fast,
                "SOLVER.WINOGRAD", fast, "SOLVER.CPU_CHANNELS_LAST", fast]  # fmt: skip
        r = run_tool(args, env)
        assert r.returncode == 0, r.stderr[-3000:]
        log = (out / "log.txt").read_text()
        assert ("frozen BN applied to the weights of" in log) == (fast == "True")
        winograd = re.search(r"(\d+) 3x3 convolutions train as Winograd convolutions", log)
        nhwc = "the detector trains channels_last" in log
        assert (winograd is not None and int(winograd.group(1)) > 0) == (
            fast == "True" and winograd_pays()
        )
        assert nhwc == (fast == "True" and channels_last_pays_for_training())
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[fast] = [x for x in lines if "loss" in x][-1]
    # Same parameters, same data: two steps give the same losses up to float rounding.
    for key in ("loss", "loss_rpn_cls", "loss_cls", "loss_box_reg"):
        assert losses["True"][key] == pytest.approx(losses["False"][key], rel=1e-3, abs=1e-5), key


def test_mistyped_key_and_missing_dataset_are_clear_errors(tiny, tmp_path, monkeypatch, capsys):
    cfg, env = tiny
    monkeypatch.setenv("RESDET_DATASETS", env["RESDET_DATASETS"])
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import train_det
    finally:
        sys.path.pop(0)
    assert train_det.main(["--config", cfg, "SOLVER.BASE_LRR", "0.1"]) == 2
    assert "did you mean 'BASE_LR'" in capsys.readouterr().err
    code = train_det.main(["--config", cfg, "DATASETS.TRAIN", "[shapes_trian]",
                           "OUTPUT_DIR", str(tmp_path / "x")])  # fmt: skip
    assert code == 2
    assert "unknown dataset 'shapes_trian'; did you mean shapes_train" in capsys.readouterr().err


def test_backbone_weights_with_other_input_conventions_are_flagged() -> None:
    from resdet.config import config_to_dict, load_config
    from resdet.engine.initial_weights import input_convention_mismatches

    cfg = load_config(None)
    msra = config_to_dict(load_config(None, ["MODEL.INPUT_FORMAT", "BGR",
                                              "MODEL.BACKBONE.STRIDE_IN_1X1", "true"]))  # fmt: skip
    problems = input_convention_mismatches(msra, cfg)
    assert len(problems) == 2
    assert any("MODEL.INPUT_FORMAT BGR" in p for p in problems)
    assert any("MODEL.BACKBONE.STRIDE_IN_1X1 True" in p for p in problems)
    assert input_convention_mismatches(config_to_dict(cfg), cfg) == []
    assert input_convention_mismatches(None, cfg) == []
    # A classifier's config carries the schema's default anchors, which its weights never used:
    # only the trunk's conventions are compared for MODEL.BACKBONE.PRETRAINED.
    shapes = load_config("configs/shapes_r18_fpn.yaml")
    classifier = config_to_dict(load_config("configs/shapes_cls_r18.yaml"))
    assert len(input_convention_mismatches(classifier, shapes)) >= 2  # anchors, RoI sampling
    assert input_convention_mismatches(classifier, shapes, trunk_only=True) == []
    classifier["MODEL"]["INPUT_FORMAT"] = "BGR"
    (problem,) = input_convention_mismatches(classifier, shapes, trunk_only=True)
    assert "MODEL.INPUT_FORMAT BGR" in problem
