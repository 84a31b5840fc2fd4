"""The benchmark's measurements, one function per mode (see :mod:`resdet_apps.benchmark`).

Modes: ``infer`` and ``train`` (whole detectors, each in a worker process of its own,
alternating, with the peak memory of the worker's first unit of work), ``backbone``
(images/s and GFLOP/s against a GEMM measured in the same run), ``data`` (decode +
augmentation + collate with N workers), ``profile`` (top operators of one inference),
``bf16`` (autocast speed and accuracy change at a small size).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import statistics
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import torch
import torch.nn as nn
from torchvision.ops import box_iou

from resdet.data.shapes_render import make_scene
from resdet.utils.machine import cpu_has_flag
from resdet_apps.benchmark import (
    TRAIN_ONLY_INVALID,
    ModelSpec,
    Runner,
    backbone_flops,
    build_base_model,
    calibrated_model,
    gemm_gflops,
    make_inputs,
    summarize,
    time_alternating,
)
from resdet_apps.benchmark_peers import PeerRunner, check_runtimes, start_peers
from resdet_apps.benchmark_workers import (
    SETTLE_UNITS,
    NativeRunner,
    WorkerRunner,
    measure_memory,
    write_job,
)

logger = logging.getLogger(__name__)

MODES = ("infer", "train", "backbone", "data", "profile", "bf16")


def bench_models(
    specs: Sequence[ModelSpec],
    mode: str,
    size: Tuple[int, int],
    warmup: int,
    repeats: int,
    batch: int = 2,
    threads: int = 2,
    memory: bool = True,
    seed: int = 0,
    runtimes: Sequence[str] = (),
    runtime_model: str = "r50_fpn",
    runtimes_skipped: Optional[Dict[str, str]] = None,
    isolate: bool = True,
) -> List[Dict[str, Any]]:
    """Time ``mode`` ("infer" or "train") for every spec, alternating; one row per spec.

    With ``isolate`` (the default) each spec runs in a worker process of its own
    (:class:`NativeRunner`; its peak memory is the worker's first unit of work), else all in
    this process (each peak from a fresh process, :func:`measure_memory`). In "infer",
    ``runtimes`` (onnxruntime, openvino, openvino_bf16) run ``runtime_model``'s ONNX export,
    each in its own process, alternating with the specs (:mod:`resdet_apps.benchmark_peers`);
    one row each after the specs' rows. The runtimes that could not run are put into
    ``runtimes_skipped`` with the reason."""
    if mode == "train":
        skipped = [s.name for s in specs if set(TRAIN_ONLY_INVALID) & set(s.mods)]
        specs = [s for s in specs if s.name not in skipped]
        if skipped:
            logger.info("train: skipping inference-only variants %s", skipped)
    n_images = 1 if mode == "infer" else batch
    inputs = make_inputs(size, n_images, seed)
    bases: Dict[str, nn.Module] = {}
    for spec in specs:
        if spec.base not in bases:
            bases[spec.base] = calibrated_model(spec, size, seed)
    with tempfile.TemporaryDirectory() as tmpdir:
        runners: List[Any] = []
        peers: List[PeerRunner] = []
        try:
            for spec in specs:
                if isolate:
                    job = write_job(spec, bases[spec.base], mode, size, n_images, threads, seed,
                                    tmpdir, settle=SETTLE_UNITS)  # fmt: skip
                    runners.append(NativeRunner(spec, job))
                else:
                    runners.append(Runner(spec, copy.deepcopy(bases[spec.base]), mode, inputs))
            if mode == "infer" and runtimes:
                peer = check_runtimes(runtimes, runtime_model)
                if peer.base not in bases:
                    bases[peer.base] = calibrated_model(peer, size, seed)
                image = inputs.resdet[0]["image"].float()[None].numpy()
                peers, why = start_peers(runtimes, peer, bases[peer.base], image, threads, tmpdir)
                (runtimes_skipped if runtimes_skipped is not None else {}).update(why)
            names = [s.name for s in specs] + [p.name for p in peers]
            times = time_alternating([*runners, *peers], names, warmup, repeats)
        finally:
            for worker in [*runners, *peers]:
                if isinstance(worker, WorkerRunner):
                    worker.close()
        rows = []
        for spec, runner in zip(specs, runners):
            t = times[spec.name]
            row: Dict[str, Any] = {
                "model": spec.name,
                "images": n_images,
                "wall": summarize(t["wall"]),
                "cpu_median": summarize(t["cpu"])["median"],
                "first_s": t["first_s"],
                "process": "own" if isolate else "shared",
                **runner.counts,
            }
            if isolate:  # minor page faults per timed unit (median; warm-up rounds left out)
                row["faults"] = int(statistics.median(runner.faults[warmup:]))
                row["first_s"] = runner.ready["first_s"]  # the worker's first unit (a compile)
            if "compile" in spec.mods:
                row["compile_s"] = row["first_s"] - row["wall"]["median"]
            if memory and "compile" not in spec.mods:
                row["memory"] = (
                    runner.memory()
                    if isolate
                    else measure_memory(
                        spec, bases[spec.base], mode, size, n_images, threads, seed, tmpdir
                    )
                )
            rows.append(row)
    return rows + [p.row(times[p.name], memory) for p in peers]


def bench_backbones(
    specs: Sequence[ModelSpec], size: Tuple[int, int], warmup: int, repeats: int, seed: int = 0
) -> Dict[str, Any]:
    """Backbone forward alone (trunk + FPN, or the C4 trunk to res4): images/s, GFLOP/s and the
    fraction of the GEMM throughput measured in the same run."""
    gemm = gemm_gflops()
    runs, names, flops = [], [], {}
    for spec in specs:
        model = build_base_model(spec, size, seed).eval()
        div = getattr(model, "size_divisibility", 32)
        shape = (1, 3, -(-size[0] // div) * div, -(-size[1] // div) * div)
        flops[spec.name] = backbone_flops(model.backbone, shape)
        runner = Runner(spec, model, "infer", make_inputs(size, 1, seed))
        x = torch.randn(shape)
        if "cl" in spec.mods:
            x = x.contiguous(memory_format=torch.channels_last)
        bb = runner.model.backbone

        def run(bb: nn.Module = bb, x: torch.Tensor = x, r: Runner = runner) -> None:
            with torch.inference_mode(), r._autocast():
                bb(x)

        runs.append(run)
        names.append(spec.name)
    times = time_alternating(runs, names, warmup, repeats)
    rows = []
    for name in names:
        med = summarize(times[name]["wall"])["median"]
        gf = flops[name] / med / 1e9
        rows.append({"model": name, "wall": summarize(times[name]["wall"]),
                     "images_per_s": 1.0 / med, "gflop": flops[name] / 1e9,
                     "gflops_per_s": gf, "fraction_of_gemm": gf / gemm})  # fmt: skip
    return {"gemm_gflops_per_s": gemm, "rows": rows}


def bench_data(
    size: Tuple[int, int], workers: Sequence[int], batch: int = 2, num_images: int = 8,
    batches: int = 8, seed: int = 0,
) -> List[Dict[str, Any]]:  # fmt: skip
    """Decode + augmentation (resize from 0.8x, flip) + collate throughput, per worker count.

    JPEGs of ``0.8 * size`` are written to a temporary folder and loaded through the training
    pipeline (:func:`~resdet.data.loader.build_detection_loader`), which resizes them to
    ``size``. The first batch (worker start-up) is timed separately.
    """
    from resdet.data.det_dataset import DetectionDataset
    from resdet.data.det_transforms import build_det_transforms
    from resdet.data.loader import build_detection_loader
    from resdet.data.records import DetectionRecord

    src = (round(size[0] * 0.8), round(size[1] * 0.8))
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        records = []
        for i in range(num_images):
            image, boxes, labels = make_scene(src, i, seed)
            path = os.path.join(tmpdir, f"{i:04d}.jpg")
            cv2.imwrite(
                path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
            )
            records.append(DetectionRecord(path, i, src[0], src[1], boxes, labels))
        transform = build_det_transforms(min(size), max(size), 0.5, is_train=True, seed=seed)
        dataset = DetectionDataset(records, transform)
        for n in workers:
            loader = build_detection_loader(dataset, batch, n, shuffle=True, seed=seed,
                                            infinite=True)  # fmt: skip
            it = iter(loader)
            t0 = time.perf_counter()
            next(it)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            dt = time.perf_counter() - t0
            del it, loader  # shuts the persistent workers down
            rows.append({"workers": n, "images_per_s": batches * batch / dt,
                         "first_batch_s": first, "batch": batch})  # fmt: skip
    return rows


def profile_inference(
    specs: Sequence[ModelSpec], size: Tuple[int, int], top: int = 10, seed: int = 0
) -> Dict[str, Any]:
    """The ``top`` operators by self CPU time of one (warm) inference of each spec."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for spec in specs:
        runner = Runner(spec, calibrated_model(spec, size, seed), "infer", make_inputs(size, 1))
        runner()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            runner()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        out[spec.name] = {
            "total_ms": total / 1e3,
            "rows": [
                {
                    "op": e.key,
                    "self_ms": e.self_cpu_time_total / 1e3,
                    "pct": 100.0 * e.self_cpu_time_total / max(total, 1),
                    "calls": e.count,
                }
                for e in ranked
            ],  # fmt: skip
        }
    return out


def detection_agreement(
    ref: Dict[str, torch.Tensor], other: Dict[str, torch.Tensor], iou: float = 0.9
) -> Dict[str, float]:
    """How far ``other``'s detections are from ``ref``'s on the same image.

    ``matched``: fraction of ``ref``'s boxes with an ``other`` box of the same label at
    IoU >= ``iou``; ``mean_iou`` / ``max_score_diff`` over those best matches.
    """
    if len(ref["boxes"]) == 0:
        return {"matched": float(len(other["boxes"]) == 0), "mean_iou": 1.0, "max_score_diff": 0.0}
    ious = box_iou(ref["boxes"].float(), other["boxes"].float())
    same = ref["labels"][:, None] == other["labels"][None, :]
    ious = torch.where(same, ious, torch.zeros_like(ious))
    if ious.shape[1] == 0:
        return {"matched": 0.0, "mean_iou": 0.0, "max_score_diff": 1.0}
    best, idx = ious.max(dim=1)
    ok = best >= iou
    diff = (ref["scores"] - other["scores"][idx]).abs()[ok]
    return {"matched": float(ok.float().mean()), "mean_iou": float(best.mean()),
            "max_score_diff": float(diff.max()) if len(diff) else 0.0}  # fmt: skip


def coco_ap(
    weights: str, dtype: Optional[torch.dtype], num_images: int, dataset: str = ""
) -> Dict[str, float]:
    """COCO AP of a trained checkpoint on the first ``num_images`` of ``dataset`` (default:
    its config's test set), in fp32 (``dtype`` None) or under autocast with ``dtype``, of the
    model evaluation runs (:func:`~resdet.accel.inference_model`)."""
    from resdet.accel import inference_model
    from resdet.config import config_from_dict
    from resdet.engine.checkpoint import load_checkpoint, load_model_weights
    from resdet.engine.detection import evaluate_detector, load_detection_data
    from resdet.modeling.detection.build import build_detector

    cfg = config_from_dict(load_checkpoint(weights)["config"], weights)
    cfg.DATALOADER.NUM_WORKERS = 0
    model = build_detector(cfg)
    load_model_weights(model, weights, log=False)
    names = [dataset] if dataset else cfg.DATASETS.TEST
    records, meta = load_detection_data(names, cfg, train=False)
    amp = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else contextlib.nullcontext
    with tempfile.TemporaryDirectory() as tmpdir:
        t0 = time.perf_counter()
        # The model evaluation runs (TEST.FAST_INFERENCE: the fused copy; under bf16 autocast
        # its convolutions run in bf16 inside the fused oneDNN calls).
        fast = inference_model(model, cfg)
        res = evaluate_detector(fast, cfg, [(meta.name, records[:num_images], meta)], amp, tmpdir)
    return {"AP": res.get("coco/AP", float("nan")), "seconds": time.perf_counter() - t0}


def bench_bf16(
    spec: ModelSpec, size: Tuple[int, int], warmup: int = 1, repeats: int = 1, train: bool = True,
    weights: str = "", ap_images: int = 50, ap_dataset: str = "", seed: int = 0,
) -> Dict[str, Any]:  # fmt: skip
    """bf16 autocast against fp32 for one model at ``size``: speed, detection agreement on the
    benchmark image and, given a trained checkpoint ``weights``, the AP change."""
    bf = ModelSpec.parse(f"{spec.base}+bf16")
    fp = ModelSpec.parse(spec.base)
    native = cpu_has_flag("avx512_bf16") or cpu_has_flag("amx_bf16")  # False when unknown
    out: Dict[str, Any] = {"model": spec.base, "size": list(size), "cpu_has_native_bf16": native}
    modes = ("infer", "train") if train else ("infer",)
    for mode in modes:
        rows = bench_models([fp, bf], mode, size, warmup, repeats, memory=False, seed=seed)
        out[mode] = {r["model"]: r["wall"]["median"] for r in rows}
        out[mode]["slowdown"] = rows[1]["wall"]["median"] / rows[0]["wall"]["median"]
    base = calibrated_model(fp, size, seed)
    inputs = make_inputs(size, 1, seed)
    dets = {}
    for s in (fp, bf):
        r = Runner(s, copy.deepcopy(base), "infer", inputs)
        with torch.inference_mode(), r._autocast():
            dets[s.name] = r.model(inputs.resdet)[0]
    out["agreement"] = detection_agreement(dets[fp.name], dets[bf.name])
    out["detections"] = len(dets[fp.name]["boxes"])
    if weights:
        ap32 = coco_ap(weights, None, ap_images, ap_dataset)
        ap16 = coco_ap(weights, torch.bfloat16, ap_images, ap_dataset)
        out["ap"] = {"weights": weights, "images": ap_images, "fp32": ap32, "bf16": ap16,
                     "diff_points": 100 * (ap16["AP"] - ap32["AP"])}  # fmt: skip
    return out
