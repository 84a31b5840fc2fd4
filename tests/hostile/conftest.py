"""Small generated hostile inputs shared by the tests of ``tests/hostile/``.

Every file is made here, in a few seconds, from nothing: decompression bombs (a genuine
30000x30000 1-bit PNG of ~110 kB and a JPEG whose header declares 30000x30000), broken
checkpoints (truncated, a pickle that would run code, not a checkpoint at all, another
architecture's shapes, another project's key names), a tiny shapes dataset and a tiny C4
detector config that trains two iterations in about a second.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pytest
import torch
from tool_loader import REPO, load_tool

from resdet.config import config_to_dict, load_config
from resdet.data.shapes import generate_shapes
from resdet.engine.checkpoint import save_checkpoint
from resdet.modeling.detection.build import build_detector
from resdet.utils.logging import close_logging

BOMB_SIDE = 30000
CONFIGS = os.path.join(REPO, "configs")

TINY_DET = """
MODEL:
  BACKBONE: {NAME: resnet, DEPTH: 18, WIDTH: 16}
  ANCHOR: {SIZES: [[16, 32, 64]]}
  RPN: {PRE_NMS_TOPK_TRAIN: 100, POST_NMS_TOPK_TRAIN: 50, PRE_NMS_TOPK_TEST: 100,
        POST_NMS_TOPK_TEST: 30, BATCH_SIZE_PER_IMAGE: 32}
  ROI_HEADS: {NUM_CLASSES: 7, BATCH_SIZE_PER_IMAGE: 16}
  DEVICE: cpu
INPUT: {MIN_SIZE_TRAIN: [64], MAX_SIZE_TRAIN: 100, MIN_SIZE_TEST: 64, MAX_SIZE_TEST: 100,
        SIZE_DIVISIBILITY: 16}
DATASETS: {TRAIN: [shapes_train], TEST: []}
DATALOADER: {NUM_WORKERS: 0}
SOLVER: {IMS_PER_BATCH: 2, MAX_ITER: 2, WARMUP_ITERS: 0, STEPS: [], CHECKPOINT_PERIOD: 1,
         MAX_TO_KEEP: 0, BASE_LR: 0.001}
LOG_PERIOD: 1
"""

TINY_CLS = """
_BASE_: {configs}/base/classification.yaml
MODEL:
  NUM_CLASSES: 8
  BACKBONE: {DEPTH: 18, WIDTH: 16}
  DEVICE: cpu
INPUT: {CROP_SIZE: 32, SCALE_RANGE: [32, 40], TEST_RESIZE: 36, AUGMENT: generic, PCA_STD: 0.0}
DATASETS: {CLS_TRAIN: "{crops}/train", CLS_TEST: "{crops}/val"}
DATALOADER: {NUM_WORKERS: 0}
SOLVER: {IMS_PER_BATCH: 4, MAX_ITER: 1, WARMUP_ITERS: 0, STEPS: [], CHECKPOINT_PERIOD: 1}
LOG_PERIOD: 1
"""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def write_png_bomb(path: str, side: int = BOMB_SIDE) -> None:
    """A valid 1-bit greyscale PNG of ``side`` x ``side`` black pixels (~110 kB, ~1 s)."""
    z = zlib.compressobj(9)
    rows = (b"\0" * (1 + (side + 7) // 8)) * 1000  # filter byte + packed bits, 1000 rows
    body = [z.compress(rows) for _ in range(side // 1000)] + [z.flush()]
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header))
        f.write(_png_chunk(b"IDAT", b"".join(body)) + _png_chunk(b"IEND", b""))


def write_jpeg_bomb(path: str, side: int = BOMB_SIDE) -> None:
    """A small real JPEG whose frame header (SOF0) is patched to declare ``side`` x ``side``."""
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.find(b"\xff\xc0")
    assert ok and sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)  # height, width
    with open(path, "wb") as f:
        f.write(bytes(data))


def write_bmp_bomb(path: str, side: int = BOMB_SIDE) -> None:
    """A 4x4 BMP whose header (BITMAPINFOHEADER width, height) is patched to ``side``."""
    ok, buf = cv2.imencode(".bmp", np.zeros((4, 4, 3), np.uint8))
    data = bytearray(buf.tobytes())
    assert ok and data[:2] == b"BM"
    data[18:26] = struct.pack("<ii", side, side)
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.fixture(scope="session")
def bombs(tmp_path_factory) -> Dict[str, str]:
    """kind -> path: a real PNG bomb, patched JPEG and BMP headers."""
    root = tmp_path_factory.mktemp("bombs")
    paths = {"png": str(root / "bomb.png"), "jpeg": str(root / "bomb.jpg"),
             "bmp": str(root / "bomb.bmp")}  # fmt: skip
    write_png_bomb(paths["png"])
    write_jpeg_bomb(paths["jpeg"])
    write_bmp_bomb(paths["bmp"])
    return paths


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> str:
    """``<root>/shapes``: 4 train and 2 val scenes, COCO + VOC + crops."""
    root = tmp_path_factory.mktemp("data")
    generate_shapes(
        str(root / "shapes"), num_train=4, num_val=2, crops=True, crop_size=32, progress=False
    )
    return str(root)


@pytest.fixture
def data_env(shapes_root, monkeypatch) -> str:
    monkeypatch.setenv("RESDET_DATASETS", shapes_root)
    return shapes_root


@pytest.fixture(scope="session")
def det_config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cfg") / "tiny_det.yaml"
    path.write_text(TINY_DET)
    return str(path)


@pytest.fixture(scope="session")
def cls_config(tmp_path_factory, shapes_root) -> str:
    path = tmp_path_factory.mktemp("cfg") / "tiny_cls.yaml"
    crops = os.path.join(shapes_root, "shapes", "crops")
    path.write_text(TINY_CLS.replace("{crops}", crops).replace("{configs}", CONFIGS))
    return str(path)


@pytest.fixture(scope="session")
def det_weights(tmp_path_factory, det_config) -> str:
    """A randomly initialised tiny detector checkpoint with its config (what infer needs)."""
    torch.manual_seed(0)
    cfg = load_config(det_config, ["DATASETS.TEST", "[shapes_val]"])
    path = str(tmp_path_factory.mktemp("weights") / "det.pth")
    save_checkpoint(
        path, {"model": build_detector(cfg).state_dict(), "config": config_to_dict(cfg)}
    )
    return path


class _RunsCode:
    """Pickles as a call of os.system: loading it with plain pickle would create ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="session")
def bad_checkpoints(tmp_path_factory, det_weights, det_config) -> Dict[str, str]:
    """kind -> path: truncated, runs_code, not_a_checkpoint, other_shapes, other_names.

    ``runs_code`` would create ``<dir>/PWNED`` if anything unpickled it unsafely.
    """
    root = tmp_path_factory.mktemp("bad_ckpt")
    data = open(det_weights, "rb").read()
    kinds = ("truncated", "runs_code", "not_a_checkpoint", "other_shapes", "other_names")
    paths = {k: str(root / f"{k}.pth") for k in kinds}
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    torch.save({"model": {"w": _RunsCode(str(root / "PWNED"))}}, paths["runs_code"])
    with open(paths["not_a_checkpoint"], "w") as f:
        f.write("this is a text file, not a checkpoint\n")
    # Same key names, other shapes: a detector for 3 classes with a wider trunk.
    cfg = load_config(
        det_config, ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.BACKBONE.WIDTH", "32"]
    )
    save_checkpoint(paths["other_shapes"], {"model": build_detector(cfg).state_dict()})
    save_checkpoint(paths["other_names"], {"model": {"features.0.weight": torch.zeros(8, 3, 3, 3)}})
    return paths


def run_tool(name: str, argv: List[str], capsys) -> Tuple[int, str]:
    """``tools/<name>.py`` in-process: (exit status, stderr). Exceptions propagate (a test
    that gets one has found a traceback where an error line belongs)."""
    capsys.readouterr()
    level = logging.getLogger("resdet").level
    try:
        rc = load_tool(name).main(argv)
    finally:  # tools configure logging for their process; give the test session its own back
        close_logging()
        logging.getLogger("resdet").setLevel(level)
    return rc, capsys.readouterr().err


def error_line(err: str, *needles: str) -> str:
    """The one ``error:`` line of ``err``; checks there is exactly one, no traceback, and
    that it contains every needle."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
