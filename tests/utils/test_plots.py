"""Training-curve plots from metrics.jsonl (the paper's Fig. 4/6 style)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from resdet.utils.plots import plot_curves, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_run(path, final_err, with_err=True, seed=0):
    """A run of 64k iterations: train error every 400, validation error every 2000."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    lines = []
    for it in range(400, 64001, 400):
        decay = final_err + (0.9 - final_err) * math.exp(-it / 8000)
        rec = {"iteration": it, "lr": 0.1, "loss": 2.3 * decay}
        if with_err:
            rec["train_err"] = max(0.0, decay - 0.03 + rng.normal(0, 0.01))
        lines.append(rec)
        if with_err and it % 2000 == 0:
            lines.append({"iteration": it, "val/top1_err": decay, "val/top5_err": decay / 3})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_plot_two_runs_writes_png(tmp_path):
    _fake_run(tmp_path / "plain20", 0.09)
    _fake_run(tmp_path / "resnet20", 0.08, seed=1)
    out = plot_curves(
        [str(tmp_path / "plain20"), str(tmp_path / "resnet20")],
        str(tmp_path / "figs" / "curves.png"),
        labels=["plain-20", "ResNet-20"],
        title="CIFAR-10",
    )
    data = open(out, "rb").read()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_loss_fallback_cli_and_errors(tmp_path):
    _fake_run(tmp_path / "det", 0.2, with_err=False)
    out = tmp_path / "loss.png"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "plot_curves.py"),
            str(tmp_path / "det"),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plot_curves([str(tmp_path / "det")], str(out), labels=["a", "b"])
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_curves([str(tmp_path / "missing")], str(out))


def test_read_metrics_splits_dedupes_and_skips_torn_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"iteration": 10, "loss": 2.0}\n'
        '{"iteration": 10, "val/top1_err": 0.5}\n'
        '{"iteration": 20, "loss": 1.5}\n'
        '{"iteration": 20, "loss": 1.4}\n'  # re-done after a resume: the later line wins
        '{"iteration": 30, "lo'  # torn by a crash
    )
    train, val = read_metrics(str(tmp_path))
    assert [(r["iteration"], r["loss"]) for r in train] == [(10, 2.0), (20, 1.4)]
    assert val == [{"iteration": 10, "val/top1_err": 0.5}]


def _fake_det_run(path, scale, val_loss=False, seed=0):
    """A detection run of 600 iterations: losses every 20, an evaluation every 200."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    lines = []
    terms = ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")
    for it in range(20, 601, 20):
        rec = {"iteration": it, "lr": 0.02}
        for t in terms:
            rec[t] = scale * math.exp(-it / 300) + abs(rng.normal(0, 0.02))
        rec["loss"] = sum(rec[t] for t in terms)
        lines.append(rec)
        if it % 200 == 0:
            ev = {"iteration": it, "val/coco/AP": 0.2 + it / 2000 / scale,
                  "val/coco/AP50": 0.4 + it / 2000 / scale, "val/voc/mAP07": 0.5}  # fmt: skip
            if val_loss:
                ev.update({f"val/{t}": 1.2 * rec[t] for t in terms})
                ev["val/loss"] = sum(ev[f"val/{t}"] for t in terms)
            lines.append(ev)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def _pixels(path):
    import cv2

    return cv2.imread(str(path)).astype(int)


def test_detection_runs_losses_and_val_metrics_in_one_figure(tmp_path):
    from tool_loader import load_tool

    from resdet.utils.plots import default_val_metrics, plot_detection_curves

    _fake_det_run(tmp_path / "pretrained", 1.0, val_loss=True)
    _fake_det_run(tmp_path / "scratch", 1.5, seed=1)
    main = load_tool("plot_curves").main
    both = tmp_path / "both.png"
    runs = [str(tmp_path / "pretrained"), str(tmp_path / "scratch")]
    assert main([*runs, "--output", str(both), "--labels", "pretrained", "scratch"]) == 0
    assert both.read_bytes().startswith(PNG_MAGIC)
    # Six loss/lr panels and a metrics panel: three columns, three rows.
    assert _pixels(both).shape[:2] == (round((3 * 3.3 + 0.4) * 110), round(3 * 4.2 * 110))
    one = tmp_path / "one.png"
    assert main([runs[0], "--output", str(one), "--labels", "pretrained"]) == 0
    assert np.abs(_pixels(both) - _pixels(one)).max() > 100  # the second run is drawn too

    _, val = read_metrics(runs[0])
    assert default_val_metrics(val) == ["val/coco/AP", "val/coco/AP50", "val/voc/mAP07"]
    # The validation losses are drawn: without them the picture differs.
    no_val_loss = tmp_path / "plain"
    _fake_det_run(no_val_loss, 1.0)
    other = tmp_path / "other.png"
    plot_detection_curves([str(no_val_loss)], str(other), ["pretrained"])
    assert np.abs(_pixels(other) - _pixels(one)).max() > 100

    nothing = plot_detection_curves(runs, str(tmp_path / "x.png"), losses=False, val_metrics=[])
    assert nothing is None
    with pytest.raises(ValueError, match=r"coco/AP5 not logged .*; logged: coco/AP, coco/AP50"):
        plot_detection_curves(runs, str(tmp_path / "x.png"), val_metrics=["coco/AP5"])
    assert main([*runs, "--output", str(tmp_path / "x.png"), "--metrics", "bbox/AP"]) == 2
