"""The demo end to end at toy size (the "quick" schedule: 16 train / 8 val scenes, a few
iterations per run): data, classifier, detector pretrained and from scratch, COCO + VOC
evaluation, REPORT.md and its pictures; then resuming skips every finished step."""

from __future__ import annotations

import json
import os
import re

import cv2
import pytest
import torch
from tool_loader import load_tool

from resdet.config import ConfigError
from resdet_apps.demo import DemoOptions, build_configs, default_schedule, run_demo
from resdet_apps.demo_steps import Background, prepare_step

STEPS = ("data", "cls", "det", "det_eval", "scratch", "scratch_eval", "report")
NUMBER = r"[-+]?\d+\.\d"


def _row(report: str, title: str) -> list:
    """Cells of the markdown table row starting with ``| title |``."""
    match = re.search(rf"^\| {re.escape(title)} \|(.*)\|$", report, flags=re.M)
    assert match, f"no row '{title}' in REPORT.md"
    return [c.strip() for c in match.group(1).split("|")]


def _check_png(path: str, min_w: int, min_h: int) -> None:
    img = cv2.imread(path)
    assert img is not None, f"{path} is not a readable image"
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h, f"{path}: {w}x{h}"
    assert img.std() > 10, f"{path} is (nearly) blank"


@pytest.mark.slow
def test_quick_demo_writes_report_and_resumes(tmp_path):
    out = str(tmp_path / "demo")
    opts = DemoOptions(
        output=out, schedule="quick", data_root=str(tmp_path / "shapes"), workers=1, num_vis=2
    )
    summary = run_demo(opts)

    assert list(summary["steps"]) == list(STEPS)
    assert all(s["status"] == "ran" and s["seconds"] > 0 for s in summary["steps"].values())
    for run in ("pretrained", "scratch"):
        for key in ("AP", "AP50", "VOC07_mAP", "VOC_area_mAP"):
            assert 0.0 <= summary[run][key] <= 1.0, (run, key, summary[run][key])
            # The config's test-time augmentation (TEST.AUG): the fused views scored too.
            assert 0.0 <= summary[run]["tta"][key] <= 1.0, (run, key, summary[run]["tta"])
    assert 0.0 <= summary["classifier"]["top1_err"] <= 1.0
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["cpu"]  # what it ran on
    assert summary["machine"]["device"] == "cpu"
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        assert json.load(f)["pretrained"] == summary["pretrained"]

    report = open(os.path.join(out, "REPORT.md"), encoding="utf-8").read()
    # Both detectors and the gain, as numbers, for every COCO and VOC metric.
    assert "| metric (%) | pretrained | scratch | transfer gain |" in report
    titles = ("COCO AP", "COCO AP50", "COCO AP75", "VOC07 11-point mAP", "VOC area mAP")
    for title in titles + ("COCO AP, TTA", "COCO AP50, TTA", "VOC07 11-point mAP, TTA"):
        cells = _row(report, title)
        assert len(cells) == 3 and all(re.fullmatch(NUMBER, c) for c in cells), (title, cells)
    for title in ("COCO APs", "COCO APm", "COCO APl"):  # "-": no object of that size in 8 images
        cells = _row(report, title)
        assert len(cells) == 3 and all(re.fullmatch(NUMBER + "|-", c) for c in cells), cells
    # Per-class rows: COCO and VOC07 AP of both runs for each of the 7 shapes.
    for name in ("circle", "square", "triangle", "star", "cross", "ring", "crescent"):
        cells = _row(report, name)
        assert len(cells) == 4 and all(re.fullmatch(NUMBER + "|-", c) for c in cells), cells
    # Wall time of every step, the machine, the classifier's error, the target check.
    for step in STEPS[:-1]:
        assert re.search(rf"^\| {step} \| .+ \| \d+ s", report, flags=re.M), step
    assert "logical CPUs, detectors trained on cpu" in report and "val top-1 error" in report
    assert "Targets for the pretrained detector, one pass: AP50 >= 90: **" in report
    assert "Targets for the pretrained detector, TTA: AP50 >= 90: **" in report

    _check_png(os.path.join(out, "cls_curves.png"), 400, 300)
    _check_png(os.path.join(out, "det_losses.png"), 800, 500)
    _check_png(os.path.join(out, "det_val_ap.png"), 400, 300)  # quick evaluates periodically
    # Two val images, each as ground truth | pretrained | scratch: six panels in one row.
    _check_png(os.path.join(out, "val_detections.png"), 6 * 200, 200)
    for png in ("cls_curves.png", "det_losses.png", "det_val_ap.png", "val_detections.png"):
        assert f"]({png})" in report
    # Final evaluation files of each detector, over the whole val split.
    for run_dir in ("det", "det_scratch"):
        ev = os.path.join(out, run_dir, "eval")
        for name in ("coco_metrics.json", "coco_per_class.md", "voc_metrics.json"):
            assert os.path.isfile(os.path.join(ev, name)), (run_dir, name)
            assert os.path.isfile(os.path.join(ev, "tta", name)), (run_dir, "tta", name)
        with open(os.path.join(ev, "coco_results.json"), encoding="utf-8") as f:
            assert {r["image_id"] for r in json.load(f)} <= set(range(1, 9))

    # Re-running resumes: every finished step is skipped, its earlier wall time kept.
    again = run_demo(opts)
    for step in STEPS[:-1]:
        assert again["steps"][step]["status"] == "done before", step
        assert again["steps"][step]["seconds"] == summary["steps"][step]["seconds"]
    assert again["pretrained"] == summary["pretrained"]


def test_build_configs_wires_the_runs(tmp_path):
    opts = DemoOptions(output=str(tmp_path / "o"), det_opts=["SOLVER.MAX_ITER", "7"])
    configs, val = build_configs(opts, str(tmp_path / "data"))
    cls, det, scratch = configs["cls"], configs["det"], configs["scratch"]
    assert val == "demo_shapes_val"  # data outside the catalog root: registered by the demo
    assert cls.DATASETS.CLS_TRAIN == os.path.join(str(tmp_path / "data"), "crops", "train")
    # The detector starts from the classifier's final checkpoint, with the same trunk.
    assert det.MODEL.BACKBONE.PRETRAINED == os.path.join(cls.OUTPUT_DIR, "model_final.pth")
    assert det.MODEL.BACKBONE.WIDTH == cls.MODEL.BACKBONE.WIDTH
    assert det.MODEL.BACKBONE.DEPTH == cls.MODEL.BACKBONE.DEPTH
    # Scratch: same detector and schedule, random init with trainable BN everywhere.
    assert scratch.MODEL.BACKBONE.PRETRAINED == ""
    assert (scratch.MODEL.BACKBONE.NORM, scratch.MODEL.BACKBONE.FREEZE_AT) == ("BN", 0)
    assert det.SOLVER.MAX_ITER == scratch.SOLVER.MAX_ITER == 7
    assert det.MODEL.FPN.OUT_CHANNELS == scratch.MODEL.FPN.OUT_CHANNELS
    assert det.OUTPUT_DIR != scratch.OUTPUT_DIR
    with pytest.raises(ConfigError, match="schedule"):
        build_configs(DemoOptions(schedule="medium"), str(tmp_path / "data"))
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITR"):
        build_configs(DemoOptions(det_opts=["SOLVER.MAX_ITR", "3"]), str(tmp_path / "data"))


@pytest.mark.parametrize("native", [True, False])
def test_the_measurement_picks_the_default_schedule(native, tmp_path, monkeypatch):
    # bf16 where it trains the demo's detector faster (both detectors in bf16, the long
    # schedule's iterations); fp32 and 2,000 iterations elsewhere. Either way into output/demo.
    asked = []

    def bf16_pays(model, cfg, train):
        asked.append((cfg.MODEL.BACKBONE.WIDTH, train, torch.get_num_threads()))
        return native

    monkeypatch.setattr("resdet_apps.demo.bf16_pays", bf16_pays)
    name = default_schedule()
    assert asked == [(16, True, 1)]  # the demo's detector, training, one thread as it trains
    assert name == ("bf16" if native else "default")
    configs, _ = build_configs(DemoOptions(schedule=name), str(tmp_path / "data"))
    det, scratch = configs["det"], configs["scratch"]
    assert det.SOLVER.AMP.ENABLED == scratch.SOLVER.AMP.ENABLED == native
    assert det.SOLVER.MAX_ITER == scratch.SOLVER.MAX_ITER == (6000 if native else 2000)
    assert not configs["cls"].SOLVER.AMP.ENABLED  # the classifier trains in fp32 either way
    seen = []

    def record(opts):  # what the tool would run, without running it
        seen.append(opts)
        raise KeyboardInterrupt

    tool = load_tool("demo")
    monkeypatch.setattr(tool, "run_demo", record)
    with pytest.raises(KeyboardInterrupt):
        tool.main([])
    assert (seen[0].schedule, seen[0].output) == (name, "output/demo")
    assert seen[0].fit  # `make demo`: iterations fitted to this CPU's speed
    with pytest.raises(KeyboardInterrupt):
        tool.main(["--schedule", "default"])
    assert seen[1].schedule == "default" and not seen[1].fit  # a named schedule runs as it is
    with pytest.raises(KeyboardInterrupt):
        tool.main(["--det-opts", "SOLVER.MAX_ITER", "600"])
    assert not seen[2].fit  # iterations given: nothing to fit


def test_tool_rejects_quick_with_long():
    tool = load_tool("demo")
    with pytest.raises(SystemExit):
        tool.main(["--quick", "--long"])


def test_prepare_step_skips_resumes_and_restarts(tmp_path):
    out = str(tmp_path / "step")
    assert prepare_step(out, {"lr": 0.1}, "done.txt") == "ran"
    (tmp_path / "step" / "checkpoint").write_text("partial")
    assert prepare_step(out, {"lr": 0.1}, "done.txt") == "resumed"  # no marker yet
    (tmp_path / "step" / "done.txt").write_text("")
    assert prepare_step(out, {"lr": 0.1}, "done.txt") == "skipped"
    # Other settings: the old outputs are removed and the step starts again.
    assert prepare_step(out, {"lr": 0.2}, "done.txt") == "ran"
    assert sorted(os.listdir(out)) == ["demo_settings.json"]


def test_background_raises_the_child_error_in_the_parent():
    # The value path runs in the quick demo (the from-scratch chain); one spawn is enough here.
    with pytest.raises(ValueError, match="invalid literal"):
        Background(int, "seven", name="bad").result()
