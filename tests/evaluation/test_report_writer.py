"""The written report: files, the known set's counts in report.json, a self-contained HTML
page, galleries, bad input, and tools/coco_eval.py --report."""

from __future__ import annotations

import json
import os
import re

import pytest
from report_cases import write_known_set
from tool_loader import load_tool

from resdet.data.records import DatasetError
from resdet.evaluation.report_writer import report_from_files

PNGS = [
    "pr_curves.png",
    "threshold_curves.png",
    "confusion_matrix.png",
    "errors.png",
    "ap_by_size.png",
    "ap_per_class.png",
    "gallery_false_positives.png",
    "gallery_missed.png",
]


def test_report_files_and_known_counts(tmp_path) -> None:
    known = write_known_set(tmp_path)
    out = tmp_path / "report"
    summary = report_from_files(known.gt_json, known.dt_json, str(out), known.image_root, 0.5)
    for name in ["report.md", "report.html", "report.json", *PNGS]:
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["score_thresh"] == 0.5
    assert (saved["images"], saved["objects"], saved["detections"]) == (5, 9, 10)
    cm = saved["confusion_matrix"]
    assert cm["labels"] == ["a", "b", "c", "background"]
    assert cm["counts"] == [[3, 0, 1, 0], [0, 2, 0, 1], [0, 0, 1, 1], [1, 2, 0, 0]]
    assert saved["errors"]["counts"] == {
        "Cls": 1, "Loc": 1, "Both": 0, "Dupe": 1, "Bkg": 1, "Miss": 1
    }  # fmt: skip
    fp = [(g["image_id"], g["false_positives"]) for g in saved["galleries"]["false_positives"]]
    missed = [(g["image_id"], g["missed"]) for g in saved["galleries"]["missed"]]
    assert fp == [(3, 2), (2, 1), (5, 1)]  # most first, ties by image id; image 1 and 4 clean
    assert missed == [(2, 1), (3, 1), (4, 1)]
    assert summary["AP50"] == pytest.approx(saved["AP50"])

    md = (out / "report.md").read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).is_file(), link
    assert len(re.findall(r"!\[", md)) == len(PNGS)
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(PNGS)
    assert '.png"' not in page  # nothing linked: the page stands alone


def test_default_threshold_is_the_best_f1_one(tmp_path) -> None:
    known = write_known_set(tmp_path)
    summary = report_from_files(known.gt_json, known.dt_json, str(tmp_path / "r"))
    assert summary["score_thresh"] == pytest.approx(0.65)  # see test_best_f1_on_the_known_set
    # The 0.60 duplicate is below it: no false "a" detection in the background row.
    assert summary["confusion_matrix"]["counts"][3][0] == 0
    # Without an image folder the galleries are listed, not drawn.
    assert not os.path.exists(tmp_path / "r" / "gallery_missed.png")
    assert "Not drawn: no image folder given" in (tmp_path / "r" / "report.md").read_text()


def test_unreadable_gallery_image_is_named_and_the_rest_written(tmp_path) -> None:
    known = write_known_set(tmp_path)
    os.remove(os.path.join(known.image_root, "img3.png"))
    out = tmp_path / "r"
    report_from_files(known.gt_json, known.dt_json, str(out), known.image_root, 0.5)
    md = (out / "report.md").read_text()
    assert "img3.png: image file not found" in md
    assert (out / "gallery_false_positives.png").is_file()  # images 2 and 5 still drawn


def test_no_detections_still_gives_a_report(tmp_path) -> None:
    known = write_known_set(tmp_path)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    summary = report_from_files(known.gt_json, str(empty), str(tmp_path / "r"))
    assert summary["detections"] == 0 and summary["AP50"] == 0
    assert summary["errors"]["counts"]["Miss"] == 9
    assert summary["confusion_matrix"]["counts"][0][3] == 4  # every "a" missed
    assert (tmp_path / "r" / "report.html").is_file()


def test_bad_results_file_names_file_and_entry(tmp_path) -> None:
    known = write_known_set(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    with pytest.raises(
        DatasetError, match=r"bad\.json: .*results\[0\] is missing \['category_id'\]"
    ):
        report_from_files(known.gt_json, str(bad), str(tmp_path / "r"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps([dict(known.results[0], image_id=99)]))
    with pytest.raises(DatasetError, match=r"other\.json: .*image_id 99 is not in the ground"):
        report_from_files(known.gt_json, str(other), str(tmp_path / "r"))


def test_coco_eval_tool_writes_the_report(tmp_path, capsys) -> None:
    known = write_known_set(tmp_path)
    out = tmp_path / "rep"
    tool = load_tool("coco_eval")
    args = ["--gt", known.gt_json, "--dt", known.dt_json, "--report", str(out)]
    code = tool.main([*args, "--image-root", known.image_root, "--score-thresh", "0.5"])
    assert code == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    saved = json.loads((out / "report.json").read_text())
    assert saved["score_thresh"] == 0.5 and (out / "gallery_missed.png").is_file()
    assert tool.main(["--gt", known.gt_json, "--dt", str(tmp_path / "nope.json"), "--report",
                      str(out)]) == 2  # fmt: skip
    assert "nope.json: COCO results file not found" in capsys.readouterr().err
