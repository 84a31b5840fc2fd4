"""A detector trained, evaluated and checked from a config that names its data without Python:
a YOLO folder for training, a VOC folder for testing, ``MODEL.ROI_HEADS.NUM_CLASSES 0``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from custom_data import make_yolo
from tool_loader import TINY_FPN, load_tool, run_tool

from resdet.data.coco import load_coco_json
from resdet.data.shapes import SHAPES_CLASSES, generate_shapes, shapes_paths
from resdet.engine.checkpoint import load_checkpoint
from resdet.predictor import Predictor
from resdet.utils.logging import close_logging

# As tests/tools/test_train_det.py's tiny run, with the class count left to the data.
TINY = """
_BASE_: {tiny}
MODEL:
  ROI_HEADS: {{NUM_CLASSES: 0}}
DATASETS:
  TEST:
    - voc root={voc} split=val classes={classes}
SOLVER: {{MAX_ITER: 4, WARMUP_ITERS: 2, STEPS: [3], CHECKPOINT_PERIOD: 4}}
LOG_PERIOD: 2
"""


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    """The shapes scenes as a YOLO folder (train) and a VOC folder (val); the config file
    (TEST in YAML) and the YOLO spec (given as a KEY VALUE override)."""
    root = tmp_path_factory.mktemp("data")
    generate_shapes(str(root / "shapes"), num_train=6, num_val=3, crops=False, progress=False)
    paths = shapes_paths(str(root / "shapes"))
    records, _ = load_coco_json(paths["train_json"], paths["train_images"])
    images = {}
    for r in records:  # labels in YOLO's normalised centre/size form
        (x1, y1, x2, y2), w, h = r.boxes.T, r.width, r.height
        cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        rows = zip(r.labels, cx, cy, bw, bh)
        lines = [f"{c} {a:.6f} {b:.6f} {d:.6f} {e:.6f}" for c, a, b, d, e in rows]
        images[os.path.basename(r.file_name)] = (w, h, lines)
    data_yaml = make_yolo(str(root / "yolo"), {"train": images}, list(SHAPES_CLASSES))
    # make_yolo writes noise images of the right size; use the scenes themselves.
    for r in records:
        os.replace(r.file_name, root / "yolo" / "images" / "train" / os.path.basename(r.file_name))
    classes = root / "classes.txt"
    classes.write_text("\n".join(SHAPES_CLASSES) + "\n")
    cfg = root / "custom.yaml"
    cfg.write_text(TINY.format(tiny=TINY_FPN, voc=paths["voc_root"],
                               classes=classes))  # fmt: skip
    image = str(root / "yolo" / "images" / "train" / os.path.basename(records[0].file_name))
    return {"cfg": str(cfg), "train": f"yolo data={data_yaml} split=train", "image": image}


def test_train_and_evaluate_with_the_class_count_from_the_data(custom, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["tools/train_det.py", "--config", custom["cfg"], "DATASETS.TRAIN", custom["train"]]
    r = run_tool([*args, "OUTPUT_DIR", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        "MODEL.ROI_HEADS.NUM_CLASSES 0: 7 classes from DATASETS.TRAIN"
        in (out / "log.txt").read_text()
    )
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 7
    assert saved["DATASETS"]["TRAIN"] == [custom["train"]]
    ckpt = load_checkpoint(str(out / "model_final.pth"))
    assert ckpt["config"]["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 7
    assert ckpt["extra"]["class_names"] == list(SHAPES_CLASSES)
    assert ckpt["extra"]["category_ids"] == list(range(1, 8))
    assert (out / "voc_metrics.json").is_file()

    # The checkpoint alone rebuilds the 7-class detector with the dataset's names; so does the
    # training config (NUM_CLASSES 0) with these weights.
    predictor = Predictor(None, str(out / "model_final.pth"), device="cpu")
    assert predictor.class_names == list(SHAPES_CLASSES)
    predictor = Predictor(custom["cfg"], str(out / "model_final.pth"), device="cpu")
    assert predictor.cfg.MODEL.ROI_HEADS.NUM_CLASSES == 7
    dets = predictor(custom["image"])
    assert dets.boxes.shape[1] == 4 and np.all(dets.labels < 7)

    # eval_det with NUM_CLASSES 0 takes the count from DATASETS.TEST.
    ev = tmp_path / "eval"
    args = ["--config", custom["cfg"], "--weights", str(out / "model_final.pth")]
    try:
        code = load_tool("eval_det").main([*args, "OUTPUT_DIR", str(ev)])
    finally:
        close_logging()
    assert code == 0
    assert "voc/mAP07" in (ev / "eval_results.json").read_text()
    saved = yaml.safe_load((ev / "config.yaml").read_text())
    assert saved["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 7


def test_a_count_that_disagrees_with_the_data_and_a_typo_are_clear_errors(
    custom, tmp_path: Path, capsys
) -> None:
    main = load_tool("train_det").main
    out = ["OUTPUT_DIR", str(tmp_path / "x")]
    try:
        code = main(["--config", custom["cfg"], "DATASETS.TRAIN", custom["train"],
                     "MODEL.ROI_HEADS.NUM_CLASSES", "5", "MODEL.DEVICE", "cpu", *out])  # fmt: skip
        assert code == 2
        err = capsys.readouterr().err
        assert "MODEL.ROI_HEADS.NUM_CLASSES is 5 but dataset" in err and "has 7 classes" in err
        code = main(["--config", custom["cfg"], "DATASETS.TRAIN",
                     custom["train"].replace("split=train", "split=vla"), *out])  # fmt: skip
        assert code == 2
        assert "DATASETS.TRAIN[0]: dataset 'yolo data=" in capsys.readouterr().err
    finally:
        close_logging()


def test_check_dataset_reads_source_specs_from_the_config(custom, tmp_path: Path, capsys):
    main = load_tool("check_dataset").main
    level = logging.getLogger("resdet").level
    try:
        assert main(["--config", custom["cfg"], "--no-progress", "--workers", "1",
                     "DATASETS.TRAIN", custom["train"]]) == 0  # fmt: skip
        report = capsys.readouterr().out
        assert f"== {custom['train']} (coco dataset, 7 classes) ==" in report
        assert "6 images" in report and "2 dataset(s) checked: no problems" in report

        bad = make_yolo(str(tmp_path / "bad"), {"val": {"a.jpg": (40, 30, [
            "0 0.5 0.5 0.2 0.2", "1 0.5 0.5 0.2", "9 0.5 0.5 0.2 0.2"])}}, ["x", "y"])  # fmt: skip
        assert main(["--dataset", f"yolo data={bad} split=val", "--no-progress"]) == 1
        report = capsys.readouterr().out
        label = tmp_path / "bad" / "labels" / "val" / "a.txt"
        assert f"{label}: line 2: expected 5 fields 'class cx cy w h'" in report
        assert f"{label}: line 3: class index 9 out of range" in report
        assert "1 images, 1 boxes" in report and "2 problem(s)" in report
    finally:
        close_logging()
        logging.getLogger("resdet").setLevel(level)
