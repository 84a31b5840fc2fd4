"""The report at the end of training (TEST.REPORT) and from tools/eval_det.py --report, on a
tiny generated shapes set (a detector trained for a few iterations: the numbers are poor, the
files and their agreement with the evaluator are what is checked)."""

from __future__ import annotations

import json
import os

import pytest
from tool_loader import TINY_FPN, load_tool, run_tool

from resdet.data.shapes import generate_shapes

TINY = """
_BASE_: {tiny}
MODEL:
  ROI_HEADS: {{SCORE_THRESH_TEST: 0.0}}
DATASETS: {{TRAIN: [shapes_train], TEST: [shapes_val]}}
SOLVER: {{MAX_ITER: 2, WARMUP_ITERS: 1, STEPS: [1], CHECKPOINT_PERIOD: 2}}
TEST: {{REPORT: True}}
LOG_PERIOD: 1
"""


@pytest.mark.slow
def test_report_after_training_and_from_eval_det(tmp_path) -> None:
    generate_shapes(str(tmp_path / "shapes"), num_train=4, num_val=3, crops=False, progress=False)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(tiny=TINY_FPN))
    env = {**os.environ, "RESDET_DATASETS": str(tmp_path)}

    out = tmp_path / "run"
    args = ["tools/train_det.py", "--config", str(cfg), "OUTPUT_DIR", str(out)]
    r = run_tool(args, env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = out / "report"
    for name in ("report.md", "report.html", "report.json", "confusion_matrix.png"):
        assert (report / name).is_file(), name
    saved = json.loads((report / "report.json").read_text())
    metrics = json.loads((out / "coco_metrics.json").read_text())
    results = json.loads((out / "coco_results.json").read_text())
    assert saved["images"] == 3 and saved["detections"] == len(results)
    assert saved["AP50"] == pytest.approx(metrics["AP50"])  # the evaluator's own number
    assert saved["errors"]["ap50"] == pytest.approx(metrics["AP50"])
    assert saved["confusion_matrix"]["labels"][-1] == "background"

    ev = tmp_path / "eval"
    args = ["tools/eval_det.py", "--config", str(cfg), "--weights", str(out / "model_final.pth")]
    args += ["--report-dir", str(tmp_path / "rep"), "--report-score-thresh", "0.05"]
    r = run_tool([*args, "OUTPUT_DIR", str(ev), "TEST.REPORT", "False"], env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["score_thresh"] == 0.05
    assert saved["AP50"] == pytest.approx(
        json.loads((ev / "coco_metrics.json").read_text())["AP50"]
    )
    assert not (ev / "report").exists()


def test_eval_det_report_flags_become_config_overrides() -> None:
    tool = load_tool("eval_det")
    base = ["--config", "c.yaml", "--weights", "w.pth", "OUTPUT_DIR", "out"]
    assert tool.report_overrides(base) == base
    assert tool.report_overrides([*base[:4], "--report", *base[4:]]) == [
        *base, "TEST.REPORT", "True"
    ]  # fmt: skip
    flags = ["--report-dir", "r", "--report-score-thresh", "0.3"]
    assert tool.report_overrides([*flags, *base]) == [
        *base, "TEST.REPORT", "True", "TEST.REPORT_DIR", "r", "TEST.REPORT_SCORE_THRESH", "0.3"
    ]  # fmt: skip
