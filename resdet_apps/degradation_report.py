"""The report of the degradation experiment (:mod:`resdet_apps.degradation`).

``summarize`` measures the finding from the runs' ``metrics.jsonl`` and ``responses.json``;
``write_report`` draws Figure 6 (training error thin and dashed, validation error bold, one
colour per depth; plain left, residual right, same y axis) and Figure 7 (std of each 3x3
layer's response, by layer index and sorted) and writes ``report.md``.

The final training error of a run is the mean of its logged training error (augmented
batches, train-mode BN: what the thin curves show) over the last 10% of its iterations, a
window long enough to average out the batch-to-batch noise; the final validation error is
the last evaluation of the final model on all val crops.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from resdet.config.schema import Config
from resdet.utils.machine import machine_info
from resdet.utils.plots import TRAIN_ERR, VAL_ERR, draw_curves, read_metrics

__all__ = ["final_errors", "summarize", "write_report"]

FIG6 = "fig6_training_curves.png"
FIG7 = "fig7_layer_responses.png"
TAIL = 0.1  # fraction of the iterations the final training error averages over
DEPTH_COLORS = ("C0", "C3")  # shallow, deep: the same colour for a depth in every panel


def final_errors(run_dir: str, max_iter: int) -> Dict[str, Any]:
    """``{"train_err", "val_err", "train_window": [first, last iteration]}`` of a run.

    ``train_err`` averages the logged ``train_err`` records after ``(1 - TAIL) * max_iter``
    (at least the last record); ``val_err`` is the last ``val/top1_err`` (None without one).

    Raises:
        FileNotFoundError: no ``metrics.jsonl``.
        ValueError: the run logged no training error.
    """
    train, val = read_metrics(run_dir)
    train = [r for r in train if isinstance(r.get(TRAIN_ERR), (int, float))]
    if not train:
        raise ValueError(f"{run_dir}/metrics.jsonl: no '{TRAIN_ERR}' record")
    start = (1 - TAIL) * max_iter
    tail = [r for r in train if r["iteration"] > start] or train[-1:]
    vals = [r[VAL_ERR] for r in val if isinstance(r.get(VAL_ERR), (int, float))]
    return {
        "train_err": sum(r[TRAIN_ERR] for r in tail) / len(tail),
        "val_err": vals[-1] if vals else None,
        "train_window": [int(tail[0]["iteration"]), int(tail[-1]["iteration"])],
    }


def _read_json(path: str) -> Dict[str, Any]:
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _comparison(runs: Dict[str, Any], family: str, deeper_better: bool) -> Dict[str, Any]:
    shallow, deep = sorted((r for r in runs.values() if r["family"] == family), key=_depth)
    diff = deep["train_err"] - shallow["train_err"]
    return {
        "shallow": shallow["name"],
        "deep": deep["name"],
        "train_err_shallow": shallow["train_err"],
        "train_err_deep": deep["train_err"],
        "deep_minus_shallow": diff,
        # The paper's claim for this family: plain, deeper trains worse; ResNet, better.
        "as_in_paper": bool(diff < 0) if deeper_better else bool(diff > 0),
    }


def _depth(run: Dict[str, Any]) -> int:
    return int(run["depth"])


def summarize(configs: Dict[str, Config], steps: Dict[str, Any]) -> Dict[str, Any]:
    """Errors, responses and the finding of the four runs (``configs`` keyed by run name).

    Returns ``{"runs": {name: {...}}, "finding": {"plain": ..., "residual": ...}, "recipe",
    "machine", "steps"}``; errors are fractions.
    """
    from resdet.modeling.classifier import build_classifier

    runs: Dict[str, Any] = {}
    for name, cfg in configs.items():
        b = cfg.MODEL.BACKBONE
        responses = _read_json(os.path.join(cfg.OUTPUT_DIR, "responses.json"))
        params = sum(p.numel() for p in build_classifier(cfg).parameters())
        runs[name] = {
            "name": name,
            "depth": b.DEPTH,
            "family": "plain" if b.PLAIN else "residual",
            "params": params,
            "output_dir": cfg.OUTPUT_DIR,
            **final_errors(cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER),
            "responses": responses,
        }
    any_cfg = next(iter(configs.values()))
    s = any_cfg.SOLVER
    return {
        "runs": runs,
        "finding": {
            "plain": _comparison(runs, "plain", deeper_better=False),
            "residual": _comparison(runs, "residual", deeper_better=True),
        },
        "recipe": {
            "max_iter": s.MAX_ITER,
            "batch": s.IMS_PER_BATCH,
            "base_lr": s.BASE_LR,
            "steps": list(s.STEPS),
            "weight_decay": s.WEIGHT_DECAY,
            "momentum": s.MOMENTUM,
            "seed": any_cfg.SEED,
            "train_folder": any_cfg.DATASETS.CLS_TRAIN,
            "val_folder": any_cfg.DATASETS.CLS_TEST,
        },
        "machine": machine_info(),
        "steps": steps,
    }


def _figure6(summary: Dict[str, Any], path: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, family, title in zip(axes, ("plain", "residual"), ("plain", "ResNet")):
        runs = sorted((r for r in summary["runs"].values() if r["family"] == family), key=_depth)
        draw_curves(
            ax, [r["output_dir"] for r in runs], [r["name"] for r in runs], list(DEPTH_COLORS)
        )
        ax.set_title(f"{title}: thin dashed = training error, bold = validation error")
        ax.title.set_fontsize(10)
    axes[0].set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _figure7(summary: Dict[str, Any], path: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1)
    runs = sorted(summary["runs"].values(), key=lambda r: (r["family"], _depth(r)))
    depths = sorted({_depth(r) for r in runs})
    for run in runs:
        std = run["responses"]["std"]
        color = DEPTH_COLORS[depths.index(_depth(run))]
        style = dict(ls="--", marker="x") if run["family"] == "plain" else dict(ls="-", marker="o")
        xs = list(range(1, len(std) + 1))
        top.plot(xs, std, color=color, lw=1.3, ms=3, label=run["name"], **style)
        bottom.plot(xs, sorted(std, reverse=True), color=color, lw=1.3, ms=3, **style)
    top.set_xlabel("layer index (original; 1 = the stem's 3x3 conv)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(True, alpha=0.3)
    top.legend(fontsize=9, frameon=False)
    top.set_title("std of each 3x3 layer's response (after BN, before ReLU / addition)")
    top.title.set_fontsize(10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "-"


def _finding_line(c: Dict[str, Any], family_word: str, verb: str) -> str:
    """One sentence: the two final training errors, their difference and the verdict."""
    d = 100 * c["deep_minus_shallow"]
    verdict = (
        f"the deeper net trains {verb}, as in the paper"
        if c["as_in_paper"]
        else f"the deeper net does **not** train {verb}, unlike the paper"
    )
    return (
        f"- {family_word}: {c['deep']}'s final training error is "
        f"**{_pct(c['train_err_deep'])}%** vs {c['shallow']}'s **{_pct(c['train_err_shallow'])}%**"
        f" ({d:+.1f} points): {verdict}."
    )


def _markdown(summary: Dict[str, Any]) -> str:
    f, r, m = summary["finding"], summary["recipe"], summary.get("machine", {})
    lines = [
        "# The degradation problem: plain vs residual",
        "",
        "He et al. 2015, Sec. 4.2, Figures 6 and 7, on the embedded shapes dataset's 32x32 "
        "object crops (7 shapes + background).",
        "",
        "## Finding (measured)",
        "",
        _finding_line(f["plain"], "Plain nets", "worse"),
        _finding_line(f["residual"], "Residual nets", "better"),
        "",
        "| net | 3x3 layers | parameters | final training error (%) | final val error (%) |",
        "|---|---|---|---|---|",
    ]
    runs = sorted(summary["runs"].values(), key=lambda x: (x["family"] != "plain", _depth(x)))
    for run in runs:
        lines.append(
            f"| {run['name']} | {len(run['responses']['std'])} | {run['params']:,} | "
            f"{_pct(run['train_err'])} | {_pct(run['val_err'])} |"
        )
    w = runs[0]["train_window"]
    lines += [
        "",
        f"Training error: the mean of the logged training error (augmented batches, train-mode "
        f"BN, as the thin curves) over iterations {w[0]}-{w[1]} (the last {TAIL:.0%}); "
        "validation error: the final model on all val crops.",
        "",
        f"![Figure 6: training curves]({FIG6})",
        "",
        "## Layer responses (Figure 7)",
        "",
        "Std of each 3x3 layer's output after BN, before the ReLU and the shortcut addition, "
        f"on {runs[0]['responses']['num_images']} val crops (eval mode); the stem's 3x3 conv "
        "counts as layer 1, so a 6n+2 net has 6n+1 values.",
        "",
        "| net | mean std | median std | max std |",
        "|---|---|---|---|",
    ]
    for run in runs:
        std = sorted(run["responses"]["std"])
        lines.append(
            f"| {run['name']} | {sum(std) / len(std):.3f} | {std[len(std) // 2]:.3f} | "
            f"{std[-1]:.3f} |"
        )
    lines += [
        "",
        f"![Figure 7: layer responses]({FIG7})",
        "",
        "## Setup",
        "",
        f"- recipe: SGD momentum {r['momentum']}, weight decay {r['weight_decay']}, batch "
        f"{r['batch']}, lr {r['base_lr']} divided by 10 at {r['steps']}, {r['max_iter']} "
        f"iterations, seed {r['seed']} (the paper: batch 128, lr 0.1 divided by 10 at 32k and 48k, "
        f"64k iterations); data: `{r['train_folder']}`, `{r['val_folder']}`",
        f"- machine: {m.get('cpu', '?')}, {m.get('logical_cpus', '?')} logical CPUs, torch "
        f"{m.get('torch', '?')}; two training processes of one thread each"
        if summary.get("parallel", True)
        else f"- machine: {m.get('cpu', '?')}; one process, one thread",
    ]
    if "wall_seconds" in summary:
        ls, le = summary["loadavg_start"], summary["loadavg_end"]
        lines.append(
            f"- wall time {summary['wall_seconds'] / 60:.1f} min (report excluded); load average "
            f"(1/5/15 min) {ls} at the start, {le} at the end"
        )
    lines += [
        "",
        "CPU seconds: of the step's process (one thread), about the wall time the step takes "
        "on an idle core.",
        "",
        "| step | wall seconds | CPU seconds | status |",
        "|---|---|---|---|",
    ]
    for name, info in summary.get("steps", {}).items():
        cpu = info.get("cpu_seconds")
        lines.append(
            f"| {name} | {info.get('seconds', 0):.1f} | {'-' if cpu is None else cpu} | "
            f"{info.get('status', '')} |"
        )
    return "\n".join(lines) + "\n"


def write_report(output: str, summary: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``report.md``, :data:`FIG6` and :data:`FIG7` into ``output``.

    ``summary`` is :func:`summarize`'s result (plus ``wall_seconds`` / ``loadavg_*`` when
    known). Returns ``{"report": path, "figures": [paths]}``.
    """
    figures: List[str] = [
        _figure6(summary, os.path.join(output, FIG6)),
        _figure7(summary, os.path.join(output, FIG7)),
    ]
    path = os.path.join(output, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(_markdown(summary))
    return {"report": path, "figures": figures}
