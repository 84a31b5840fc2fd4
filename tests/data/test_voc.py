"""VOC xml loader: 1-based → 0-based boxes, difficult flag, class override, errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import pytest

from resdet.data.records import DatasetError
from resdet.data.voc import VOC_CLASSES, load_voc

Obj = Tuple[str, Sequence[object], int]  # (name, (xmin, ymin, xmax, ymax), difficult)


def _xml(width: int, height: int, objects: List[Obj]) -> str:
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height>"]
    parts.append("<depth>3</depth></size>")
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            "</bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _voc(tmp_path: Path, files: dict, split: str = "trainval", ids: list | None = None) -> str:
    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for file_id, text in files.items():
        (root / "Annotations" / f"{file_id}.xml").write_text(text)
    listed = ids if ids is not None else list(files)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(listed) + "\n")
    return str(root)


def test_load_converts_boxes_and_keeps_difficult(tmp_path: Path) -> None:
    root = _voc(
        tmp_path,
        {
            "000005": _xml(50, 40, [("dog", (1, 1, 50, 40), 0), ("person", (11, 6, 20, 30), 1)]),
            "000007": _xml(30, 20, []),
        },
    )
    records, meta = load_voc(root, "2007", "trainval")
    assert meta.name == "voc_2007_trainval" and meta.evaluator == "voc"
    assert meta.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert meta.json_file is None

    a, b = records
    assert (a.image_id, b.image_id) == (0, 1)
    assert a.file_name == str(Path(root) / "JPEGImages" / "000005.jpg")
    assert (a.height, a.width) == (40, 50)
    # (xmin - 1, ymin - 1, xmax, ymax): the full-image box is [0, 0, W, H].
    np.testing.assert_array_equal(a.boxes, [[0, 0, 50, 40], [10, 5, 20, 30]])
    assert a.labels.tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert a.difficult.tolist() == [False, True]
    assert b.boxes.shape == (0, 4)


def test_class_names_override_and_clipping(tmp_path: Path) -> None:
    # A box spilling one pixel over the border (xmax = W + 1) is clipped, not rejected.
    root = _voc(tmp_path, {"s_0": _xml(64, 48, [("star", (0, 3, 65, 10), 0)])}, split="val")
    records, meta = load_voc(root, "x", "val", name="toy", class_names=("circle", "star"))
    assert meta.name == "toy" and meta.class_names == ["circle", "star"]
    assert records[0].labels.tolist() == [1]
    np.testing.assert_array_equal(records[0].boxes, [[0, 2, 64, 10]])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<annotation><size>", "malformed xml"),
        (_xml(50, 40, [("unicorn", (1, 1, 5, 5), 0)]), "object 0: unknown class name 'unicorn'"),
        (_xml(50, 40, [("dog", (10, 1, 5, 5), 0)]), "object 0: bad box"),
        (_xml(50, 40, [("dog", (1, 1, 5, "five"), 0)]), "object 0: <bndbox/ymax> is not a number"),
        (_xml(50, 40, [("dog", (60, 1, 70, 5), 0)]), "object 0: box"),
        ("<annotation><size><width>5</width></size></annotation>", "missing <size/height>"),
    ],
)
def test_bad_xml_raises_naming_file(tmp_path: Path, text: str, expected: str) -> None:
    root = _voc(tmp_path, {"000001": text})
    with pytest.raises(DatasetError) as info:
        load_voc(root, "2007", "trainval")
    assert str(Path(root) / "Annotations" / "000001.xml") in str(info.value)
    assert expected in str(info.value)


def test_missing_split_and_missing_xml(tmp_path: Path) -> None:
    root = _voc(tmp_path, {"000001": _xml(10, 10, [])}, ids=["000001", "000002"])
    with pytest.raises(DatasetError, match=r"test\.txt: VOC split file not found"):
        load_voc(root, "2007", "test")
    with pytest.raises(DatasetError, match=r"000002\.xml: annotation file not found"):
        load_voc(root, "2007", "trainval")


def test_skip_mode_drops_and_lists(tmp_path: Path, caplog) -> None:
    root = _voc(
        tmp_path,
        {
            "a": _xml(50, 40, [("dog", (1, 1, 9, 9), 0), ("unicorn", (1, 1, 5, 5), 0)]),
            "b": "<annotation>",
            "c": _xml(50, 40, [("cat", (3, 3, 2, 9), 0), ("cat", (2, 2, 9, 9), 0)]),
        },
    )
    with caplog.at_level(logging.WARNING, logger="resdet.data"):
        records, _ = load_voc(root, "2007", "trainval", on_error="skip")
    assert [len(r.boxes) for r in records] == [1, 1]
    assert [r.file_name.endswith(f"{i}.jpg") for r, i in zip(records, "ac")] == [True, True]
    assert "unknown class name 'unicorn'" in caplog.text
    assert "bad box" in caplog.text
    assert "skipped 1 images" in caplog.text and "b.xml: malformed xml" in caplog.text


def test_images_other_than_jpg_are_found_by_extension_or_filename(tmp_path: Path) -> None:
    box = [("dog", (2, 3, 9, 8), 0)]

    def named(name: str) -> str:
        return _xml(16, 12, box).replace("<size>", f"<filename>{name}</filename><size>", 1)

    root = _voc(tmp_path, {"a": _xml(16, 12, box), "b": named("scan_01.png"),
                           "c": named("stale.png"), "d": _xml(16, 12, box)})  # fmt: skip
    images = Path(root) / "JPEGImages"
    images.mkdir()
    for name in ("a.jpg", "scan_01.png", "c.Png", "stale.png"):  # d has no image at all
        (images / name).write_bytes(b"")
    records, _ = load_voc(root, "2007", "trainval")
    got = [Path(r.file_name).name for r in records]
    # VOC's own layout first, then <id> with another extension in any case (before a stale
    # <filename>), then the xml's <filename>; a missing image keeps the .jpg path VOC expects,
    # which the image check then names.
    assert got == ["a.jpg", "scan_01.png", "c.Png", "d.jpg"]
