"""tools/make_model_zoo.py: the measured-here rows come from a finished demo's summary.json."""

from __future__ import annotations

import json

import pytest
from tool_loader import load_tool


@pytest.fixture(scope="module")
def zoo():
    return load_tool("make_model_zoo")


def _summary(tmp_path, **extra):
    det = {"AP": 0.353, "AP50": 0.573, "AP75": 0.39, "VOC07_mAP": 0.569}
    summary = {
        "schedule": "default",
        "det_iters": 1300,
        "wall_seconds": 527.0,
        "classifier": {"top1_err": 0.148, "top5_err": 0.01},
        "pretrained": det,
        "scratch": {"AP": 0.06, "AP50": 0.142, "AP75": 0.04, "VOC07_mAP": 0.166},
        **extra,
    }
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    return str(path)


def test_demo_rows_come_from_the_recorded_summary(zoo, tmp_path):
    dest = str(tmp_path / "measured.json")
    assert any("pending" in row for row in zoo.demo_rows(dest))  # nothing recorded yet
    zoo.save_demo_results(_summary(tmp_path), dest)
    rows = "\n".join(zoo.demo_rows(dest))
    assert "pending" not in rows
    assert "| shapes_cls_r18 | val top-1 error % (crops) | 14.8 |" in rows
    assert "35.3 / 57.3 (from scratch: 6.0 / 14.2)" in rows
    assert "56.9 (from scratch: 16.6)" in rows
    assert "schedule `default`, 1300 detector iterations on a 2-core CPU" in rows  # as it says
    # A summary that names its machine (the demo's since it records one) puts it there.
    machine = {"cpu": "AMD EPYC", "isa": ["avx2", "fma"], "cores": 2}
    zoo.save_demo_results(_summary(tmp_path, machine=machine), dest)
    rows = "\n".join(zoo.demo_rows(dest))
    assert "1300 detector iterations on AMD EPYC (2 cores, flags avx2 fma)." in rows
    zoo.save_demo_results(_summary(tmp_path, machine={**machine, "device": "cuda:0"}), dest)
    rows = "\n".join(zoo.demo_rows(dest))
    assert "(2 cores, flags avx2 fma), detectors trained on cuda:0." in rows
    assert "TTA" not in rows  # a summary without test-time augmentation has no such row
    # With the final evaluation's fused views (TEST.AUG), their AP / AP50 get a row.
    tta = {"AP": 0.4, "AP50": 0.6}
    path = _summary(
        tmp_path, pretrained={"AP": 0.353, "AP50": 0.573, "VOC07_mAP": 0.569, "tta": tta}
    )
    zoo.save_demo_results(path, dest)
    rows = "\n".join(zoo.demo_rows(dest))
    assert "views fused (TTA) | 40.0 / 60.0 |" in rows


def test_an_unfinished_summary_is_refused(zoo, tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"schedule": "default", "steps": {}}))
    with pytest.raises(SystemExit, match="not a finished demo summary"):
        zoo.save_demo_results(str(path), str(tmp_path / "measured.json"))


def test_model_zoo_md_is_up_to_date(zoo):
    # MODEL_ZOO.md is generated: a config change must come with `python tools/make_model_zoo.py`.
    assert zoo.main(["--check"]) == 0
