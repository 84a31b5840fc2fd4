"""Broken and mismatched checkpoints given to every tool that loads one: one ``error:`` line
naming the file and what is wrong with it, exit status 2, and no code from the file run."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import error_line, run_tool

KINDS = ("truncated", "runs_code", "not_a_checkpoint", "other_shapes", "other_names")
# What the error line says for each kind (besides the file's name).
SAYS = {
    "truncated": "truncated",
    "runs_code": "asks to run code",
    "not_a_checkpoint": "not a complete torch.save file",
    "other_shapes": "shape mismatch",
    "other_names": "none of its 1 tensors has a name the model uses",
}


def _argv(entry, ckpt, det_config, cls_config, tmp_path):
    """(tool, argv) giving ``ckpt`` to the tool through ``entry``."""
    out = str(tmp_path / "out")
    det = ["--config", det_config, "OUTPUT_DIR", out]
    return {
        "train_det MODEL.WEIGHTS": ("train_det", [*det, "MODEL.WEIGHTS", ckpt]),
        "train_det MODEL.BACKBONE.PRETRAINED": (
            "train_det",
            [*det, "MODEL.BACKBONE.PRETRAINED", ckpt],
        ),
        "train_det --resume": ("train_det", [*det, "--resume"]),
        "eval_det --weights": ("eval_det", [*det, "DATASETS.TEST", "[shapes_val]",
                                            "--weights", ckpt]),
        "train_cls MODEL.WEIGHTS": ("train_cls", ["--config", cls_config, "OUTPUT_DIR", out,
                                                  "MODEL.WEIGHTS", ckpt]),
        "train_cls --eval-only --weights": ("train_cls", ["--config", cls_config, "--eval-only",
                                                          "--weights", ckpt, "OUTPUT_DIR", out]),
        "convert_weights": ("convert_weights", [ckpt, str(tmp_path / "converted.pth")]),
        "infer --weights": ("infer", ["--config", det_config, "--weights", ckpt, "--input",
                                      str(tmp_path / "in.png"), "--output", out, "--device", "cpu",
                                      "DATASETS.TEST", "[shapes_val]"]),
        "export --weights": ("export", ["--config", det_config, "--weights", ckpt, "--output",
                                        str(tmp_path / "exp"), "--format", "torchscript",
                                        "DATASETS.TEST", "[shapes_val]"]),
    }[entry]  # fmt: skip


ENTRIES = (
    "train_det MODEL.WEIGHTS",
    "train_det MODEL.BACKBONE.PRETRAINED",
    "train_det --resume",
    "eval_det --weights",
    "train_cls MODEL.WEIGHTS",
    "train_cls --eval-only --weights",
    "convert_weights",
    "infer --weights",
    "export --weights",
)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_bad_checkpoint(
    entry, kind, bad_checkpoints, det_config, cls_config, data_env, tmp_path, capsys
) -> None:
    ckpt = bad_checkpoints[kind]
    if entry == "infer --weights":
        shutil.copy(os.path.join(data_env, "shapes", "val", sorted(os.listdir(
            os.path.join(data_env, "shapes", "val")))[0]), tmp_path / "in.png")  # fmt: skip
    if entry == "train_det --resume":  # the newest checkpoint of the run is the broken one
        out = tmp_path / "out"
        out.mkdir()
        shutil.copy(ckpt, out / "model_0000001.pth")
        (out / "last_checkpoint").write_text("model_0000001.pth")
        ckpt = str(out / "model_0000001.pth")
    tool, argv = _argv(entry, ckpt, det_config, cls_config, tmp_path)
    rc, err = run_tool(tool, argv, capsys)
    assert rc == 2, err[-3000:]
    says = SAYS[kind]
    if entry == "train_det MODEL.BACKBONE.PRETRAINED" and kind == "other_shapes":
        says = "none of its"  # a detector's keys (backbone.*) offered to the bare trunk
    if entry.startswith("train_cls") and kind == "other_shapes":
        says = "none of its"  # a detector's keys offered to a classifier
    if entry == "convert_weights" and kind == "other_shapes":
        says = "no conversion needed"  # resdet's own names: nothing to convert
    if entry == "convert_weights" and kind == "other_names":
        # {"model": ...} without a config is another toolkit's training checkpoint
        # (detectron2 writes them): converted if it is a ResNet or a known detector.
        says = "not a ResNet state dict"
    error_line(err, ckpt, says)
    assert not os.path.exists(os.path.join(os.path.dirname(bad_checkpoints["runs_code"]), "PWNED"))
