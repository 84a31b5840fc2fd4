"""Dataset catalog: registration, unions, name suggestions, standard names under the root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resdet.data import catalog
from resdet.data.catalog import (
    datasets_root,
    get_dataset,
    list_datasets,
    register_coco_instances,
    register_dataset,
)
from resdet.data.records import DatasetError, DatasetMeta, DetectionRecord


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch):
    """Tests register names; keep them out of the process-wide registry."""
    monkeypatch.setattr(catalog, "_REGISTRY", dict(catalog._REGISTRY))


def _write_coco(path: Path, n_images: int, classes=("cat", "dog")) -> str:
    data = {
        "images": [
            {"id": i + 1, "file_name": f"{i}.jpg", "height": 20, "width": 30}
            for i in range(n_images)
        ],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0}
            for i in range(n_images)
        ],
        "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)],
    }
    path.write_text(json.dumps(data))
    return str(path)


def test_register_coco_instances_and_union(tmp_path: Path) -> None:
    register_coco_instances("toy_a", _write_coco(tmp_path / "a.json", 2), "/a")
    register_coco_instances("toy_b", _write_coco(tmp_path / "b.json", 3), "/b")
    records, meta = get_dataset("toy_a")
    assert len(records) == 2 and meta.name == "toy_a" and meta.json_file.endswith("a.json")

    records, meta = get_dataset("toy_a+toy_b")
    assert [r.file_name for r in records] == [
        "/a/0.jpg",
        "/a/1.jpg",
        "/b/0.jpg",
        "/b/1.jpg",
        "/b/2.jpg",
    ]
    assert meta.name == "toy_a+toy_b" and meta.class_names == ["cat", "dog"]
    assert meta.json_file is None  # no single json describes a union
    assert len(get_dataset(["toy_b", "toy_a"])[0]) == 5


def test_union_with_different_classes_is_an_error(tmp_path: Path) -> None:
    register_coco_instances("toy_a", _write_coco(tmp_path / "a.json", 1), "")
    register_coco_instances("toy_c", _write_coco(tmp_path / "c.json", 1, ("cat", "cow")), "")
    with pytest.raises(DatasetError, match="'toy_a' and 'toy_c': class_names differ"):
        get_dataset("toy_a+toy_c")


def test_register_dataset_function_and_duplicates() -> None:
    def load():
        return [DetectionRecord("x.jpg", 1, 4, 4)], DatasetMeta(name="", class_names=["a"])

    register_dataset("fn_ds", load)
    records, meta = get_dataset("fn_ds")
    assert meta.name == "fn_ds" and records[0].file_name == "x.jpg"
    assert "fn_ds" in list_datasets()
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("fn_ds", load)
    register_dataset("fn_ds", load, overwrite=True)
    with pytest.raises(ValueError, match="must not contain"):
        register_dataset("a+b", load)


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(DatasetError) as info:
        get_dataset("voc_2007_trainvl")
    message = str(info.value)
    assert "unknown dataset 'voc_2007_trainvl'" in message
    assert "did you mean voc_2007_trainval" in message


def test_standard_names_are_registered() -> None:
    names = list_datasets()
    for name in ("coco_2017_train", "coco_2017_val", "voc_2007_trainval", "voc_2007_test"):
        assert name in names
    assert "voc_2012_trainval" in names and names == sorted(names)


def test_datasets_root_env(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RESDET_DATASETS", raising=False)
    assert datasets_root() == "datasets"
    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path))
    assert datasets_root() == str(tmp_path)


def test_standard_missing_files_point_at_readme(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path))
    with pytest.raises(DatasetError) as info:
        get_dataset("coco_2017_val")
    expected = str(tmp_path / "coco" / "annotations" / "instances_val2017.json")
    assert expected in str(info.value) and "datasets/README.md" in str(info.value)
    with pytest.raises(DatasetError, match="VOC2012.*datasets/README.md"):
        get_dataset("voc_2012_trainval")


def test_standard_voc_resolves_under_root(monkeypatch, tmp_path: Path) -> None:
    # Resolved at load time: the env var may be set after import.
    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path))
    for year in ("2007", "2012"):
        root = tmp_path / "VOCdevkit" / f"VOC{year}"
        (root / "ImageSets" / "Main").mkdir(parents=True)
        (root / "Annotations").mkdir()
        (root / "ImageSets" / "Main" / "trainval.txt").write_text(f"{year}_1\n")
        (root / "Annotations" / f"{year}_1.xml").write_text(
            "<annotation><size><width>8</width><height>6</height></size><object><name>cat</name>"
            "<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>5</xmax><ymax>6</ymax></bndbox></object>"
            "</annotation>"
        )
    records, meta = get_dataset("voc_2007_trainval+voc_2012_trainval")
    assert meta.name == "voc_2007_trainval+voc_2012_trainval" and meta.evaluator == "voc"
    assert [Path(r.file_name).name for r in records] == ["2007_1.jpg", "2012_1.jpg"]
    assert records[0].boxes.tolist() == [[1.0, 1.0, 5.0, 6.0]]
