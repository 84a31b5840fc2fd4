"""COCO json loader: conversion, contiguous labels, validation errors, skip mode."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from resdet.data.coco import filter_empty, load_coco_json
from resdet.data.records import DatasetError, DetectionRecord


def _coco() -> Dict[str, Any]:
    """Two categories with unsorted, sparse ids; one image with boxes, one empty."""
    return {
        "images": [
            {"id": 5, "file_name": "a.jpg", "height": 40, "width": 60},
            {"id": 2, "file_name": "sub/b.jpg", "height": 30, "width": 30},
        ],
        "annotations": [
            {"id": 11, "image_id": 5, "category_id": 7, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 12, "image_id": 5, "category_id": 3, "bbox": [0, 0, 60, 40], "iscrowd": 1},
            # Spills past the right/bottom border: clipped to the image.
            {"id": 13, "image_id": 5, "category_id": 3, "bbox": [50, 30, 20, 20], "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


def _write(tmp_path: Path, data: Any, name: str = "inst.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_load_converts_boxes_and_maps_categories(tmp_path: Path, capsys) -> None:
    json_file = _write(tmp_path, _coco())
    records, meta = load_coco_json(json_file, "/imgs", name="toy")
    # pycocotools prints "loading annotations..." etc.; library code must stay quiet.
    assert capsys.readouterr().out == ""

    assert meta.name == "toy" and meta.evaluator == "coco" and meta.json_file == json_file
    assert meta.class_names == ["cat", "dog"]  # sorted by category id 3 < 7
    assert meta.category_ids == [3, 7]

    assert [r.image_id for r in records] == [2, 5]
    empty, full = records
    assert empty.file_name == "/imgs/sub/b.jpg" and (empty.height, empty.width) == (30, 30)
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)

    np.testing.assert_allclose(
        full.boxes, [[10, 5, 30, 15], [0, 0, 60, 40], [50, 30, 60, 40]], atol=1e-6
    )
    assert full.boxes.dtype == np.float32
    assert full.labels.tolist() == [1, 0, 0]
    assert full.iscrowd.tolist() == [False, True, False]
    assert full.difficult.tolist() == [False, False, False]


def test_default_name_is_json_stem(tmp_path: Path) -> None:
    _, meta = load_coco_json(_write(tmp_path, _coco(), "instances_val.json"), "")
    assert meta.name == "instances_val"


def test_filter_empty_drops_images_without_non_crowd_boxes(caplog) -> None:
    crowd_only = DetectionRecord("c.jpg", 3, 10, 10, [[0, 0, 5, 5]], [0], iscrowd=[True])
    normal = DetectionRecord("n.jpg", 4, 10, 10, [[0, 0, 5, 5]], [0])
    empty = DetectionRecord("e.jpg", 5, 10, 10)
    with caplog.at_level(logging.INFO, logger="resdet.data.coco"):
        kept = filter_empty([crowd_only, normal, empty])
    assert [r.image_id for r in kept] == [4]
    assert "dropped 2 of 3" in caplog.text


def _mutate(fn):
    data = _coco()
    fn(data)
    return data


@pytest.mark.parametrize(
    "data, expected",
    [
        ("{not json", "not valid JSON"),
        (_mutate(lambda d: d.pop("images")), "missing top-level key 'images'"),
        (_mutate(lambda d: d.pop("annotations")), "missing top-level key 'annotations'"),
        (_mutate(lambda d: d.pop("categories")), "missing top-level key 'categories'"),
        (
            _mutate(lambda d: d["annotations"][0].update(bbox=[10, 5, 0, 10])),
            "annotation id 11 (image id 5): box with zero/negative size",
        ),
        (
            _mutate(lambda d: d["annotations"][0].update(bbox=[10, 5, 4, -1])),
            "annotation id 11 (image id 5): box with zero/negative size",
        ),
        (
            _mutate(lambda d: d["annotations"][0].update(bbox=[100, 5, 4, 4])),
            "annotation id 11 (image id 5): box entirely outside the 60x40 image",
        ),
        (
            _mutate(lambda d: d["annotations"][0].update(category_id=99)),
            "annotation id 11 (image id 5): unknown category_id 99",
        ),
        (
            _mutate(lambda d: d["annotations"][0].update(image_id=404)),
            "annotation id 11 (image id 404): image id not found",
        ),
        (
            _mutate(lambda d: d["images"][0].pop("height")),
            "image id 5 (images[0]): missing key 'height'",
        ),
    ],
)
def test_bad_input_raises_naming_file_and_item(tmp_path: Path, data: Any, expected: str) -> None:
    json_file = _write(tmp_path, data)
    with pytest.raises(DatasetError) as info:
        load_coco_json(json_file, "")
    assert json_file in str(info.value)
    assert expected in str(info.value)


def test_missing_file_raises(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.json")
    with pytest.raises(DatasetError, match="nope.json: COCO annotation file not found"):
        load_coco_json(missing, "")


def test_skip_mode_drops_counts_and_lists_each(tmp_path: Path, caplog) -> None:
    data = _coco()
    data["annotations"][0]["bbox"] = [1, 1, 5, 0]  # zero height, like COCO ann 918
    data["annotations"].append(
        {"id": 14, "image_id": 5, "category_id": 42, "bbox": [1, 1, 2, 2], "iscrowd": 0}
    )
    data["images"].append({"id": 9, "file_name": "c.jpg", "width": 10})  # no height
    json_file = _write(tmp_path, data)
    with pytest.raises(DatasetError):
        load_coco_json(json_file, "")

    with caplog.at_level(logging.WARNING, logger="resdet.data.coco"):
        records, _ = load_coco_json(json_file, "", on_error="skip")
    assert [r.image_id for r in records] == [2, 5]
    assert len(records[1].boxes) == 2  # ids 12 and 13 survive; 11 and 14 dropped
    assert "skipped 3 bad" in caplog.text
    for fragment in ("annotation id 11", "annotation id 14", "image id 9"):
        assert fragment in caplog.text


def test_on_error_value_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_error"):
        load_coco_json(_write(tmp_path, _coco()), "", on_error="ignore")


def test_duplicate_ids_are_errors_not_silent_overwrites(tmp_path: Path) -> None:
    data = _coco()
    data["images"].append({"id": 5, "file_name": "dup.jpg", "height": 8, "width": 8})
    with pytest.raises(DatasetError, match=r"image id 5 \(images\[2\]\): duplicate image id"):
        load_coco_json(_write(tmp_path, data), "")
    data = _coco()
    data["annotations"].append(dict(data["annotations"][0]))
    with pytest.raises(DatasetError, match="annotation id 11 .*duplicate annotation id"):
        load_coco_json(_write(tmp_path, data), "")
