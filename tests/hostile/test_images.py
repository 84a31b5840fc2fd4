"""Decompression bombs: refused from the header, before decoding, by every reader."""

from __future__ import annotations

import json
import os
import shutil
import time

import cv2
import numpy as np
import pytest
from conftest import BOMB_SIDE, error_line, run_tool

from resdet.config import load_config
from resdet.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    declared_size,
    get_max_image_pixels,
    read_image,
    set_max_image_pixels,
)
from resdet.data.records import DatasetError


@pytest.fixture(autouse=True)
def _restore_limit():
    before = get_max_image_pixels()
    yield
    set_max_image_pixels(before)


@pytest.mark.parametrize("kind", ["png", "jpeg", "bmp", "png named .jpg"])
def test_bomb_refused_before_decoding(bombs, kind, tmp_path) -> None:
    path = bombs[kind] if kind in bombs else str(tmp_path / "photo.jpg")
    if kind == "png named .jpg":  # the header decides, not the file name
        shutil.copy(bombs["png"], path)
    assert os.path.getsize(path) < 1_000_000  # small on disk...
    with open(path, "rb") as f:
        assert declared_size(f.read()) == (BOMB_SIDE, BOMB_SIDE)  # ...huge in its header
    start = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        read_image(path)
    assert time.perf_counter() - start < 2.0  # nothing of 900 megapixels was decoded
    message = str(info.value)
    assert message.startswith(path) and f"{BOMB_SIDE}x{BOMB_SIDE}" in message
    assert f"{DEFAULT_MAX_IMAGE_PIXELS:,}" in message and "MAX_IMAGE_PIXELS" in message


def test_limit_is_configurable(tmp_path) -> None:
    path = str(tmp_path / "genuine.png")
    cv2.imwrite(path, np.full((200, 300, 3), 127, np.uint8))
    with pytest.raises(DatasetError, match=r"300x200 = 60,000 pixels, over the limit of 50,000"):
        read_image(path, max_pixels=50_000)
    set_max_image_pixels(50_000)  # the process-wide setting the engine takes from the config
    with pytest.raises(DatasetError, match="over the limit"):
        read_image(path)
    set_max_image_pixels(0)  # 0: no limit
    assert read_image(path).shape == (200, 300, 3)
    assert load_config(None).INPUT.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=">= 0"):
        set_max_image_pixels(-1)


def _image_folder_with_bombs(root, bombs) -> str:
    folder = root / "folder" / "cls"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "fine.png"), np.zeros((20, 20, 3), np.uint8))
    for path in bombs.values():
        shutil.copy(path, folder / os.path.basename(path))
    return str(root / "folder")


def test_check_dataset_reports_bombs(tmp_path, bombs, capsys) -> None:
    folder = _image_folder_with_bombs(tmp_path, bombs)
    report = tmp_path / "report.json"
    tool = ["--image-folder", folder, "--no-progress", "--json", str(report)]
    rc, _ = run_tool("check_dataset", tool, capsys)
    out = json.loads(report.read_text())[0]
    assert rc == 1
    bad = {os.path.basename(p["source"]): p["message"] for p in out["image_problems"]}
    assert set(bad) == {"bomb.png", "bomb.jpg", "bomb.bmp"}
    assert all(f"{BOMB_SIDE}x{BOMB_SIDE}" in m and "decompression bomb" in m for m in bad.values())
    # --max-image-pixels 100: the genuine 20x20 image is over the limit as well.
    rc, _ = run_tool("check_dataset", [*tool, "--max-image-pixels", "100"], capsys)
    assert rc == 1 and len(json.loads(report.read_text())[0]["image_problems"]) == 4


def test_check_dataset_coco_bomb(tmp_path, bombs, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(bombs["png"], images / "a.png")
    ann = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    report = tmp_path / "report.json"
    argv = ["--coco-json", str(tmp_path / "ann.json"), "--image-root", str(images)]
    rc, _ = run_tool("check_dataset", [*argv, "--no-progress", "--json", str(report)], capsys)
    problems = json.loads(report.read_text())[0]["image_problems"]
    assert rc == 1 and len(problems) == 1
    assert problems[0]["source"].endswith("a.png")
    assert "declares 30000x30000" in problems[0]["message"]
    assert "image id 1" in problems[0]["message"]


def test_infer_skips_bombs(tmp_path, bombs, det_weights, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "fine.png"), np.zeros((60, 80, 3), np.uint8))
    for path in bombs.values():
        shutil.copy(path, folder / os.path.basename(path))
    out = tmp_path / "out"
    argv = ["--weights", det_weights, "--input", str(folder), "--output", str(out)]
    rc, err = run_tool("infer", [*argv, "--device", "cpu"], capsys)
    assert rc == 1 and "Traceback" not in err
    assert (out / "fine.png").is_file() and not (out / "bomb.png").exists()
    for name in ("bomb.png", "bomb.jpg", "bomb.bmp"):
        assert f"{name}: image declares {BOMB_SIDE}x{BOMB_SIDE}" in err


def test_training_stops_at_a_bomb(tmp_path, data_env, det_config, bombs, capsys) -> None:
    """A bomb among the training images: one error line naming it (DATASETS.ON_ERROR raise)."""
    train = os.path.join(data_env, "shapes", "train")
    victim = sorted(os.listdir(train))[0]
    backup = tmp_path / victim
    shutil.copy(os.path.join(train, victim), backup)
    try:
        shutil.copy(bombs["png"], os.path.join(train, victim))
        argv = ["--config", det_config, "OUTPUT_DIR", str(tmp_path / "run")]
        rc, err = run_tool("train_det", argv, capsys)
    finally:
        shutil.copy(backup, os.path.join(train, victim))
    assert rc == 2
    error_line(err, victim, f"{BOMB_SIDE}x{BOMB_SIDE}", "decompression bomb")
