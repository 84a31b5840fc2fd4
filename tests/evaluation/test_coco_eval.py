"""COCO evaluator: exact APs on hand-made cases, file outputs, edge cases and the CLI tool."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tool_loader import load_tool

from resdet.data.records import DatasetError, DatasetMeta, DetectionRecord
from resdet.evaluation.coco import (
    COCOEvaluator,
    detections_to_coco_results,
    evaluate_coco_files,
    records_to_coco_gt,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pycocotools interpolates precision at 101 recall thresholds 0, 0.01, ..., 1. With precision
# 1 up to recall 0.5 and nothing beyond, the 51 thresholds 0..0.50 score 1 and the other 50
# score 0: AP = 51/101 = 0.50495, not the 0.5 of the exact area under the curve.
HALF_RECALL_AP = 51 / 101


def _records() -> list[DetectionRecord]:
    # Box sizes pick the area range: 20x20=400 small, 50x50=2500 medium, 120x100 large.
    return [
        DetectionRecord("img1.jpg", 1, 200, 200, [[10, 10, 30, 30], [50, 50, 100, 100]], [0, 1]),
        DetectionRecord("img2.jpg", 7, 200, 200, [[0, 0, 120, 100]], [0]),
    ]


def _meta() -> DatasetMeta:
    # Sparse category ids, as in COCO; "zebra" has no gt anywhere.
    return DatasetMeta("toy", ["cat", "dog", "zebra"], category_ids=[3, 5, 9])


def _as_detections(records: list[DetectionRecord], to_torch: bool = False) -> list[dict]:
    out = []
    for r in records:
        arrays = {
            "boxes": r.boxes.copy(),
            "scores": np.linspace(0.9, 0.5, len(r.boxes)).astype(np.float32),
            "labels": r.labels.copy(),
        }
        if to_torch:
            arrays = {k: torch.from_numpy(v) for k, v in arrays.items()}
        out.append({"image_id": r.image_id, **arrays})
    return out


def _empty(image_id: int) -> dict:
    return {
        "image_id": image_id,
        "boxes": np.zeros((0, 4), np.float32),
        "scores": np.zeros(0, np.float32),
        "labels": np.zeros(0, np.int64),
    }


def test_detections_to_coco_results_maps_boxes_and_ids() -> None:
    det = {
        "image_id": torch.tensor(4),
        "boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [5.0, 5.0, 6.5, 9.0]]),
        "scores": torch.tensor([0.7, 0.2]),
        "labels": torch.tensor([2, 0]),
    }
    res = detections_to_coco_results([det], [3, 5, 9])
    assert [r["category_id"] for r in res] == [9, 3]
    assert res[0]["bbox"] == pytest.approx([1.0, 2.0, 10.0, 20.0])
    assert res[1]["bbox"] == pytest.approx([5.0, 5.0, 1.5, 4.0])
    assert res[0]["image_id"] == 4 and res[0]["score"] == pytest.approx(0.7)


def test_records_to_coco_gt_areas_and_crowd() -> None:
    rec = DetectionRecord("x/a.jpg", 3, 50, 60, [[0, 0, 10, 5], [1, 1, 3, 3]], [1, 0], [0, 1])
    gt = records_to_coco_gt([rec], _meta())
    anns = gt["annotations"]
    assert [a["category_id"] for a in anns] == [5, 3]
    assert [a["area"] for a in anns] == [50.0, 4.0]
    assert [a["iscrowd"] for a in anns] == [0, 1]
    assert anns[0]["bbox"] == [0.0, 0.0, 10.0, 5.0]
    assert gt["images"] == [{"id": 3, "file_name": "a.jpg", "height": 50, "width": 60}]


@pytest.mark.parametrize("to_torch", [False, True])
def test_ground_truth_as_detections_scores_one(tmp_path, to_torch: bool) -> None:
    records = _records()
    ev = COCOEvaluator(records, _meta(), str(tmp_path))
    ev.process(_as_detections(records, to_torch))
    m = ev.evaluate()
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert m[key] == pytest.approx(1.0), key
    assert m["per_class"]["cat"] == pytest.approx(1.0)
    assert m["per_class"]["dog"] == pytest.approx(1.0)
    assert math.isnan(m["per_class"]["zebra"])  # no gt: nan, and left out of the mean

    results = json.loads((tmp_path / "coco_results.json").read_text())
    assert len(results) == 3 and {r["category_id"] for r in results} == {3, 5}
    saved = json.loads((tmp_path / "coco_metrics.json").read_text())
    assert saved["AP"] == pytest.approx(1.0) and saved["per_class"]["zebra"] is None
    table = (tmp_path / "coco_per_class.md").read_text()
    assert "| cat | 100.00 |" in table and "| zebra | nan |" in table


def test_half_the_objects_missed() -> None:
    records = [
        DetectionRecord("a.jpg", 1, 100, 100, [[10, 10, 60, 60]], [0]),
        DetectionRecord("b.jpg", 2, 100, 100, [[20, 20, 70, 70]], [0]),
    ]
    ev = COCOEvaluator(records, DatasetMeta("half", ["thing"]), None)
    det = _as_detections(records[:1])
    ev.process(det + [_empty(2)])
    m = ev.evaluate()
    assert m["AP"] == pytest.approx(HALF_RECALL_AP)
    assert m["AP50"] == pytest.approx(HALF_RECALL_AP)
    assert m["AP75"] == pytest.approx(HALF_RECALL_AP)
    assert m["APm"] == pytest.approx(HALF_RECALL_AP)  # both objects are 50x50 = medium
    assert math.isnan(m["APs"]) and math.isnan(m["APl"])


def test_no_detections_gives_zero_not_a_crash(tmp_path) -> None:
    records = _records()
    ev = COCOEvaluator(records, _meta(), str(tmp_path))
    ev.process([_empty(r.image_id) for r in records])
    m = ev.evaluate()
    assert m["AP"] == 0.0 and m["AP50"] == 0.0
    assert m["per_class"]["cat"] == 0.0 and math.isnan(m["per_class"]["zebra"])
    assert json.loads((tmp_path / "coco_results.json").read_text()) == []
    # Nothing processed at all: every image counts, still AP 0.
    assert COCOEvaluator(records, _meta()).evaluate()["AP"] == 0.0


def test_only_processed_images_are_scored() -> None:
    records = _records()
    ev = COCOEvaluator(records, _meta())
    ev.process(_as_detections(records[1:]))  # image 7 only: a perfect "cat"
    m = ev.evaluate()
    assert m["AP"] == pytest.approx(1.0)
    assert math.isnan(m["per_class"]["dog"])  # the dog is in the unprocessed image


def test_repeated_image_counts_once() -> None:
    # A DistributedSampler pads by repeating images; the repeat must not become false positives.
    records = _records()
    ev = COCOEvaluator(records, _meta())
    ev.process(_as_detections(records))
    ev.process(_as_detections(records[:1]))
    assert ev.evaluate()["AP"] == pytest.approx(1.0)


def test_uses_meta_json_file_when_present(tmp_path) -> None:
    records = _records()
    gt = records_to_coco_gt(records, _meta())
    # The json knows one more dog on image 7 than the records: the evaluator must score
    # against the json, where recall for "dog" is then 1/2.
    gt["annotations"].append(
        {
            "id": 99,
            "image_id": 7,
            "category_id": 5,
            "bbox": [130, 130, 50, 50],
            "area": 2500,
            "iscrowd": 0,
        }
    )
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    meta = _meta()
    meta.json_file = str(path)
    ev = COCOEvaluator(records, meta)
    ev.process(_as_detections(records))
    m = ev.evaluate()
    assert m["per_class"]["cat"] == pytest.approx(1.0)
    assert m["per_class"]["dog"] == pytest.approx(HALF_RECALL_AP)


def test_bad_detections_raise_clear_errors() -> None:
    ev = COCOEvaluator(_records(), _meta())
    bad = _empty(1)
    bad.update(boxes=np.ones((1, 4)), scores=np.ones(1), labels=np.array([3]))
    with pytest.raises(DatasetError, match="image id 1: label 3 is outside"):
        ev.process([bad])
    ev.process([_empty(12345)])
    with pytest.raises(DatasetError, match="absent from the ground truth"):
        ev.evaluate()


def _write_files(tmp_path) -> tuple[str, str]:
    records = _records()
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(records_to_coco_gt(records, _meta())))
    dt = tmp_path / "dt.json"
    # Only the detection of image 1's cat: cat recall 1/2, dog 0.
    results = detections_to_coco_results(_as_detections(records), [3, 5, 9])
    dt.write_text(json.dumps(results[:1]))
    return str(gt), str(dt)


def test_evaluate_coco_files(tmp_path) -> None:
    gt, dt = _write_files(tmp_path)
    m = evaluate_coco_files(gt, dt, str(tmp_path / "out"))
    assert m["per_class"]["cat"] == pytest.approx(HALF_RECALL_AP)
    assert m["per_class"]["dog"] == 0.0
    assert m["AP"] == pytest.approx(HALF_RECALL_AP / 2)
    assert (tmp_path / "out" / "coco_metrics.json").is_file()
    with pytest.raises(DatasetError, match="not found"):
        evaluate_coco_files(gt, str(tmp_path / "missing.json"))


def test_coco_eval_tool_runs(tmp_path) -> None:
    gt, dt = _write_files(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "tools/coco_eval.py", "--gt", gt, "--dt", dt]
    proc = subprocess.run(
        cmd + ["--output", str(tmp_path / "o")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| cat | 50.50 |" in proc.stdout and "| dog | 0.00 |" in proc.stdout
    assert json.loads((tmp_path / "o" / "coco_metrics.json").read_text())["per_class"]["dog"] == 0


def test_coco_eval_tool_reports_bad_input(tmp_path, capsys) -> None:
    tool = load_tool("coco_eval")
    gt, _ = _write_files(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    assert tool.main(["--gt", gt, "--dt", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "not valid JSON" in err
