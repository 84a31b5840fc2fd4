"""Training curves in the style of the paper's Figures 4 and 6.

Each run directory holds ``metrics.jsonl`` (written by :class:`resdet.engine.hooks.MetricsHook`
and ``EvalHook``). Training error (``train_err``) is drawn thin and dashed, validation error
(``val/top1_err``) bold, one colour per run, against iterations -- so plain and residual nets,
or several depths, can be compared in one picture. Runs without any error logged (e.g.
detection) are drawn by training loss instead.

:func:`plot_detection_curves` draws detection runs: one panel per loss term (training solid,
validation loss dashed when ``TEST.VAL_LOSS`` logged it), the learning rate, and the
validation metrics (AP, AP50, VOC mAP) against iterations, several runs in one figure.

Uses matplotlib's Agg canvas directly (no pyplot), so it works without a display and leaves
no global figure state behind.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

if TYPE_CHECKING:
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

__all__ = [
    "default_val_metrics",
    "draw_curves",
    "plot_curves",
    "plot_detection_curves",
    "plot_runs",
    "read_metrics",
]

TRAIN_ERR = "train_err"
VAL_ERR = "val/top1_err"
LOSS = "loss"


def read_metrics(run_dir: str) -> Tuple[List[Dict[str, float]], List[Dict[str, float]]]:
    """``(training records, evaluation records)`` from ``run_dir/metrics.jsonl``.

    Evaluation records are those with a ``val/...`` key. If an iteration appears twice (a
    resumed run that re-did some iterations), the later line wins. Unparseable lines (a crash
    mid-write) are skipped. Both lists are sorted by iteration.

    Raises:
        FileNotFoundError: no ``metrics.jsonl`` in ``run_dir``.
    """
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (is {run_dir} a training output directory?)")
    train: Dict[int, Dict[str, float]] = {}
    val: Dict[int, Dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                rec = json.loads(line)
                it = int(rec["iteration"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                logger.warning("%s:%d: skipping unreadable line", path, n)
                continue
            is_val = any(k.startswith("val/") for k in rec)
            (val if is_val else train)[it] = rec
    return [train[i] for i in sorted(train)], [val[i] for i in sorted(val)]


def _series(records: Sequence[Dict[str, float]], key: str, scale: float) -> Tuple[list, list]:
    pts = [
        (r["iteration"], r[key] * scale) for r in records if isinstance(r.get(key), (int, float))
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def draw_curves(
    ax: Axes,
    run_dirs: Sequence[str],
    labels: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    x_scale: float | None = None,
    legend: bool = True,
) -> bool:
    """Draw the runs' error curves (or loss curves) onto the matplotlib axes ``ax``.

    Thin dashed: ``train_err``; bold: ``val/top1_err``; both in %, one colour per run. Runs
    with no error logged at all are drawn by training loss.

    Args:
        run_dirs: training output directories, each with ``metrics.jsonl``.
        labels: legend names, one per run (default: the directory names).
        colors: one matplotlib colour per run (default ``C0``, ``C1``, ...).
        x_scale: iterations per x unit; None picks 1e4 ("iter. (1e4)", the paper's axes)
            for runs of 20k+ iterations, else 1.
        legend: draw the legend (run colours, then the train / val line styles).

    Returns:
        True when errors were drawn, False for the loss fallback.

    Raises:
        FileNotFoundError: a run has no ``metrics.jsonl``.
        ValueError: ``labels`` or ``colors`` has the wrong length, or nothing is plottable.
    """
    from matplotlib.lines import Line2D

    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    if colors is not None and len(colors) != len(run_dirs):
        raise ValueError(f"{len(colors)} colours for {len(run_dirs)} runs")
    names = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    runs = [read_metrics(d) for d in run_dirs]
    has_err = any(
        any(TRAIN_ERR in r for r in tr) or any(VAL_ERR in r for r in va) for tr, va in runs
    )
    max_iter = max((r["iteration"] for tr, va in runs for r in [*tr, *va]), default=0)
    if max_iter == 0:
        raise ValueError(f"no training records in {', '.join(run_dirs)}")
    if x_scale is None:
        x_scale = 1e4 if max_iter >= 2e4 else 1.0
    # The paper's axes read "iter. (1e4)".
    x_label = "iteration" if x_scale == 1.0 else f"iter. ({x_scale:.0e})".replace("+0", "")

    colors = list(colors) if colors else [f"C{i % 10}" for i in range(len(runs))]
    for (train, val), name, color in zip(runs, names, colors):
        if has_err:
            xs, ys = _series(train, TRAIN_ERR, 100.0)
            ax.plot([x / x_scale for x in xs], ys, "--", color=color, lw=1.0, alpha=0.8)
            xs, ys = _series(val, VAL_ERR, 100.0)
            marker = "o" if len(xs) < 30 else None  # a lone final evaluation stays visible
            ax.plot(
                [x / x_scale for x in xs],
                ys,
                "-",
                color=color,
                lw=2.4,
                marker=marker,
                ms=4,
                label=name,
            )
        else:
            xs, ys = _series(train, LOSS, 1.0)
            ax.plot([x / x_scale for x in xs], ys, "-", color=color, lw=1.5, label=name)
    ax.set_xlabel(x_label)
    ax.set_ylabel("error (%)" if has_err else "training loss")
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if has_err:
        # Colour = run (from the bold lines); two extra black entries explain the line styles.
        handles = [Line2D([], [], color=c, lw=2.4, label=n) for c, n in zip(colors, names)]
        handles += [
            Line2D([], [], color="k", ls="--", lw=1.0, label="train"),
            Line2D([], [], color="k", ls="-", lw=2.4, label="val"),
        ]
    if legend:
        ax.legend(handles=handles, loc="upper right", fontsize=9, frameon=False)
    return has_err


def plot_curves(
    run_dirs: Sequence[str],
    output: str,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> str:
    """Draw the runs' error curves (or loss curves) into the image file ``output``.

    Args:
        run_dirs: training output directories, each with ``metrics.jsonl``.
        output: image path (format from the extension, e.g. ``.png``, ``.pdf``).
        labels: legend names, one per run (default: the directory names).
        title: figure title.

    Returns:
        ``output``.

    Raises:
        FileNotFoundError: a run has no ``metrics.jsonl``.
        ValueError: ``labels`` has the wrong length, or no run logged anything plottable.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    draw_curves(ax, run_dirs, labels)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output)
    logger.info("wrote %s (%d runs)", output, len(run_dirs))
    return output


# --------------------------------------------------------------------------- detection runs

# Loss terms in the order the panels show them; other ``loss*`` keys follow, sorted.
DET_LOSS_ORDER = ("loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")
# Validation results drawn by default: the headline number of each evaluator.
DEFAULT_VAL_METRICS = ("AP", "AP50", "mAP07", "top1_err")
_VAL_STYLES = ("-o", "--s", ":^", "-.d", "-v", "--x")


def default_val_metrics(val_records: Sequence[Dict[str, float]]) -> List[str]:
    """The ``val/...`` keys whose last part is in :data:`DEFAULT_VAL_METRICS`, in first-seen
    order (``val/coco/AP``, ``val/coco/AP50``, ``val/voc/mAP07``, ...)."""
    keys: List[str] = []
    for rec in val_records:
        for k in rec:
            if k.startswith("val/") and k.split("/")[-1] in DEFAULT_VAL_METRICS and k not in keys:
                keys.append(k)
    return keys


def plot_detection_curves(
    run_dirs: Sequence[str],
    output: str,
    labels: Sequence[str] | None = None,
    title: str = "",
    losses: bool = True,
    val_metrics: Sequence[str] | None = None,
) -> str | None:
    """Training losses and validation results of one or more runs against iterations.

    One colour per run. With ``losses``, one panel per loss term (``loss`` = their sum) with
    the training curve solid and, where ``TEST.VAL_LOSS`` logged it, the validation loss
    dashed with markers, plus the learning rate. Then one panel with the validation metrics
    ``val_metrics`` (default :func:`default_val_metrics`; ``[]`` for none), one line style per
    metric; fractions (AP, errors) are shown in percent.

    Returns:
        ``output``, or None when there was nothing to draw (e.g. ``losses=False`` and no
        evaluation logged).

    Raises:
        FileNotFoundError: a run has no ``metrics.jsonl``.
        ValueError: ``labels`` has the wrong length.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    names = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    runs = [read_metrics(d) for d in run_dirs]
    panels: List[str] = []
    if losses:
        found = {k for train, _ in runs for r in train for k in r if k.startswith("loss")}
        panels = [k for k in DET_LOSS_ORDER if k in found]
        panels += sorted(found - set(panels))
        if any("lr" in r for train, _ in runs for r in train):
            panels.append("lr")
    all_val = [r for _, val in runs for r in val]
    metrics = list(default_val_metrics(all_val) if val_metrics is None else val_metrics)
    metrics = [k if k.startswith("val/") else f"val/{k}" for k in metrics]
    missing = [k for k in metrics if not any(k in r for r in all_val)]
    if missing and val_metrics:  # asked for by name: a typo must not pass silently
        logged = sorted({k[len("val/") :] for r in all_val for k in r if k.startswith("val/")})
        raise ValueError(
            f"{', '.join(k[len('val/') :] for k in missing)} not logged by "
            f"{', '.join(run_dirs)}; logged: {', '.join(logged) or 'no evaluation'}"
        )
    if not panels and not metrics:
        return None

    n = len(panels) + (1 if metrics else 0)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.3 * rows + 0.4), dpi=110)
    FigureCanvasAgg(fig)
    for i, key in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, ((train, val), name) in enumerate(zip(runs, names)):
            xs, ys = _series(train, key, 1.0)
            if xs:
                ax.plot(xs, ys, "-", color=f"C{j % 10}", lw=1.3, label=name)
            xs, ys = _series(val, f"val/{key}", 1.0)
            if xs:
                ax.plot(xs, ys, "--o", color=f"C{j % 10}", lw=2.0, ms=3, label=f"{name} (val)")
        ax.set_title({"loss": "total loss", "lr": "learning rate"}.get(key, key), fontsize=10)
        _style(ax, legend=i == 0 or any(f"val/{key}" in r for r in all_val))
    if metrics:
        ax = fig.add_subplot(rows, cols, len(panels) + 1)
        percent = all(
            abs(r[k]) <= 1.0 for r in all_val for k in metrics if isinstance(r.get(k), float)
        )
        for j, ((_, val), name) in enumerate(zip(runs, names)):
            for m, key in enumerate(metrics):
                xs, ys = _series(val, key, 100.0 if percent else 1.0)
                if xs:
                    style = _VAL_STYLES[m % len(_VAL_STYLES)]
                    label = f"{name} {key[len('val/') :]}"
                    ax.plot(xs, ys, style, color=f"C{j % 10}", lw=1.5, ms=4, label=label)
        ax.set_title("validation" + (" (%)" if percent else ""), fontsize=10)
        _style(ax, legend=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output)
    logger.info("wrote %s (%d runs, %d panels)", output, len(runs), n)
    return output


def _style(ax, legend: bool) -> None:
    ax.set_xlabel("iteration", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    if legend:
        ax.legend(fontsize=7, frameon=False)


def plot_runs(
    run_dirs: Sequence[str],
    output: str,
    labels: Sequence[str] | None = None,
    title: str = "",
    val_metrics: Sequence[str] | None = None,
) -> str:
    """:func:`plot_curves` for classification runs (any logged ``train_err``), else
    :func:`plot_detection_curves` (``tools/plot_curves.py``).

    Raises:
        FileNotFoundError: a run has no ``metrics.jsonl``.
        ValueError: wrong number of labels, an unknown metric, or nothing to plot.
    """
    runs = [read_metrics(d) for d in run_dirs]
    if any(TRAIN_ERR in r for train, _ in runs for r in train) and not val_metrics:
        return plot_curves(run_dirs, output, labels, title)
    path = plot_detection_curves(run_dirs, output, labels, title, val_metrics=val_metrics)
    if path is None:
        raise ValueError(f"nothing to plot in {', '.join(run_dirs)}")
    return path
