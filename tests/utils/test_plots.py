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
