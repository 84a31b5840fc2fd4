"""resdet.data.sources and the catalog: datasets named in a config by a one-line spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from custom_data import make_voc, make_yolo, write_image

from resdet.config import ConfigError, load_config
from resdet.data.catalog import (
    check_dataset_entries,
    dataset_class_names,
    display_name,
    get_dataset,
)
from resdet.data.records import DatasetError
from resdet.data.sources import parse_spec, split_union
from resdet.engine.detection import load_detection_data, resolve_num_classes
from resdet.predictor import resolve_class_names

NAMES = ["plane", "ship", "tank"]


@pytest.fixture()
def data(tmp_path: Path):
    """One dataset per format with known boxes; returns ``{format: spec}``."""
    yolo = make_yolo(
        str(tmp_path / "yolo"),
        {
            "train": {"a.jpg": (80, 40, ["2 0.5 0.5 0.5 0.5"])},
            "val": {"b.jpg": (80, 40, ["0 0.25 0.25 0.5 0.5"])},
        },
        NAMES,
    )
    voc = make_voc(
        str(tmp_path / "voc"),
        "trainval",
        {"img1": (60, 30, [("ship", 1, 1, 30, 15), ("tank", 11, 6, 60, 30)])},
        other_splits=["test"],
    )
    (tmp_path / "classes.txt").write_text("plane\nship\n\ntank\n")
    write_image(str(tmp_path / "coco" / "images" / "c.jpg"), 50, 40)
    coco = {
        "images": [{"id": 7, "file_name": "c.jpg", "width": 50, "height": 40}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 5, 20, 10]}],
        "categories": [{"id": 9, "name": "tank"}, {"id": 5, "name": "plane"}],
    }
    (tmp_path / "coco" / "ann.json").write_text(json.dumps(coco))
    return {
        "yolo": f"yolo data={yolo} split=train",
        "yolo_val": f"yolo data={yolo} split=val",
        "voc": f"voc root={voc} split=trainval classes={tmp_path / 'classes.txt'}",
        "voc_inline": f"voc root={voc} split=trainval classes=plane,ship,tank name=mine",
        "coco": f"coco json={tmp_path / 'coco' / 'ann.json'} images={tmp_path / 'coco' / 'images'}",
    }


def test_each_format_loads_its_boxes(data, tmp_path: Path) -> None:
    (rec,), meta = get_dataset(data["yolo"])
    assert meta.class_names == NAMES and meta.name == "yolo_train" and meta.evaluator == "coco"
    np.testing.assert_allclose(rec.boxes, [[20, 10, 60, 30]], atol=1e-4)  # 80x40, centre box
    np.testing.assert_array_equal(rec.labels, [2])

    for key in ("voc", "voc_inline"):
        (rec,), meta = get_dataset(data[key])
        assert meta.class_names == NAMES and meta.evaluator == "voc"
        # VOC's 1-based inclusive pixels → 0-based xyxy (xmin - 1, ymin - 1, xmax, ymax)
        np.testing.assert_allclose(rec.boxes, [[0, 0, 30, 15], [10, 5, 60, 30]])
        np.testing.assert_array_equal(rec.labels, [1, 2])
        assert rec.file_name == str(tmp_path / "voc" / "JPEGImages" / "img1.jpg")
    assert get_dataset(data["voc_inline"])[1].name == "mine"

    (rec,), meta = get_dataset(data["coco"])
    assert meta.class_names == ["plane", "tank"] and meta.category_ids == [5, 9]
    np.testing.assert_allclose(rec.boxes, [[10, 5, 30, 15]])
    np.testing.assert_array_equal(rec.labels, [0])
    assert meta.name == "ann" and rec.file_name == str(tmp_path / "coco" / "images" / "c.jpg")


def test_unions_of_specs_and_of_registered_names(data) -> None:
    records, meta = get_dataset(f"{data['yolo']} + {data['yolo_val']}")
    assert [len(r.boxes) for r in records] == [1, 1] and meta.name == "yolo_train+yolo_val"
    records, _ = get_dataset([data["yolo"], data["yolo_val"]])
    assert len(records) == 2
    with pytest.raises(DatasetError, match="cannot join datasets .* evaluator differ"):
        get_dataset([data["yolo"], data["voc_inline"]])
    assert split_union("shapes_train+shapes_val") == ["shapes_train", "shapes_val"]
    assert split_union("coco json='a+b/x.json' images=\"c+d\"+x") == [
        "coco json='a+b/x.json' images=\"c+d\"",
        "x",
    ]


def test_quoted_paths_with_spaces(tmp_path: Path) -> None:
    yaml_file = make_yolo(str(tmp_path / "my data"), {"val": {"a.jpg": (20, 20, [])}}, ["x"])
    (rec,), meta = get_dataset(f"yolo data='{yaml_file}' split=val")
    assert rec.file_name.endswith("a.jpg") and meta.name == "my_data_val"


def test_config_list_and_command_line_keep_the_spec_text(tmp_path: Path) -> None:
    spec = "yolo data=d/data.yaml split=val"
    cfg = load_config(None, ["DATASETS.TRAIN", spec, "DATASETS.TEST", f"[{spec}, shapes_val]"])
    assert cfg.DATASETS.TRAIN == [spec] and cfg.DATASETS.TEST == [spec, "shapes_val"]
    path = tmp_path / "c.yaml"
    path.write_text(f"DATASETS:\n  TRAIN:\n    - {spec}\n    - voc root='a b' split=test\n")
    assert load_config(str(path)).DATASETS.TRAIN == [spec, "voc root='a b' split=test"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ("yolo:d/data.yaml:val", "did you mean 'yolo data=PATH/data.yaml split=val'"),
        ("cooc json=a images=b", "'cooc' is not a dataset format"),
        ("yolo data=d.yaml splt=val", "unknown option 'splt' for yolo .*did you mean 'split'"),
        ("coco json=a.json", "missing images; expected e.g. 'coco json="),
        ("voc root=r split=test oops", "'oops' is not key=value"),
        ("voc root=r split=a split=b", "option 'split' given twice"),
        ("yolo data=", "option 'data' is empty"),
        ("yolo data='d.yaml", "No closing quotation"),
    ],
)
def test_spec_syntax_errors_name_the_entry(entry: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message) as e:
        parse_spec(entry)
    assert str(e.value).startswith(f"dataset {entry!r}: ")


def test_entries_are_checked_before_loading(data, tmp_path: Path) -> None:
    check_dataset_entries(["shapes_train", *data.values()], "DATASETS.TRAIN")  # all fine
    yolo_yaml = tmp_path / "yolo" / "data.yaml"
    voc = tmp_path / "voc"
    for entry, message in [
        ("shapes_trian", "unknown dataset 'shapes_trian'; did you mean"),
        (f"yolo data={yolo_yaml} split=test", r"sets no split 'test' \(it sets train, val\)"),
        (f"yolo data={tmp_path}/nope.yaml", "data: file not found: .*nope.yaml"),
        (f"voc root={voc} split=val", r"Main/val.txt not found \(splits there: test, trainval\)"),
        (f"voc root={voc} split=test classes=c.txt", "classes file not found: c.txt"),
        (f"voc root={voc} split=test classes=a,b,a", "class names repeated: a"),
        (f"coco json={tmp_path}/coco/ann.json images=imgs", "images: folder not found: imgs"),
        (f"shapes_train+yolo data={tmp_path}/x.yaml", "DATASETS.TRAIN\\[1\\]: dataset 'yolo"),
    ]:
        with pytest.raises(DatasetError, match=message) as e:
            check_dataset_entries(["shapes_train", entry], "DATASETS.TRAIN")
        assert str(e.value).startswith("DATASETS.TRAIN[1]: ")


def test_class_names_and_display_names_without_loading(data) -> None:
    assert dataset_class_names(data["yolo"]) == (NAMES, None)
    assert dataset_class_names(data["voc"]) == (NAMES, None)
    assert dataset_class_names(data["coco"]) == (["plane", "tank"], [5, 9])
    assert dataset_class_names("voc_2007_test")[0][0] == "aeroplane"  # no files needed
    assert display_name(data["voc_inline"]) == "mine"
    assert display_name(f"shapes_val+{data['yolo_val']}") == "shapes_val+yolo_val"


def test_num_classes_zero_takes_the_count_from_the_data(data) -> None:
    cfg = load_config(None, ["MODEL.ROI_HEADS.NUM_CLASSES", "0", "DATASETS.TRAIN", data["yolo"],
                             "DATASETS.TEST", data["coco"]])  # fmt: skip
    resolved = resolve_num_classes(cfg)
    assert resolved.MODEL.ROI_HEADS.NUM_CLASSES == 3 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 0
    assert resolve_num_classes(cfg, eval_only=True).MODEL.ROI_HEADS.NUM_CLASSES == 2
    records, meta = load_detection_data(resolved.DATASETS.TRAIN, resolved, train=True)
    assert len(records) == 1 and meta.class_names == NAMES
    # A given count is kept, and checked against the data.
    given = load_config(None, ["MODEL.ROI_HEADS.NUM_CLASSES", "5"])
    assert resolve_num_classes(given) is given
    with pytest.raises(ConfigError, match="NUM_CLASSES is 5 but dataset yolo_train has 3"):
        load_detection_data([data["yolo"]], given, train=True)
    empty = load_config(None, ["MODEL.ROI_HEADS.NUM_CLASSES", "0"])
    with pytest.raises(ConfigError, match="from DATASETS.TRAIN, which is empty"):
        resolve_num_classes(empty)


def test_predictor_class_names_from_a_spec(data) -> None:
    cfg = load_config(None, ["MODEL.ROI_HEADS.NUM_CLASSES", "2", "DATASETS.TEST", data["coco"]])
    assert resolve_class_names(cfg) == (["plane", "tank"], [5, 9])
    cfg = load_config(None, ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "DATASETS.TRAIN", data["voc"]])
    assert resolve_class_names(cfg) == (NAMES, None)
