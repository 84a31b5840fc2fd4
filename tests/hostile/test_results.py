"""Results files with impossible values or wrong types: ``tools/coco_eval.py`` names
``results[i]`` and the problem; nothing reaches pycocotools."""

from __future__ import annotations

import json
import logging
import math

import pytest
from conftest import error_line, run_tool

from resdet.evaluation.results_check import ResultsError, check_coco_results

GT = {
    "images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100},
               {"id": 2, "file_name": "b.jpg", "height": 100, "width": 100}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30],
                     "area": 900, "iscrowd": 0}],
    "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
}  # fmt: skip
GOOD = {"image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "score": 0.9}

# name -> (the bad entry placed at results[1], words the message must contain)
CASES = {
    "nan_box": ({**GOOD, "bbox": [10, math.nan, 30, 30]}, "non-finite"),
    "inf_box": ({**GOOD, "bbox": [10, 10, math.inf, 30]}, "non-finite"),
    "nan_score": ({**GOOD, "score": math.nan}, "score is not finite"),
    "inf_score": ({**GOOD, "score": -math.inf}, "score is not finite"),
    "string_box": ({**GOOD, "bbox": "10 10 30 30"}, "bbox must be a list"),
    "string_in_box": ({**GOOD, "bbox": [10, "10", 30, 30]}, "must be numbers"),
    "short_box": ({**GOOD, "bbox": [10, 10, 30]}, "4 numbers"),
    "long_box": ({**GOOD, "bbox": [10, 10, 30, 30, 1]}, "4 numbers"),
    "negative_size": ({**GOOD, "bbox": [10, 10, -30, 30]}, ">= 0"),
    "string_score": ({**GOOD, "score": "0.9"}, "score must be a number"),
    "string_image_id": ({**GOOD, "image_id": "1"}, "image_id must be an integer"),
    "unknown_image_id": ({**GOOD, "image_id": 7}, "image_id 7 is not in the ground truth"),
    "not_an_object": ([1, 2, 3, 4], "must be an object"),
    "missing_key": ({"image_id": 1, "bbox": [1, 2, 3, 4]}, "is missing ['category_id', 'score']"),
    "unknown_category_id": ({**GOOD, "category_id": 4}, "category_id 4 is not a ground-truth"),
}


def _files(tmp_path, results) -> tuple:
    gt, dt = tmp_path / "gt.json", tmp_path / "dt.json"
    gt.write_text(json.dumps(GT))
    dt.write_text(json.dumps(results))  # Python's json writes NaN / Infinity, as numpy users do
    return str(gt), str(dt)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_entry_is_named(tmp_path, capsys, case) -> None:
    bad, words = CASES[case]
    gt, dt = _files(tmp_path, [GOOD, bad, GOOD])
    rc, err = run_tool("coco_eval", ["--gt", gt, "--dt", dt], capsys)
    assert rc == 2
    error_line(err, dt, "results[1]", words)
    assert not (tmp_path / "coco_metrics.json").exists()


def test_not_a_list(tmp_path, capsys) -> None:
    gt, dt = _files(tmp_path, {"image_id": 1})
    rc, err = run_tool("coco_eval", ["--gt", gt, "--dt", dt], capsys)
    assert rc == 2
    error_line(err, dt, "must be a JSON list")


def test_unknown_categories_as_a_warning(tmp_path, capsys, caplog) -> None:
    """An off-by-one label map (ids 4 and 6 for 3 and 5): an error by default; with the flag
    a warning with their count, and they do not count in the score."""
    shifted = [{**GOOD, "category_id": 4}, {**GOOD, "category_id": 6, "image_id": 2}]
    gt, dt = _files(tmp_path, [GOOD, *shifted])
    rc, err = run_tool("coco_eval", ["--gt", gt, "--dt", dt], capsys)
    assert rc == 2
    error_line(err, "2 results with unknown category ids [4, 6]", "--allow-unknown-categories")
    with caplog.at_level(logging.WARNING, logger="resdet"):
        rc, err = run_tool(
            "coco_eval", ["--gt", gt, "--dt", dt, "--allow-unknown-categories"], capsys
        )
    assert rc == 0 and "Traceback" not in err
    warned = "2 of 3 results have category ids absent from the ground truth ([4, 6]; the "
    assert warned + "ground truth's are [3, 5])" in caplog.text
    with pytest.raises(ResultsError):
        check_coco_results([GOOD, *shifted], "dt.json", [1, 2], [3, 5])
    kept = check_coco_results([GOOD, *shifted], "dt.json", [1, 2], [3, 5], True)
    assert kept == [GOOD]


def test_many_bad_entries_are_counted(tmp_path) -> None:
    results = [{**GOOD, "score": math.nan} for _ in range(12)]
    with pytest.raises(ResultsError, match=r"12 bad entries: results\[0\] .*\(and 7 more\)"):
        check_coco_results(results, "dt.json", [1], [3])
