"""The degradation experiment end to end at toy size (the "quick" schedule, depths 8 and 14
to keep it fast): data, four training runs, layer responses, report.md, both figures and
summary.json; the finding is computed from the runs' own metrics; re-running skips every step."""

from __future__ import annotations

import json
import os

import cv2
import pytest
from tool_loader import load_tool

from resdet.config import ConfigError
from resdet.utils.plots import read_metrics
from resdet_apps.degradation import DegradationOptions, build_configs, run_degradation
from resdet_apps.degradation_report import final_errors

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "shapes_degradation.yaml")
RUNS = ("plain-8", "plain-14", "ResNet-8", "ResNet-14")


def _check_png(path: str) -> None:
    img = cv2.imread(path)
    assert img is not None, f"{path} is not a readable image"
    assert img.shape[0] >= 300 and img.shape[1] >= 500, (path, img.shape)
    assert img.std() > 10, f"{path} is (nearly) blank"


@pytest.mark.slow
def test_quick_run_writes_report_figures_and_resumes(tmp_path):
    out = str(tmp_path / "degradation")
    opts = DegradationOptions(
        config=CONFIG,
        output=out,
        schedule="quick",
        depths=(8, 14),
        data_root=str(tmp_path / "shapes"),
        parallel=False,
        workers=1,
    )
    summary = run_degradation(opts)

    steps = ["data", *[s for r in RUNS for s in (r, f"{r}_responses")], "report"]
    assert sorted(summary["steps"]) == sorted(steps)
    assert all(s["status"] == "ran" for s in summary["steps"].values())
    assert all(summary["steps"][r]["cpu_seconds"] > 0 for r in RUNS)
    assert sorted(summary["runs"]) == sorted(RUNS)
    for name, run in summary["runs"].items():
        depth = int(name.split("-")[1])
        # One response per 3x3 layer: the stem plus 6n in the blocks.
        assert len(run["responses"]["std"]) == depth - 1, name
        assert run["responses"]["num_images"] == 8
        # The final training error is the mean of the run's last logged training errors.
        train, val = read_metrics(run["output_dir"])
        tail = [r["train_err"] for r in train if r["iteration"] > 6 * 0.9]
        assert run["train_err"] == pytest.approx(sum(tail) / len(tail))
        assert run["val_err"] == pytest.approx(val[-1]["val/top1_err"])
    plain, res = summary["finding"]["plain"], summary["finding"]["residual"]
    for c in (plain, res):
        runs = summary["runs"]
        diff = runs[c["deep"]]["train_err"] - runs[c["shallow"]]["train_err"]
        assert c["deep_minus_shallow"] == pytest.approx(diff)
    assert plain["as_in_paper"] == (plain["deep_minus_shallow"] > 0)
    assert res["as_in_paper"] == (res["deep_minus_shallow"] < 0)

    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        assert json.load(f)["finding"] == summary["finding"]
    report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "plain-14's final training error is" in report
    assert "ResNet-14's final training error is" in report
    for name in RUNS:
        assert f"| {name} | " in report
    for fig in ("fig6_training_curves.png", "fig7_layer_responses.png"):
        assert f"]({fig})" in report
        _check_png(os.path.join(out, fig))

    again = run_degradation(opts)
    for name, step in again["steps"].items():
        if name != "report":
            assert step["status"] == "done before", (name, step)
    assert again["finding"] == summary["finding"]


def test_final_errors_average_the_last_tenth(tmp_path):
    records = [{"iteration": i, "train_err": i / 100} for i in range(10, 101, 10)]
    records += [{"iteration": 50, "val/top1_err": 0.5}, {"iteration": 100, "val/top1_err": 0.3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    got = final_errors(str(tmp_path), max_iter=200)  # last 10%: iterations > 180: none logged
    assert got == {"train_err": 1.0, "val_err": 0.3, "train_window": [100, 100]}
    got = final_errors(str(tmp_path), max_iter=100)  # iterations 91..100
    assert got["train_err"] == pytest.approx(1.0) and got["train_window"] == [100, 100]
    got = final_errors(str(tmp_path), max_iter=60)  # > 54: 60, 70, ... 100
    assert got["train_err"] == pytest.approx(0.8) and got["train_window"] == [60, 100]


def test_configs_and_bad_options(tmp_path):
    opts = DegradationOptions(config=CONFIG, output=str(tmp_path / "o"))
    configs = build_configs(opts, str(tmp_path / "data"))
    assert list(configs) == ["plain-20", "plain-56", "ResNet-20", "ResNet-56"]
    for name, cfg in configs.items():
        b = cfg.MODEL.BACKBONE
        assert (b.PLAIN, b.DEPTH, b.SHORTCUT, b.STEM) == (
            name.startswith("plain"),
            int(name.split("-")[1]),
            "A",
            "cifar",
        )
        assert cfg.DATASETS.CLS_TRAIN == str(tmp_path / "data" / "crops" / "train")
        assert cfg.OUTPUT_DIR == os.path.join(str(tmp_path / "o"), name.lower())
    for depths in ((20, 21), (56, 20), (20, 20)):
        bad = DegradationOptions(config=CONFIG, depths=depths)
        with pytest.raises(ConfigError, match="6n\\+2"):
            build_configs(bad, str(tmp_path))
    bad = DegradationOptions(config=CONFIG, opts=["SOLVER.MAX_ITERS", "10"])
    with pytest.raises(ConfigError, match="MAX_ITER"):
        build_configs(bad, str(tmp_path))


def test_tool_reports_bad_arguments(tmp_path, capsys):
    tool = load_tool("degradation")
    rc = tool.main(["--depths", "20", "21", "--output", str(tmp_path / "o")])
    assert rc == 2
    assert "6n+2" in capsys.readouterr().err
