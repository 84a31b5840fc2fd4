"""The demo's report: ``REPORT.md`` with tables and wall times, training curves and pictures.

Reads only what the runs left on disk (``metrics.jsonl``, ``eval/eval_results.json``,
``eval/coco_metrics.json``, ``eval/voc_metrics.json``, ``model_final.pth``), so a report can be
rebuilt from a finished demo folder. Files written into the demo's output folder:

- ``REPORT.md``: machine, what each step did and its wall time, COCO / VOC tables of the
  pretrained and the from-scratch detector, per-class AP, the classifier's val error.
- ``cls_curves.png``: classifier training (dashed) and val (bold) top-1 error.
- ``det_losses.png``: detection losses, pretrained vs scratch.
- ``det_val_ap.png``: val AP during training (only when evaluated periodically).
- ``val_detections.png``: val images: ground truth (dashed) | pretrained | scratch.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
from typing import Any, Dict, List

import cv2
import numpy as np

from resdet.accel import inference_model
from resdet.config.schema import Config
from resdet.data.catalog import get_dataset
from resdet.data.image_io import read_image
from resdet.data.records import DetectionRecord
from resdet.engine.checkpoint import load_model_weights
from resdet.engine.detection import detect_test_set
from resdet.engine.runtime import resolve_device
from resdet.evaluation.tta import tta_views
from resdet.modeling.detection.build import build_detector
from resdet.utils.machine import machine_info
from resdet.utils.plots import plot_curves, plot_detection_curves, read_metrics
from resdet.utils.visualization import draw_detections, save_image, tile_images
from resdet_apps.demo_fit import FIT_FILE

logger = logging.getLogger(__name__)

__all__ = ["summarize", "write_report"]

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RUN_LABELS = {"det": "pretrained", "scratch": "scratch"}
VIS_SCORE = 0.5  # predictions drawn in the pictures (the evaluation uses every score)
VIS_SIDE = 360  # longer side of each picture panel, so labels stay readable


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _run_results(cfg: Config) -> Dict[str, Any]:
    """COCO and VOC metrics of a detector's final evaluation (empty dicts when missing)."""
    ev = os.path.join(cfg.OUTPUT_DIR, "eval")
    return {
        "coco": _read_json(os.path.join(ev, "coco_metrics.json")),
        "voc": _read_json(os.path.join(ev, "voc_metrics.json")),
        # TEST.AUG: the same detector with its test-time views fused (resdet.evaluation.tta)
        "coco_tta": _read_json(os.path.join(ev, "tta", "coco_metrics.json")),
        "voc_tta": _read_json(os.path.join(ev, "tta", "voc_metrics.json")),
    }


def _cls_results(cfg: Config) -> Dict[str, float]:
    """The classifier's last val errors (``top1_err``, ``top5_err``) from ``metrics.jsonl``."""
    _, val = read_metrics(cfg.OUTPUT_DIR)
    if not val:
        return {}
    return {k[len("val/") :]: float(v) for k, v in val[-1].items() if k.startswith("val/")}


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{int(s // 60)} min {s % 60:02.0f} s"


def summarize(
    opts: Any, configs: Dict[str, Config], steps: Dict[str, Dict[str, Any]], wall: float
) -> Dict[str, Any]:
    """The demo's results as one dict (written to ``summary.json`` and printed by the tool)."""
    out: Dict[str, Any] = {
        "schedule": opts.schedule,
        "det_iters": configs["det"].SOLVER.MAX_ITER,
        "fitted": bool(opts.fit),
        "output": opts.output,
        "wall_seconds": round(wall, 1),
        "machine": {
            **{k: v for k, v in machine_info().items() if k in ("cpu", "isa", "cores")},
            "device": str(resolve_device(configs["det"].MODEL.DEVICE)),  # the detectors'
        },
        "steps": steps,
        "classifier": _cls_results(configs["cls"]),
        "report": os.path.join(opts.output, "REPORT.md"),
    }
    for name in ("det", "scratch"):
        if name in configs:
            res = _run_results(configs[name])
            out[RUN_LABELS[name]] = {
                **{k: res["coco"].get(k) for k in COCO_KEYS},
                "VOC07_mAP": res["voc"].get("mAP07"),
                "VOC_area_mAP": res["voc"].get("mAP"),
            }
            if res["coco_tta"]:
                out[RUN_LABELS[name]]["tta"] = {
                    **{k: res["coco_tta"].get(k) for k in COCO_KEYS},
                    "VOC07_mAP": res["voc_tta"].get("mAP07"),
                    "VOC_area_mAP": res["voc_tta"].get("mAP"),
                }
    return out


# --------------------------------------------------------------------------- pictures


def _plot_detection_curves(run_dirs: Dict[str, str], losses_png: str, ap_png: str) -> List[str]:
    """Loss curves of the detector runs (one panel per loss term) and, when the runs were
    evaluated periodically, their val AP / AP50 against iterations. Returns the files written."""
    dirs, labels = list(run_dirs.values()), list(run_dirs)
    title = "Faster R-CNN training: backbone pretrained on crops vs from scratch"
    written = [plot_detection_curves(dirs, losses_png, labels, title, val_metrics=[])]
    written.append(
        plot_detection_curves(
            dirs,
            ap_png,
            labels,
            "COCO AP on a val subset",
            losses=False,
            val_metrics=["coco/AP", "coco/AP50"],
        )
    )
    return [p for p in written if p]


def _panel(image: np.ndarray, title: str, draw: Any) -> np.ndarray:
    """Scale ``image`` so its longer side is VIS_SIDE, draw on it, put ``title`` above it."""
    s = VIS_SIDE / max(image.shape[:2])
    big = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    big = draw(big, s)
    strip = np.full((22, big.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, big], axis=0)


def _predict(cfg: Config, records: List[DetectionRecord]) -> Dict[int, Dict[str, np.ndarray]]:
    model = build_detector(cfg)
    load_model_weights(model, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), log=False)
    # What the detector is scored with: with TEST.AUG, its fused views.
    fast = inference_model(model, cfg)
    tta = cfg.TEST.AUG.ENABLED
    dets = detect_test_set(fast, cfg, records, contextlib.nullcontext, "pictures", tta)
    return {int(d["image_id"]): d for d in dets}


def draw_val_images(configs: Dict[str, Config], val: str, num: int, output: str) -> str | None:
    """``num`` val images, each as ground truth (dashed) | each detector's predictions
    (score >= VIS_SCORE, class name and score), two images per row. Returns the path."""
    records, meta = get_dataset(val)
    records = records[:num]
    if not records:
        return None
    preds = {name: _predict(configs[name], records) for name in RUN_LABELS if name in configs}
    names = meta.class_names
    groups = []
    for rec in records:
        img = read_image(rec.file_name)
        panels = [
            _panel(
                img,
                f"ground truth ({len(rec.boxes)} objects)",
                lambda im, s, r=rec: draw_detections(
                    im, r.boxes * s, r.labels, class_names=names, dashed=True
                ),
            )
        ]
        for name, by_id in preds.items():
            d = by_id[int(rec.image_id)]
            keep = d["scores"] >= VIS_SCORE
            panels.append(
                _panel(
                    img,
                    f"{RUN_LABELS[name]}{', TTA' if configs[name].TEST.AUG.ENABLED else ''} "
                    f"({int(keep.sum())} with score >= {VIS_SCORE})",
                    lambda im, s, d=d, k=keep: draw_detections(
                        im, d["boxes"][k] * s, d["labels"][k], d["scores"][k], names
                    ),
                )
            )
        groups.append(tile_images(panels, cols=len(panels), pad=3))
    path = os.path.join(output, "val_detections.png")
    # Two images per row, with a wide gap between them so the triplets read as units.
    save_image(path, tile_images(groups, cols=2, pad=24))
    return path


# --------------------------------------------------------------------------- REPORT.md


def _steps_table(
    configs: Dict[str, Config], steps: Dict[str, Dict[str, Any]], data: Dict[str, Any]
) -> List[str]:
    what: Dict[str, str] = {}
    counts = data.get("counts", {})
    if counts:
        tr, va = counts["train"], counts["val"]
        crops = sum(tr.get("crops", {}).values()), sum(va.get("crops", {}).values())
        what["data"] = (
            f"generated {tr['images']} train / {va['images']} val scenes ({tr['objects']} / "
            f"{va['objects']} objects, {len(data['classes'])} classes) and {crops[0]} / "
            f"{crops[1]} object and background crops of {data['args']['crop_size']} px"
        )
    c = configs["cls"]
    cls_err = _cls_results(c).get("top1_err")
    what["cls"] = (
        f"pretrained a ResNet-{c.MODEL.BACKBONE.DEPTH} (width {c.MODEL.BACKBONE.WIDTH}) "
        f"classifier on the crops: {c.SOLVER.MAX_ITER} iterations x {c.SOLVER.IMS_PER_BATCH} "
        f"crops, {c.SOLVER.OPTIMIZER} {c.SOLVER.LR_SCHEDULER}; val top-1 error {_pct(cls_err)}%"
    )
    for name, init in (("det", "from the classifier"), ("scratch", "from random init")):
        if name in configs:
            d = configs[name]
            b = d.MODEL.BACKBONE
            frozen = {0: "nothing frozen", 1: "stem frozen"}.get(
                b.FREEZE_AT, f"stem..res{b.FREEZE_AT} frozen"
            )
            what[name] = (
                f"trained Faster R-CNN R{b.DEPTH}-FPN (width {b.WIDTH}) {init} ({b.NORM}, "
                f"{frozen}): {d.SOLVER.MAX_ITER} iterations x {d.SOLVER.IMS_PER_BATCH} images, "
                f"{d.SOLVER.OPTIMIZER} lr {d.SOLVER.BASE_LR:g} {d.SOLVER.LR_SCHEDULER}"
            )
            what[f"{name}_eval"] = (
                f"scored the {RUN_LABELS[name]} detector on the whole val split (COCO and VOC)"
            )
    lines = ["| step | what it did | wall time |", "|---|---|---|"]
    for name, info in steps.items():
        if name == "report":
            continue  # still running while this is written
        t = _fmt_seconds(float(info.get("seconds", 0.0)))
        status = info.get("status", "")
        note = "" if status == "ran" else f" ({status})"
        lines.append(f"| {name} | {what.get(name, '')} | {t}{note} |")
    return lines


def _results_tables(configs: Dict[str, Config], val_info: str) -> List[str]:
    runs = {RUN_LABELS[n]: _run_results(configs[n]) for n in RUN_LABELS if n in configs}
    labels = list(runs)
    both = len(labels) == 2
    head = "| metric (%) | " + " | ".join(labels) + (" | transfer gain |" if both else " |")
    lines = [f"## Detection on {val_info}", "", head, "|---" * (len(labels) + 1 + both) + "|"]
    rows = [(f"COCO {k}", "coco", k) for k in COCO_KEYS]
    rows += [("VOC07 11-point mAP", "voc", "mAP07"), ("VOC area mAP", "voc", "mAP")]
    tta = all(runs[lb]["coco_tta"] for lb in labels)
    if tta:  # the same detectors with their test-time views fused (TEST.AUG)
        rows += [(f"COCO {k}, TTA", "coco_tta", k) for k in ("AP", "AP50", "AP75")]
        rows += [("VOC07 11-point mAP, TTA", "voc_tta", "mAP07")]
    for title, kind, key in rows:
        vals = [runs[lb][kind].get(key) for lb in labels]
        cells = [_pct(v) for v in vals]
        if both:
            ok = all(isinstance(v, (int, float)) and not math.isnan(v) for v in vals)
            cells.append(f"{100 * (vals[0] - vals[1]):+.1f}" if ok else "-")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "COCO AP is averaged over IoU 0.50:0.95; AP50 / VOC mAP at IoU 0.5."]
    if tta:
        n = len(tta_views(configs["det"]))
        lines += [f"TTA: the same weights, each image seen in {n} views (`TEST.AUG`: sizes, "
                  f"mirrored or rotated), their detections fused; {n} forward passes."]  # fmt: skip
    lines.append("")
    for kind, how in (("coco", "one pass"), ("coco_tta", "TTA")):
        if kind == "coco_tta" and not tta:
            continue
        first = runs[labels[0]][kind]
        checks = []
        for key, target in (("AP50", 0.90), ("AP", 0.60)):
            v = first.get(key)
            met = isinstance(v, (int, float)) and v >= target
            checks.append(f"{key} >= {100 * target:.0f}: **{'reached' if met else 'not reached'}** "
                          f"({_pct(v)})")  # fmt: skip
        lines += [f"Targets for the {labels[0]} detector, {how}: " + "; ".join(checks) + ".", ""]
    per = ["## Per-class AP (%)", ""]
    cols = [f"COCO AP {lb}" for lb in labels] + [f"VOC07 AP {lb}" for lb in labels]
    per += ["| class | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    classes = list(runs[labels[0]]["coco"].get("per_class", {}))
    for c in classes:
        cells = [_pct(runs[lb]["coco"].get("per_class", {}).get(c)) for lb in labels]
        cells += [
            _pct(runs[lb]["voc"].get("per_class", {}).get(c, {}).get("ap07")) for lb in labels
        ]
        per.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines + per + [""]


def write_report(
    opts: Any,
    configs: Dict[str, Config],
    val: str,
    steps: Dict[str, Dict[str, Any]],
    wall: float,
) -> str:
    """Draw the PNGs and write ``REPORT.md`` into ``opts.output``; returns its path.

    Args:
        steps: ``{step: {"seconds", "status"}}`` of this and earlier invocations.
        wall: seconds this invocation has run so far (the steps may overlap).
    """
    out = opts.output
    pictures = [
        plot_curves(
            [configs["cls"].OUTPUT_DIR],
            os.path.join(out, "cls_curves.png"),
            labels=["classifier"],
            title="Classifier pretraining on the shapes crops (top-1 error)",
        )
    ]
    det_dirs = {RUN_LABELS[n]: configs[n].OUTPUT_DIR for n in RUN_LABELS if n in configs}
    pictures += _plot_detection_curves(
        det_dirs, os.path.join(out, "det_losses.png"), os.path.join(out, "det_val_ap.png")
    )
    vis = draw_val_images(configs, val, opts.num_vis, out)
    pictures += [vis] if vis else []
    data_root = os.path.dirname(os.path.dirname(configs["cls"].DATASETS.CLS_TRAIN))
    data = _read_json(os.path.join(data_root, "meta.json"))
    m = machine_info()
    parallel = getattr(opts, "parallel", False) and "scratch" in configs
    how = (
        "one thread per process; the from-scratch chain (scratch, scratch_eval) ran in a second "
        "process alongside cls -> det -> det_eval"
        if parallel
        else f"{m['threads']} thread(s), one step after the other"
    )
    val_counts = data.get("counts", {}).get("val", {})
    n_img, n_obj = val_counts.get("images", "?"), val_counts.get("objects", "?")
    val_info = f"{val} ({n_img} images, {n_obj} objects)"
    lines = [
        "# resdet demo: classification pretraining -> Faster R-CNN on the shapes dataset",
        "",
        "The paper's transfer (He et al. 2015, Appendix A; Tables 7/8 compare detectors by "
        "their pretrained trunk) in miniature: a ResNet classifier is trained on object crops, "
        "then fine-tuned as the trunk of Faster R-CNN, and compared with the same detector "
        "trained from scratch for the same iterations.",
        "",
        f"- schedule: `{opts.schedule}`"
        + (
            f", detector iterations fitted to this CPU's measured speed ({FIT_FILE})"
            if opts.fit
            else ""
        )
        + f"; written {datetime.datetime.now():%Y-%m-%d %H:%M}",
        f"- machine: {m['cpu']} (flags {' '.join(m['isa']) or 'none of note'}), "
        f"{m['cores']} logical CPUs, detectors trained on "
        f"{resolve_device(configs['det'].MODEL.DEVICE)}; torch {m['torch']}, "
        f"{'detectors under bf16 autocast' if configs['det'].SOLVER.AMP.ENABLED else 'fp32'}, "
        f"{how}",
        f"- wall time of this run: {_fmt_seconds(wall)} before this report (the environment's "
        "set-up not included; steps done in an earlier run are skipped and keep their time "
        "below)",
        "",
        "## Steps",
        "",
        *_steps_table(configs, steps, data),
        "",
        *_results_tables(configs, val_info),
        "## Pictures",
        "",
    ]
    captions = {
        "cls_curves.png": "Classifier: training error (dashed, augmented batches) and val error",
        "det_losses.png": "Detector losses, pretrained vs scratch",
        "det_val_ap.png": "Val AP during training (a val subset)",
        "val_detections.png": "Val images: ground truth (dashed) | predictions with score >= "
        f"{VIS_SCORE}",
    }
    for p in pictures:
        name = os.path.basename(p)
        lines += [f"{captions.get(name, name)}:", "", f"![{name}]({name})", ""]
    path = os.path.join(out, "REPORT.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    logger.info("wrote %s", path)
    return path
