"""resdet.data.yolo: Ultralytics data.yaml + images/ + labels/ → records, and its errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from custom_data import make_yolo, write_image
from PIL import Image

from resdet.data.image_io import read_image
from resdet.data.problems import collect_problems
from resdet.data.records import DatasetError
from resdet.data.yolo import image_size, label_path, load_yolo, read_data_yaml

W, H = 64, 48  # every test image is 64 wide and 48 high unless said otherwise


def _one_image(tmp_path: Path, lines, names=("cat", "dog", "bird")) -> str:
    return make_yolo(str(tmp_path), {"train": {"a.jpg": (W, H, lines)}}, list(names))


def test_folder_layout_gives_absolute_xyxy_pixels_in_path_order(tmp_path: Path) -> None:
    yaml_file = make_yolo(
        str(tmp_path),
        {
            "train": {
                "b.png": (W, H, ["0 0.5 0.5 0.25 0.5", "2 0.125 0.25 0.25 0.5"]),
                "a.jpg": (100, 50, ["1 0.3 0.6 0.2 0.4"]),
                "c.jpg": (W, H, None),  # no label file: an image without objects
                "d.jpg": (W, H, []),  # an empty label file: the same
            },
            "val": {"e.jpg": (W, H, ["1 0.5 0.5 1 1"])},
        },
        {0: "cat", 1: "dog", 2: "bird"},  # names as a mapping
    )
    records, meta = load_yolo(yaml_file, "train")
    assert meta.class_names == ["cat", "dog", "bird"] and meta.evaluator == "coco"
    assert meta.category_ids == [1, 2, 3] and meta.name == f"{tmp_path.name}_train"
    assert [os.path.basename(r.file_name) for r in records] == ["a.jpg", "b.png", "c.jpg", "d.jpg"]
    assert [r.image_id for r in records] == [0, 1, 2, 3]
    a, b, c, d = records
    assert (a.width, a.height) == (100, 50) and (b.width, b.height) == (W, H)
    # a: cx 0.3 cy 0.6 w 0.2 h 0.4 of 100x50 → x 20..40, y 20..40
    np.testing.assert_allclose(a.boxes, [[20, 20, 40, 40]], atol=1e-4)
    np.testing.assert_array_equal(a.labels, [1])
    # b: (0.5 ± 0.125) * 64 = 24..40, (0.5 ± 0.25) * 48 = 12..36; (0 .. 0.25)*64, (0 .. 0.5)*48
    np.testing.assert_allclose(b.boxes, [[24, 12, 40, 36], [0, 0, 16, 24]], atol=1e-4)
    np.testing.assert_array_equal(b.labels, [0, 2])
    assert len(c.boxes) == len(d.boxes) == 0 and c.boxes.shape == (0, 4)
    (e,), _ = load_yolo(yaml_file, "val")
    np.testing.assert_allclose(e.boxes, [[0, 0, W, H]], atol=1e-4)


def test_txt_lists_roboflow_paths_nc_and_polygons(tmp_path: Path) -> None:
    root = tmp_path / "export"
    write_image(str(root / "train" / "images" / "x.jpg"), W, H)
    write_image(str(root / "valid" / "images" / "y.jpg"), W, H)
    (root / "train" / "labels").mkdir(parents=True)
    # A segmentation polygon (4 points) counts as its bounding box.
    (root / "train" / "labels" / "x.txt").write_text("0 0.25 0.25 0.75 0.25 0.75 0.5 0.25 0.5\n")
    (root / "lists").mkdir()
    (root / "lists" / "val.txt").write_text("../valid/images/y.jpg\n\n")
    # Roboflow writes '../train/images' beside a data.yaml in the export's root.
    (root / "data.yaml").write_text("train: ../train/images\nval: lists/val.txt\nnc: 2\n")
    data = read_data_yaml(str(root / "data.yaml"))
    assert data.class_names == ["class_0", "class_1"]
    assert data.splits["train"] == [str(root / "train" / "images")]
    (x,), _ = load_yolo(str(root / "data.yaml"), "train")
    np.testing.assert_allclose(x.boxes, [[16, 12, 48, 24]], atol=1e-4)
    (y,), _ = load_yolo(str(root / "data.yaml"), "val")
    assert y.file_name == str(root / "valid" / "images" / "y.jpg") and len(y.boxes) == 0


def test_label_path_swaps_the_last_images_folder() -> None:
    p = os.path.join("d", "images", "x", "images", "train", "a.b.jpg")
    assert label_path(p) == os.path.join("d", "images", "x", "labels", "train", "a.b.txt")


def test_size_from_header_follows_exif_rotation(tmp_path: Path) -> None:
    path = str(tmp_path / "rotated.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path, exif=exif)
    assert image_size(path) == (40, 30)  # (height, width) upright
    assert read_image(path).shape[:2] == (40, 30)


def test_coordinates_within_tolerance_are_clipped(tmp_path: Path) -> None:
    yaml_file = _one_image(tmp_path, ["0 0.9 0.5 0.21 0.5"])  # x2 = 1.005
    (rec,), _ = load_yolo(yaml_file, "train")
    np.testing.assert_allclose(rec.boxes, [[(0.9 - 0.105) * W, 12, W, 36]], atol=1e-3)


@pytest.mark.parametrize(
    "line, problem",
    [
        ("0 0.5 0.5 0.2", "expected 5 fields 'class cx cy w h'"),
        ("0 0.5 0.5 0.2 0.2 0.1", "got 6"),
        ("0 0.5 abc 0.2 0.2", "not a number: 'abc'"),
        ("0 0.5 nan 0.2 0.2", "not a finite number"),
        ("1.5 0.5 0.5 0.2 0.2", "class index must be an integer, got '1.5'"),
        ("3 0.5 0.5 0.2 0.2", "class index 3 out of range: data.yaml names 3 classes (0..2)"),
        ("-1 0.5 0.5 0.2 0.2", "class index -1 out of range"),
        ("0 0.5 0.5 0 0.2", "zero or negative box size w=0 h=0.2"),
        ("0 50 20 10 10", "coordinates outside 0-1"),
        ("0 0.95 0.5 0.2 0.2", "coordinates outside 0-1"),
    ],
)
def test_bad_lines_name_file_line_and_problem(tmp_path: Path, line: str, problem: str) -> None:
    yaml_file = _one_image(tmp_path, ["1 0.5 0.5 0.2 0.2", "", line])
    label = str(tmp_path / "labels" / "train" / "a.txt")
    with pytest.raises(DatasetError) as e:
        load_yolo(yaml_file, "train")
    assert str(e.value).startswith(f"{label}: line 3: ")
    assert problem in str(e.value)


def test_skip_mode_drops_and_lists_bad_lines_and_images(tmp_path: Path, caplog) -> None:
    yaml_file = make_yolo(
        str(tmp_path),
        {
            "train": {
                "a.jpg": (W, H, ["0 0.5 0.5 0.2 0.2", "7 0.5 0.5 0.2 0.2", "1 x 0.5 0.2 0.2"]),
                "b.jpg": (W, H, ["1 0.5 0.5 0.5 0.5"]),
                "c.jpg": (W, H, ["0 0.5 0.5 0.5 0.5"]),
            }
        },
        ["cat", "dog"],
    )
    broken = tmp_path / "images" / "train" / "b.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"a\.txt: line 2: class index 7 out of range"):
        load_yolo(yaml_file, "train")  # raise mode stops at the first problem
    with collect_problems() as found:
        records, _ = load_yolo(yaml_file, "train", on_error="skip")
    assert [os.path.basename(r.file_name) for r in records] == ["a.jpg", "c.jpg"]
    np.testing.assert_array_equal(records[0].labels, [0])
    label = str(tmp_path / "labels" / "train" / "a.txt")
    assert [src for src, _ in found] == [label, label, str(broken)]
    assert found[0][1].startswith("line 2: class index 7 out of range")
    assert found[1][1] == "line 3: not a number: 'x'"
    assert found[2][1].startswith("cannot read the image header")
    assert "skipped 2 bad label lines" in caplog.text and "skipped 1 images" in caplog.text


def test_missing_list_entries_split_and_yaml_problems(tmp_path: Path) -> None:
    write_image(str(tmp_path / "images" / "a.jpg"), W, H)
    (tmp_path / "train.txt").write_text("images/a.jpg\nimages/gone.jpg\n")
    (tmp_path / "data.yaml").write_text("train: train.txt\nnames: [cat]\n")
    yaml_file = str(tmp_path / "data.yaml")
    with pytest.raises(DatasetError, match=r"train\.txt: line 2: image file not found: .*gone"):
        load_yolo(yaml_file, "train")
    records, _ = load_yolo(yaml_file, "train", on_error="skip")
    assert len(records) == 1
    with pytest.raises(DatasetError, match=r"data\.yaml: no split 'val' \(it sets train\)"):
        load_yolo(yaml_file, "val")
    with pytest.raises(DatasetError, match="YOLO data.yaml not found"):
        load_yolo(str(tmp_path / "nope.yaml"), "train")
    for text, message in [
        ("train: train.txt\n", "no 'names'"),
        ("train: train.txt\nnames: {0: a, 2: b}\n", "keys must be the class indices 0..1"),
        ("train: train.txt\nnames: [a, b]\nnc: 3\n", "'nc' is 3 but 'names' lists 2"),
        ("- a\n", "expected a mapping"),
    ]:
        (tmp_path / "data.yaml").write_text(text)
        with pytest.raises(DatasetError, match=message):
            load_yolo(yaml_file, "train")
    (tmp_path / "data.yaml").write_text("train: empty\nnames: [cat]\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="split 'train' has no images"):
        load_yolo(yaml_file, "train")
