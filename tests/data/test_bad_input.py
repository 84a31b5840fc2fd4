"""Bad input end to end: odd image files, DATASETS.ON_ERROR through the catalog, unreadable
images at training time, position-seeded augmentation, and wrong paths / options that must
fail before any work is done.

The per-format loader checks (bad boxes, unknown ids, malformed json/xml) are in test_coco.py
and test_voc.py; safe unpickling in tests/utils/test_safe_pickle.py and test_cifar.py;
``weights_only`` checkpoints in tests/engine/test_checkpoint.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from tool_loader import load_tool

from resdet.config import ConfigError, load_config
from resdet.data.catalog import get_dataset, register_coco_instances, register_dataset
from resdet.data.det_dataset import DetectionDataset
from resdet.data.det_transforms import build_det_transforms
from resdet.data.image_io import read_image
from resdet.data.loader import build_detection_loader
from resdet.data.records import DatasetError, DatasetMeta, DetectionRecord
from resdet.engine.detection import load_detection_data
from resdet.engine.dist import check_sync_bn

REPO = Path(__file__).resolve().parents[2]


def _png(path: Path, h: int = 24, w: int = 32, seed: int = 0) -> str:
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return str(path)


def _cut_jpeg() -> bytes:
    """The first 2/3 of a JPEG, as left by an interrupted download."""
    noise = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", noise)[1].tobytes()
    return data[: len(data) * 2 // 3]


# ----------------------------------------------------------------------------- image files


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    img16 = np.zeros((4, 5), np.uint16)
    img16[0, 0], img16[1, 1], img16[2, 2] = 65535, 100 * 256, 255  # 255 is dark in 16 bits
    cv2.imwrite(str(tmp_path / "a.png"), img16)
    out = read_image(str(tmp_path / "a.png"))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [255] * 3 and out[1, 1].tolist() == [100] * 3
    assert out[2, 2].tolist() == [0] * 3


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 20 (h) x 40 (w) with orientation 6 ("rotate 90 CW to display"): shown 40 x 20.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red as stored -> top half after rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(str(tmp_path / "r.jpg"))
    assert out.shape == (40, 20, 3)
    assert out[5, 10, 0] > 200 and out[35, 10, 0] < 50


def test_rgba_palette_and_grey_arrive_as_rgb(tmp_path: Path) -> None:
    Image.new("RGBA", (6, 4), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    Image.new("P", (6, 4), 0).save(tmp_path / "p.png")
    Image.new("L", (6, 4), 77).save(tmp_path / "l.jpg")
    assert read_image(str(tmp_path / "rgba.png"))[0, 0].tolist() == [10, 20, 30]
    assert read_image(str(tmp_path / "p.png")).shape == (4, 6, 3)
    grey = read_image(str(tmp_path / "l.jpg"))
    assert grey.shape == (4, 6, 3) and abs(int(grey[0, 0, 0]) - 77) <= 1


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "not found"),
        (b"", "empty"),
        (b"this is not an image at all", "cannot decode image"),
        # opencv 4.x refuses a cut JPEG outright; read_image also catches the older behaviour
        # (a grey-filled decode with a warning) by the missing end-of-image marker.
        (_cut_jpeg(), "cannot decode image .corrupt, truncated|image file is truncated"),
    ],
)
def test_unreadable_files_name_the_file_and_the_problem(tmp_path: Path, content, expected):
    path = tmp_path / "img.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=expected) as info:
        read_image(str(path))
    assert str(path) in str(info.value)


# ------------------------------------------------------------------ ON_ERROR via the catalog


def _coco_with_bad_box(tmp_path: Path) -> str:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 24, "width": 32}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [4, 4, 0, 5]},  # zero width
            {"id": 3, "image_id": 1, "category_id": 9, "bbox": [4, 4, 5, 5]},  # unknown id
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_on_error_reaches_registered_coco_loader(tmp_path: Path, caplog) -> None:
    register_coco_instances("bad_input_coco", _coco_with_bad_box(tmp_path), str(tmp_path))
    with pytest.raises(DatasetError, match=r"ann\.json: annotation id 2 .*zero/negative size"):
        get_dataset("bad_input_coco")  # the registered default: raise
    with caplog.at_level(logging.WARNING, logger="resdet"):
        records, _ = get_dataset("bad_input_coco", on_error="skip")
    assert len(records[0].boxes) == 1
    assert "skipped 2 bad" in caplog.text and "unknown category_id 9" in caplog.text
    with pytest.raises(ValueError, match="on_error"):
        get_dataset("bad_input_coco", on_error="ignore")


def test_loader_without_on_error_parameter_still_loads() -> None:
    rec = DetectionRecord("x.png", 1, 4, 4, boxes=[[0, 0, 2, 2]], labels=[0])
    register_dataset("bad_input_plain", lambda: ([rec], DatasetMeta("p", ["a"])), overwrite=True)
    records, _ = get_dataset("bad_input_plain", on_error="skip")
    assert records == [rec]


def test_config_on_error_reaches_standard_voc_style_loader(tmp_path: Path, monkeypatch) -> None:
    """shapes_voc_train (VOC xml under $RESDET_DATASETS/shapes) with one bad object."""
    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path))
    voc = tmp_path / "shapes" / "VOC"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    obj = "<object><name>{}</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>{}</xmax>"
    obj += "<ymax>9</ymax></bndbox></object>"
    (voc / "Annotations" / "a.xml").write_text(
        "<annotation><size><width>20</width><height>10</height></size>"
        + obj.format("circle", 9)
        + obj.format("circle", 1)  # xmax < xmin
        + "</annotation>"
    )
    cfg = load_config(None, ["MODEL.ROI_HEADS.NUM_CLASSES", "7", "DATASETS.ON_ERROR", "raise"])
    with pytest.raises(DatasetError, match=r"a\.xml: object 1: bad box"):
        load_detection_data(["shapes_voc_train"], cfg, train=True)
    cfg.DATASETS.ON_ERROR = "skip"
    records, _ = load_detection_data(["shapes_voc_train"], cfg, train=True)
    assert len(records) == 1 and len(records[0].boxes) == 1


# ------------------------------------------------------------ unreadable images at run time


@pytest.fixture()
def three_records(tmp_path: Path):
    """Records 0 and 2 are fine; record 1's file is corrupt."""
    recs = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        _png(path, seed=i)
        recs.append(DetectionRecord(str(path), 10 + i, 24, 32, [[1, 1, 9, 9]], [0]))
    (tmp_path / "1.png").write_bytes(b"\x89PNG garbage")
    return recs


def test_runtime_unreadable_image_raise_names_file_and_record(three_records) -> None:
    ds = DetectionDataset(three_records)
    assert ds[0]["image_id"] == 10
    with pytest.raises(DatasetError) as info:
        ds[1]
    msg = str(info.value)
    assert three_records[1].file_name in msg and "record 1, image id 11" in msg
    assert "ON_ERROR skip" in msg and "check_dataset.py" in msg


def test_runtime_unreadable_image_skip_substitutes_counts_and_logs_once(
    three_records, caplog
) -> None:
    ds = DetectionDataset(three_records, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="resdet.data.det_dataset"):
        a, b = ds[1], ds[1]
    assert a["image_id"] == b["image_id"] == 12  # the next readable record
    assert torch.equal(a["image"], ds[2]["image"])
    assert ds.num_unreadable == 2
    warnings = [r for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(warnings) == 1 and three_records[1].file_name in warnings[0].getMessage()


def test_runtime_unreadable_image_blank_keeps_the_image_id(three_records) -> None:
    item = DetectionDataset(three_records, on_error="blank")[1]
    assert item["image_id"] == 11 and tuple(item["image"].shape) == (3, 24, 32)
    assert int(item["image"].min()) == int(item["image"].max()) == 128


def test_runtime_every_image_unreadable_is_an_error(three_records) -> None:
    for r in three_records:
        Path(r.file_name).unlink()
    with pytest.raises(DatasetError, match="none of the 3 images could be read"):
        DetectionDataset(three_records, on_error="skip")[0]
    with pytest.raises(ValueError, match="on_error"):
        DetectionDataset(three_records, on_error="ignore")


def test_size_mismatch_with_swapped_sides_hints_at_exif(tmp_path: Path) -> None:
    rec = DetectionRecord(_png(tmp_path / "a.png", h=24, w=32), 1, 32, 24)
    with pytest.raises(DatasetError, match="swapped.*EXIF orientation"):
        DetectionDataset([rec])[0]


def test_classification_training_skips_unreadable_images_when_asked(tmp_path: Path, caplog):
    from resdet.data.cls_dataset import SeededAugment
    from resdet.data.cls_transforms import cifar_train_transform
    from resdet.data.imagefolder import ImageFolderDataset

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        _png(tmp_path / c / "1.png", 32, 32)
    (tmp_path / "a" / "2.png").write_bytes(b"junk")  # index 1 in the listing
    folder = ImageFolderDataset(str(tmp_path))
    tf = cifar_train_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with pytest.raises(DatasetError, match=r"2\.png: cannot decode.*index 1; DATASETS.ON_ERROR"):
        SeededAugment(folder, tf, 0)[(1, 0)]
    skipping = SeededAugment(folder, tf, 0, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="resdet"):
        image, label = skipping[(1, 0)]
    assert label == 1 and tuple(image.shape) == (3, 32, 32)  # index 2, class "b"
    assert "unreadable image skipped" in caplog.text and "2.png" in caplog.text


# -------------------------------------------------------------- position-seeded augmentation


def _images(loader, n: int):
    it = iter(loader)
    return [[x["image"] for x in next(it)] for _ in range(n)]


def test_training_augmentation_depends_on_stream_position_only(tmp_path: Path) -> None:
    """Flip and multi-scale choices: identical for 0 or 2 workers and after a resume."""
    recs = [
        DetectionRecord(_png(tmp_path / f"{i}.png", 24, 32, i), i, 24, 32, [[1, 1, 9, 9]], [0])
        for i in range(6)
    ]

    def loader(workers: int, start_iter: int = 0):
        tf = build_det_transforms([16, 20, 24], 64, 0.5, is_train=True)
        ds = DetectionDataset(recs, tf, seed=5)
        return build_detection_loader(
            ds, 2, workers, shuffle=True, seed=1, infinite=True, start_iter=start_iter
        )

    base = _images(loader(0), 6)
    flat = [im for batch in base for im in batch]
    assert len({tuple(im.shape) for im in flat}) > 1  # the sizes do vary
    # Flips vary with the position too: one record seen at 8 positions, in 2 versions.
    one = DetectionDataset(recs[:1], build_det_transforms([24], 64, 0.5, is_train=True), seed=5)
    views = [one[(0, p)]["image"] for p in range(8)]
    flipped = [torch.equal(v, views[0].flip(-1)) for v in views]
    assert any(flipped) and not all(flipped)
    assert all(f or torch.equal(v, views[0]) for v, f in zip(views, flipped))

    def same(xs, ys) -> bool:
        a = [im for batch in xs for im in batch]
        b = [im for batch in ys for im in batch]
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))

    assert same(_images(loader(2), 6), base)
    assert same(_images(loader(0, start_iter=3), 3), base[3:])


# ---------------------------------------------------------------- wrong paths and options


def _train_det_main():
    return load_tool("train_det").main


def test_wrong_paths_fail_first_with_the_option_and_path(tmp_path: Path, capsys) -> None:
    main = _train_det_main()
    out = ["OUTPUT_DIR", str(tmp_path / "out")]
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in capsys.readouterr().err

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"_BASE_: {REPO / 'configs/base/fpn.yaml'}\nSOLVER: {{BASE_LRR: 0.1}}\n")
    assert main(["--config", str(cfg), *out]) == 2
    assert "unknown config key 'SOLVER.BASE_LRR'; did you mean 'BASE_LR'" in capsys.readouterr().err

    cfg.write_text(f"_BASE_: {REPO / 'configs/base/fpn.yaml'}\nDATASETS: {{TRAIN: [nope]}}\n")
    # The weights path is checked before the (possibly slow) dataset loading.
    assert main(["--config", str(cfg), "MODEL.WEIGHTS", "missing.pth", *out]) == 2
    assert "MODEL.WEIGHTS: checkpoint file not found: missing.pth" in capsys.readouterr().err
    assert main(["--config", str(cfg), "MODEL.DEVICE", "cpu", *out]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert main(["--config", str(cfg), "DATASETS.ON_ERROR", "ignore", *out]) == 2
    assert "DATASETS.ON_ERROR must be 'raise' or 'skip'" in capsys.readouterr().err
    assert main(["--config", str(cfg), "DATALOADER.CACHE_MB", "-1", *out]) == 2
    assert "DATALOADER.CACHE_MB must be >= 0 (0: off), got -1" in capsys.readouterr().err


def test_dataset_root_typo_names_the_expected_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path / "datsets"))
    with pytest.raises(DatasetError, match=r"datsets/VOCdevkit/VOC2007 .*datasets/README\.md"):
        get_dataset("voc_2007_test")


def test_syncbn_with_several_cpu_processes_is_refused_up_front() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4))
    check_sync_bn(model, torch.device("cpu"), 1)  # one process: plain BN, fine
    with pytest.raises(ConfigError, match="SyncBN needs GPUs.*BN.*FrozenBN"):
        check_sync_bn(model, torch.device("cpu"), 2)
    check_sync_bn(nn.Sequential(nn.BatchNorm2d(4)), torch.device("cpu"), 2)
