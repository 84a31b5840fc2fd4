"""Boxes far outside their image: clipped for training, but named -- by annotation id and how
far out they reach -- in the training log and in ``tools/check_dataset.py``'s report."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
from conftest import run_tool

from resdet.data.box_bounds import FAR_OUTSIDE_PX, outside_reach
from resdet.data.coco import load_coco_json
from resdet.data.problems import collect_problems
from resdet.data.records import DatasetError
from resdet.data.voc import load_voc


def _coco(tmp_path, n_far: int = 2) -> str:
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((20, 30, 3), np.uint8))
    anns = [
        {"id": 1, "bbox": [2, 2, 10, 10]},  # inside
        {"id": 2, "bbox": [0, 0, 31, 20]},  # one pixel past the right border: quietly clipped
        {"id": 3, "bbox": [10, 5, 320, 10]},  # 300 px past the right border
        {"id": 4, "bbox": [-50, 2, 60, 10]},  # 50 px past the left border
    ][: 2 + n_far]
    anns += [{"id": 10 + i, "bbox": [5, 5, 10, 25 + i]} for i in range(max(0, n_far - 2))]
    for a in anns:
        a.update(image_id=1, category_id=1, area=1.0, iscrowd=0)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_outside_reach() -> None:
    assert outside_reach([0, 0, 30, 20], 30, 20) == 0.0
    assert outside_reach([-4, 0, 10, 10], 30, 20) == 4.0
    assert outside_reach([0, 0, 10, 27.5], 30, 20) == 7.5


def test_check_dataset_lists_them(tmp_path, capsys) -> None:
    ann = _coco(tmp_path)
    report = tmp_path / "report.json"
    argv = ["--coco-json", ann, "--image-root", str(tmp_path / "img"), "--no-progress"]
    rc, _ = run_tool("check_dataset", [*argv, "--json", str(report)], capsys)
    assert rc == 1
    problems = [p["message"] for p in json.loads(report.read_text())[0]["annotation_problems"]]
    assert len(problems) == 2  # ids 3 and 4; id 2 (1 px) is within the tolerance
    assert problems[0].startswith("annotation id 3 (image id 1): box reaches 300.0 px outside")
    assert problems[1].startswith("annotation id 4 (image id 1): box reaches 50.0 px outside")
    assert "the 30x20 image" in problems[0] and "bbox=[10, 5, 320, 10]" in problems[0]


def test_training_log_names_the_first_few(tmp_path, caplog) -> None:
    ann = _coco(tmp_path, n_far=9)
    with caplog.at_level(logging.INFO, logger="resdet"):
        records, _ = load_coco_json(ann, str(tmp_path / "img"))
    assert len(records[0].boxes) == 11  # nothing dropped: clipped, as before
    assert records[0].boxes[:, [0, 2]].max() <= 30 and records[0].boxes[:, [1, 3]].max() <= 20
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    text = warning[0]
    assert (
        f"clipped 10 boxes that extend past their image; 9 reach more than {FAR_OUTSIDE_PX:g}"
        in text
    )
    assert "annotation id 3 (image id 1): box reaches 300.0 px" in text
    assert "annotation id 4 (image id 1)" in text and "... and 4 more" in text


def _voc_root(tmp_path, objects: str) -> str:
    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    xml = (
        "<annotation><size><width>50</width><height>40</height><depth>3</depth></size>"
        + objects
        + "</annotation>"
    )
    (root / "Annotations" / "000001.xml").write_text(xml)
    (root / "ImageSets" / "Main" / "val.txt").write_text("000001\n")
    return str(root)


def _obj(box) -> str:
    x1, y1, x2, y2 = box
    return (
        f"<object><name>dog</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
    )


def test_voc_far_outside_is_named(tmp_path, caplog) -> None:
    root = _voc_root(tmp_path, _obj((1, 1, 51, 40)) + _obj((5, 5, 150, 30)))
    with collect_problems() as found, caplog.at_level(logging.WARNING, logger="resdet"):
        records, _ = load_voc(root, "2007", "val")
    assert len(records[0].boxes) == 2 and records[0].boxes[:, 2].max() == 50
    assert len(found) == 1 and found[0][0].endswith("000001.xml")
    assert found[0][1].startswith("object 1: box reaches 100.0 px outside the 50x40 image")
    assert "object 1: box reaches 100.0 px" in caplog.text


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_voc_non_finite_coordinates(tmp_path, value) -> None:
    root = _voc_root(tmp_path, _obj((1, 1, value, 30)))
    with pytest.raises(DatasetError, match="000001.xml: object 0: <bndbox/xmax> is not a finite"):
        load_voc(root, "2007", "val")
