"""tools/check_dataset.py: a full check that lists every problem and never crashes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from tool_loader import load_tool

from resdet.data.check import check_detection_dataset, check_records, format_report
from resdet.data.records import DetectionRecord
from resdet.utils.logging import close_logging

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def main():
    mod = load_tool("check_dataset")
    level = logging.getLogger("resdet").level
    yield mod.main
    close_logging()  # the tool configures logging for its process; restore the test session's
    logging.getLogger("resdet").setLevel(level)


def _img(path: Path, h: int = 20, w: int = 30) -> None:
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _broken_dataset(root: Path) -> Path:
    """A COCO dataset with one of every problem, plus odd-but-fine images and notes."""
    (root / "img").mkdir(parents=True)
    images = {}  # file -> (h, w) as annotated

    def add(name: str, h: int = 20, w: int = 30) -> None:
        images[name] = (h, w)

    for name in ("good.png", "empty.png", "crowd.png"):
        _img(root / "img" / name)
        add(name)
    # Odd but fine: greyscale, RGBA, 16-bit, EXIF-rotated whose annotation uses the shown size.
    Image.new("L", (30, 20), 50).save(root / "img" / "grey.png")
    Image.new("RGBA", (30, 20), (1, 2, 3, 4)).save(root / "img" / "rgba.png")
    cv2.imwrite(str(root / "img" / "deep.png"), np.full((20, 30), 4000, np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "img" / "rot_ok.jpg", exif=exif)
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "img" / "rot_bad.jpg", exif=exif)
    for name in ("grey.png", "rgba.png", "deep.png"):
        add(name)
    add("rot_ok.jpg", 30, 20)
    add("rot_bad.jpg", 20, 30)  # raw size: wrong once the orientation is applied
    (root / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    noise = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", noise)[1].tobytes()
    (root / "img" / "truncated.jpg").write_bytes(data[: len(data) * 2 // 3])  # download cut
    _img(root / "img" / "resized.png", 10, 15)
    for name in ("corrupt.jpg", "truncated.jpg", "missing.jpg", "resized.png"):
        add(name)

    ids = {name: i + 1 for i, name in enumerate(images)}
    anns = []

    def ann(name: str, bbox, cat: int = 1, crowd: int = 0) -> None:
        anns.append({"id": len(anns) + 1, "image_id": ids[name], "category_id": cat,
                     "bbox": bbox, "iscrowd": crowd})  # fmt: skip

    for name in images:
        if name not in ("empty.png", "crowd.png"):
            ann(name, [2, 2, 8, 8])
    ann("crowd.png", [0, 0, 30, 20], crowd=1)
    ann("good.png", [5, 5, 0, 4])  # zero width
    ann("good.png", [5, 5, 4, -3])  # negative height
    ann("good.png", [40, 30, 5, 5])  # outside the 30x20 image
    ann("good.png", [1, 1, 4, 4], cat=77)  # unknown category
    data = {
        "images": [
            {"id": ids[n], "file_name": n, "height": h, "width": w} for n, (h, w) in images.items()
        ],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "ann.json").write_text(json.dumps(data))
    return root


def test_every_problem_is_listed_and_exit_code_is_1(tmp_path: Path, main, capsys) -> None:
    root = _broken_dataset(tmp_path / "ds")
    report_file = tmp_path / "report.json"
    argv = ["--coco-json", str(root / "ann.json"), "--image-root", str(root / "img")]
    rc = main([*argv, "--no-progress", "--workers", "2", "--json", str(report_file)])
    out = capsys.readouterr().out
    assert rc == 1

    ann_json = str(root / "ann.json")
    for expected in (
        f"{ann_json}: annotation id 12 (image id 1): box with zero/negative size",
        f"{ann_json}: annotation id 13 (image id 1): box with zero/negative size",
        f"{ann_json}: annotation id 14 (image id 1): box entirely outside the 30x20 image",
        f"{ann_json}: annotation id 15 (image id 1): unknown category_id 77",
    ):
        assert expected in out, out
    img = root / "img"
    assert f"{img / 'corrupt.jpg'}: cannot decode image" in out
    assert f"{img / 'truncated.jpg'}: cannot decode image (corrupt, truncated" in out
    assert f"{img / 'missing.jpg'}: image file not found" in out
    assert (
        f"{img / 'resized.png'}: decoded size 10x15 (HxW) differs from the annotated 20x30" in out
    )
    assert f"{img / 'rot_bad.jpg'}: decoded size 30x20" in out and "EXIF orientation" in out
    for fine in ("good.png", "grey.png", "rgba.png", "deep.png", "rot_ok.jpg"):
        assert f"{img / fine}:" not in out, fine
    assert "images without objects" in out and str(img / "empty.png") in out
    assert "only crowd regions" in out and str(img / "crowd.png") in out
    assert "9 problem(s)" in out

    (report,) = json.loads(report_file.read_text())
    assert report["num_images"] == 12
    assert len(report["annotation_problems"]) == 4 and len(report["image_problems"]) == 5


def test_clean_dataset_by_config_exits_0(tmp_path: Path, main, capsys, monkeypatch) -> None:
    """--config checks DATASETS.TRAIN and TEST, resolved under $RESDET_DATASETS."""
    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path))
    shapes = tmp_path / "shapes"
    for split in ("train", "val"):
        (shapes / split).mkdir(parents=True)
        _img(shapes / split / "a.png")
    (shapes / "annotations").mkdir()
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    for split in ("train", "val"):
        (shapes / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("DATASETS: {TRAIN: [shapes_train], TEST: [shapes_val]}\n")
    assert main(["--config", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "== shapes_train" in out and "== shapes_val" in out
    assert "2 dataset(s) checked: no problems" in out

    # A dataset that cannot be loaded at all is a problem, not a crash.
    assert main(["--dataset", "shapes_voc_train", "--no-progress"]) == 1
    assert "cannot load: dataset 'shapes_voc_train': split file" in capsys.readouterr().out
    # A config file that does not exist: exit code 2.
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_image_folder_and_classification_config(tmp_path: Path, main, capsys) -> None:
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            _img(tmp_path / split / c / "1.png")
    (tmp_path / "val" / "b" / "2.jpg").write_bytes(b"junk")
    cfg = tmp_path / "cls.yaml"
    cfg.write_text(
        f"_BASE_: {REPO / 'configs/base/classification.yaml'}\n"
        f"DATASETS: {{CLS_TRAIN: {tmp_path / 'train'}, CLS_TEST: {tmp_path / 'val'}}}\n"
    )
    assert main(["--config", str(cfg), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'val' / 'b' / '2.jpg'}: cannot decode image" in out
    assert "image folder, 2 classes" in out and "1 problem(s)" in out
    assert main(["--image-folder", str(tmp_path / "train"), "--no-progress"]) == 0


def test_check_api_reports_without_raising(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    recs = [
        DetectionRecord(str(tmp_path / "a.png"), 1, 20, 30),
        DetectionRecord(str(tmp_path / "gone.png"), 2, 20, 30),
    ]
    (problem,) = check_records(recs, workers=1, progress=False)
    assert problem.source == str(tmp_path / "gone.png")
    assert problem.message == "image file not found [image id 2]"
    report = check_detection_dataset("no_such_dataset", progress=False)
    assert not report.ok and "unknown dataset 'no_such_dataset'" in report.fatal
    assert "1 problem(s)" in format_report([report])


def test_draw_writes_samples_and_label_stats(tmp_path: Path, main, capsys, monkeypatch) -> None:
    from resdet.data.shapes import generate_shapes

    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path / "data"))
    generate_shapes(str(tmp_path / "data" / "shapes"), num_train=2, num_val=3, crops=False,
                    progress=False)  # fmt: skip
    out = tmp_path / "look"
    args = ["--dataset", "shapes_val", "--no-progress", "--draw-dir", str(out)]
    assert main([*args, "--draw", "2"]) == 0
    assert "shapes_val: 3 pictures in" in capsys.readouterr().out
    files = sorted(p.name for p in (out / "shapes_val").iterdir())
    assert files == ["labels.png", "sample_000.jpg", "sample_001.jpg"]
    stats = cv2.imread(str(out / "shapes_val" / "labels.png"))
    assert stats is not None and stats.shape[0] > 400 and stats.shape[1] > 600
    # Boxes and names are drawn: a sample differs from every val image of its size.
    sample = cv2.imread(str(out / "shapes_val" / "sample_000.jpg")).astype(int)
    val_images = [cv2.imread(str(p)) for p in (tmp_path / "data" / "shapes" / "val").glob("*")]
    same_size = [im for im in val_images if im.shape == sample.shape]
    assert same_size and all(np.abs(im - sample).max() > 100 for im in same_size)

    # Asking for more than there are draws each readable image once; unreadable ones and
    # images of the wrong size are passed over (the check report lists them).
    root = _broken_dataset(tmp_path / "broken")
    argv = ["--coco-json", str(root / "ann.json"), "--image-root", str(root / "img")]
    assert main([*argv, "--no-progress", "--draw", "50", "--draw-dir", str(out)]) == 1
    drawn = list((out / "check_ann.json").glob("sample_*.jpg"))
    assert len(drawn) == 7  # good, empty, crowd, grey, rgba, deep, rot_ok
    assert (out / "check_ann.json" / "labels.png").is_file()
