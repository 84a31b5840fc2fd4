"""Run the benchmark's modes and write its report: ``benchmark.json`` and ``benchmark.md``.

:func:`run_benchmark` is what ``tools/benchmark.py`` calls; :func:`render_markdown` turns the
results into the tables kept in ``BENCHMARKS.md``; :func:`check_targets` compares them with the
project's targets (R50-FPN 800x1333 fp32 inference >= 1.5x torchvision's throughput, at least
as fast as OpenVINO fp32 and >= 1.2x onnxruntime on resdet's own export, training step >= 1.6x,
R50-C4 with 1000 proposals <= 2x torchvision's R50-FPN time, peak memory no higher than
torchvision's).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from resdet.utils.machine import CPU_KINDS, cpu_kind, machine_info
from resdet_apps.benchmark import ModelSpec
from resdet_apps.benchmark_modes import (
    MODES,
    bench_backbones,
    bench_bf16,
    bench_data,
    bench_models,
    profile_inference,
)
from resdet_apps.benchmark_peers import check_runtimes, peer_lines

logger = logging.getLogger(__name__)

TARGET_SIZE = (800, 1333)


@dataclass
class BenchOptions:
    """What to measure; the defaults are the full benchmark of ``BENCHMARKS.md``."""

    size: Tuple[int, int] = TARGET_SIZE
    models: List[str] = field(
        default_factory=lambda: [
            "tv_r50_fpn",
            "r50_fpn",
            "r50_fpn+fold",
            "r50_c4+fold",
            "r50_c4_1000+fold",
            "r101_c4+fold",
        ]  # fmt: skip
    )
    train_models: List[str] = field(default_factory=lambda: ["tv_r50_fpn", "r50_fpn"])
    profile_models: List[str] = field(default_factory=lambda: ["r50_fpn+fold", "r50_c4+fold"])
    modes: List[str] = field(default_factory=lambda: list(MODES))
    warmup: int = 1
    repeats: int = 3
    train_repeats: int = 0  # 0: same as ``repeats`` (a full-size training step is slow)
    batch: int = 2
    threads: int = 2
    workers: List[int] = field(default_factory=lambda: [0, 2])
    compile: bool = False
    memory: bool = True
    bf16_size: Tuple[int, int] = (320, 320)
    bf16_model: str = "r50_fpn"
    bf16_train: bool = False  # a bf16 training step without native bf16 takes minutes
    weights: str = ""
    ap_images: int = 50
    ap_dataset: str = ""  # default: the checkpoint's DATASETS.TEST
    seed: int = 0
    # Runtime peers of the inference table: runtime_model's ONNX export in these runtimes,
    # each in its own process (resdet_apps.benchmark_peers); those not installed are skipped.
    runtimes: List[str] = field(
        default_factory=lambda: ["onnxruntime", "openvino", "openvino_bf16"]
    )
    runtime_model: str = "r50_fpn"
    # Each model of the inference and training tables in a worker process of its own
    # (resdet_apps.benchmark_workers.NativeRunner); False: all in this process.
    isolate: bool = True


def run_benchmark(
    opts: BenchOptions, on_mode_done: Optional[Callable[[Dict[str, Any]], None]] = None
) -> Dict[str, Any]:
    """Run every mode in ``opts.modes``; returns the results dict :func:`render_markdown` reads.

    ``on_mode_done(results)`` is called after each mode with the results so far (the tool
    writes them, so an interrupted full-size run keeps what it measured).
    """
    bad = [m for m in opts.modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; choose from {MODES}")
    if opts.runtimes and "infer" in opts.modes:
        check_runtimes(opts.runtimes, opts.runtime_model)  # before anything is measured
    torch.set_num_threads(opts.threads)
    size = tuple(opts.size)
    specs = [ModelSpec.parse(m) for m in opts.models]
    if opts.compile:
        specs += [ModelSpec.parse(s.name + "+compile") for s in specs
                  if not s.is_torchvision and "compile" not in s.mods]  # fmt: skip
    machine = machine_info(opts.threads)
    machine["loadavg_start"] = machine.pop("loadavg")  # the report also records it at the end
    out: Dict[str, Any] = {"machine": machine, "size": list(size),
                           "options": {k: v for k, v in vars(opts).items()}}  # fmt: skip
    t_start = time.perf_counter()
    for mode in opts.modes:
        t0 = time.perf_counter()
        logger.info("mode %s", mode)
        if mode == "infer":
            skipped: Dict[str, str] = {}
            out["infer"] = bench_models(specs, "infer", size, opts.warmup, opts.repeats,
                                        1, opts.threads, opts.memory, opts.seed, opts.runtimes,
                                        opts.runtime_model, skipped, opts.isolate)  # fmt: skip
            if opts.runtimes:
                out["runtimes"] = {"model": opts.runtime_model, "threads": opts.threads,
                                   "skipped": skipped}  # fmt: skip
        elif mode == "train":
            train = [ModelSpec.parse(m) for m in opts.train_models]
            out["train"] = bench_models(
                train, "train", size, opts.warmup, opts.train_repeats or opts.repeats, opts.batch,
                opts.threads, opts.memory, opts.seed, isolate=opts.isolate,
            )  # fmt: skip
        elif mode == "backbone":
            # Compiling again for the backbone alone would double the compile time.
            eager = [s for s in specs if "compile" not in s.mods]
            out["backbone"] = bench_backbones(eager, size, opts.warmup, opts.repeats, opts.seed)
        elif mode == "data":
            out["data"] = bench_data(size, opts.workers, opts.batch, seed=opts.seed)
        elif mode == "profile":
            prof = [ModelSpec.parse(m) for m in opts.profile_models]
            out["profile"] = profile_inference(prof, size, seed=opts.seed)
        elif mode == "bf16":
            # One untimed-warm-up-free run each: emulated bf16 takes minutes per call.
            out["bf16"] = bench_bf16(
                ModelSpec.parse(opts.bf16_model),
                tuple(opts.bf16_size),
                warmup=0,
                repeats=1,
                train=opts.bf16_train,
                weights=opts.weights,
                ap_images=opts.ap_images,
                ap_dataset=opts.ap_dataset,
                seed=opts.seed,
            )
        out.setdefault("mode_seconds", {})[mode] = time.perf_counter() - t0
        if on_mode_done is not None:
            out["machine"]["loadavg_end"] = list(os.getloadavg())
            out["targets"] = check_targets(out)
            on_mode_done(out)
    out["total_seconds"] = time.perf_counter() - t_start
    out["machine"]["loadavg_end"] = list(os.getloadavg())
    out["targets"] = check_targets(out)
    return out


def _row(rows: Sequence[Dict[str, Any]], name: str) -> Optional[Dict[str, Any]]:
    return next((r for r in rows if r["model"] == name), None)


def _best(rows: Sequence[Dict[str, Any]], base: str) -> Optional[Dict[str, Any]]:
    """The fastest fp32 variant of ``base`` (no bf16: the targets are fp32)."""
    cand = [r for r in rows if r["model"].split("+")[0] == base and "bf16" not in r["model"]]
    return min(cand, key=lambda r: r["wall"]["median"]) if cand else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def check_targets(results: Dict[str, Any]) -> List[Dict[str, str]]:
    """The project's targets against what was measured (only those the run has data for)."""
    out: List[Dict[str, str]] = []
    note = (
        ""
        if tuple(results["size"]) == TARGET_SIZE
        else " (measured at {}x{})".format(*results["size"])
    )
    for mode, goal in (("infer", 1.5), ("train", 1.6)):
        rows = results.get(mode) or []
        tv, rd = _row(rows, "tv_r50_fpn"), _best(rows, "r50_fpn")
        if tv and rd:
            speed = tv["wall"]["median"] / rd["wall"]["median"]
            out.append({"target": f"R50-FPN {mode} throughput >= {goal}x torchvision" + note,
                        "measured": f"{speed:.2f}x ({rd['model']})",
                        "status": _verdict(speed >= goal)})  # fmt: skip
        # Memory: the fastest variant that was measured (compiled ones are not).
        rd = _best([r for r in rows if "peak_mb" in r.get("memory", {})], "r50_fpn")
        if tv and rd and "peak_mb" in tv.get("memory", {}):
            mine, theirs = rd["memory"]["peak_mb"], tv["memory"]["peak_mb"]
            out.append({"target": f"R50-FPN {mode} peak memory <= torchvision's" + note,
                        "measured": f"{mine:.0f} MB vs {theirs:.0f} MB ({rd['model']})",
                        "status": _verdict(mine <= theirs)})  # fmt: skip
    rows = results.get("infer") or []
    # The deployment runtimes on resdet's own export: the fastest native fp32 path against each.
    native = _best(rows, "r50_fpn")
    for runtime, goal in (("openvino", 1.0), ("onnxruntime", 1.2)):
        peer = next((r for r in rows if r["model"] == f"r50_fpn@{runtime}"), None)
        if native and peer:
            speed = peer["wall"]["median"] / native["wall"]["median"]
            out.append({"target": f"R50-FPN native inference >= {goal}x {peer['model']}" + note,
                        "measured": f"{speed:.2f}x ({native['model']})",
                        "status": _verdict(speed >= goal)})  # fmt: skip
    tv, c4 = _row(rows, "tv_r50_fpn"), _best(rows, "r50_c4_1000")
    if tv and c4:
        ratio = c4["wall"]["median"] / tv["wall"]["median"]
        out.append({"target": "R50-C4 (1000 proposals) inference time <= 2x torchvision R50-FPN"
                    + note, "measured": f"{ratio:.2f}x ({c4['model']})",
                    "status": _verdict(ratio <= 2.0)})  # fmt: skip
    # bf16: against torchvision's fp32, and the AP change of a trained detector.
    bf = [r for r in rows if r["model"].split("+")[0] == "r50_fpn" and "bf16" in r["model"]]
    if tv and bf:
        best = min(bf, key=lambda r: r["wall"]["median"])
        speed = tv["wall"]["median"] / best["wall"]["median"]
        out.append({"target": "R50-FPN bf16 inference throughput >= 4x torchvision fp32" + note,
                    "measured": f"{speed:.2f}x ({best['model']})",
                    "status": _verdict(speed >= 4.0)})  # fmt: skip
    ap = (results.get("bf16") or {}).get("ap")
    if ap:
        diff = ap["diff_points"]
        out.append({"target": "bf16 AP within 0.3 points of fp32 (trained detector)",
                    "measured": f"{diff:+.2f} points on {ap['images']} images",
                    "status": _verdict(abs(diff) <= 0.3)})  # fmt: skip
    return out


def _ms(s: float) -> str:
    return f"{s:.3f}" if s < 10 else f"{s:.2f}"


def _counts(r: Dict[str, Any], key: str) -> str:
    v = r.get(key)
    return "/".join(str(x) for x in v) if v else "-"


def _thousands(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 1000:.0f}k"


def _models_table(rows: Sequence[Dict[str, Any]], unit: str) -> List[str]:
    tv = next((r for r in rows if r["model"].startswith("tv_")), None)
    lines = [f"| model | proposals/img | detections/img | median s/{unit} | min-max s | "
             "CPU s | img/s | speed vs torchvision | peak RSS MB | work MB | page faults |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        w = r["wall"]
        speed = f"{tv['wall']['median'] / w['median']:.2f}x" if tv else "-"
        mem = r.get("memory", {})
        peak = f"{mem['peak_mb']:.0f}" if "peak_mb" in mem else mem.get("error", "-")
        work = f"{mem['work_mb']:.0f}" if "work_mb" in mem else "-"
        name = r["model"] + (f" (compile {r['compile_s']:.0f} s)" if "compile_s" in r else "")
        lines.append(
            f"| {name} | {_counts(r, 'proposals')} | {_counts(r, 'detections')} | "
            f"{_ms(w['median'])} | {_ms(w['min'])}-{_ms(w['max'])} | {_ms(r['cpu_median'])} | "
            f"{r['images'] / w['median']:.3f} | {speed} | {peak} | {work} | "
            f"{_thousands(r.get('faults'))} |"
        )
    return lines


def render_markdown(results: Dict[str, Any], command: str = "") -> str:
    """The report as markdown: machine, one table per mode, targets."""
    m = results["machine"]
    h, w = results["size"]
    kind = CPU_KINDS[cpu_kind(m["isa"])]
    lines = [f"## Latest benchmark: {kind} ({m['cpu']})", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [f"Machine: {m['cpu']} ({', '.join(m['isa'])}), {m['cores']} cores, "
              f"{m['threads']} torch threads, torch {m['torch']}; load average "
              f"{m['loadavg_start'][0]:.1f} at start, {m.get('loadavg_end', ['?'])[0]:.1f} "
              "at end (the machine is shared). Image size "
              f"{h}x{w}; all fp32 unless the name says bf16.", ""]  # fmt: skip
    rows = [r for r in (results.get("infer") or []) + (results.get("train") or [])
            if "runtime" not in r]  # fmt: skip
    if rows and all("process" in r for r in rows):  # (older results do not say)
        own = all(r["process"] == "own" for r in rows)
        lines += ["Each model " + ("timed in a process of its own, alternating rounds with the "
                  "others (`--in-process`: all in one); page faults: the minor faults of one "
                  "timed unit in its process (median): pages of new memory touched (4 KB each "
                  "unless huge pages are on)."
                  if own else "timed in this one process (`--in-process`), alternating rounds."),
                  ""]  # fmt: skip
    if results.get("infer"):
        lines += ["### Inference (1 image, `torch.inference_mode`)", ""]
        lines += _models_table(results["infer"], "img") + [""] + peer_lines(results)
    if results.get("train"):
        b = results["train"][0]["images"]
        lines += [f"### Training step (forward + backward + SGD, batch {b})", ""]
        lines += _models_table(results["train"], "step") + [""]
    if results.get("backbone"):
        bb = results["backbone"]
        lines += [f"### Backbone alone (GEMM {bb['gemm_gflops_per_s']:.1f} GFLOP/s in this run)",
                  "", "| backbone of | GFLOP/img | median s | img/s | GFLOP/s | % of GEMM |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in bb["rows"]:
            lines.append(f"| {r['model']} | {r['gflop']:.1f} | {_ms(r['wall']['median'])} | "
                         f"{r['images_per_s']:.3f} | {r['gflops_per_s']:.1f} | "
                         f"{100 * r['fraction_of_gemm']:.0f}% |")  # fmt: skip
        lines.append("")
    if results.get("data"):
        lines += ["### Data pipeline (decode JPEG + resize + flip + collate)", "",
                  "| workers | images/s | first batch s |", "|---|---|---|"]  # fmt: skip
        for r in results["data"]:
            lines.append(f"| {r['workers']} | {r['images_per_s']:.1f} | {r['first_batch_s']:.2f} |")
        lines.append("")
    if results.get("bf16"):
        lines += _bf16_lines(results["bf16"])
    if results.get("profile"):
        for name, p in results["profile"].items():
            lines += [f"### Profile: {name} inference, top operators by self CPU time "
                      f"(total {p['total_ms'] / 1e3:.2f} s)", "",
                      "| operator | self s | % | calls |", "|---|---|---|---|"]  # fmt: skip
            for r in p["rows"]:
                lines.append(f"| `{r['op']}` | {r['self_ms'] / 1e3:.3f} | {r['pct']:.1f} | "
                             f"{r['calls']} |")  # fmt: skip
            lines.append("")
    if results.get("targets"):
        lines += ["### Targets", "", "| target | measured | status |", "|---|---|---|"]
        lines += [
            f"| {t['target']} | {t['measured']} | {t['status']} |" for t in results["targets"]
        ]
        lines.append("")
    return "\n".join(lines)


def _bf16_lines(b: Dict[str, Any]) -> List[str]:
    h, w = b["size"]
    native = "yes" if b["cpu_has_native_bf16"] else "no (AVX2 only: bf16 is emulated)"
    lines = [f"### bf16 autocast ({b['model']}, {h}x{w}; native bf16 on this CPU: {native})", "",
             "| work | fp32 s | bf16 s | bf16 / fp32 time |", "|---|---|---|---|"]  # fmt: skip
    for mode in ("infer", "train"):
        if mode in b:
            fp, bf = b[mode][b["model"]], b[mode][b["model"] + "+bf16"]
            lines.append(f"| {mode} | {_ms(fp)} | {_ms(bf)} | {b[mode]['slowdown']:.1f}x |")
    a = b["agreement"]
    lines += ["", f"Detections on the benchmark image (calibrated random weights, "
              f"{b['detections']} fp32 detections): {100 * a['matched']:.0f}% of fp32 boxes "
              f"have a bf16 box of the same class at IoU >= 0.9 (mean best IoU "
              f"{a['mean_iou']:.3f}, max score change {a['max_score_diff']:.3f})."]  # fmt: skip
    if "ap" in b:
        ap = b["ap"]
        lines.append(f"AP on {ap['images']} images of the demo test set ({ap['weights']}): "
                     f"fp32 {100 * ap['fp32']['AP']:.2f}, bf16 {100 * ap['bf16']['AP']:.2f} "
                     f"({ap['diff_points']:+.2f} points).")  # fmt: skip
    else:
        lines.append("AP change: not measured (no trained checkpoint given: `--weights`).")
    return lines + [""]


def write_outputs(results: Dict[str, Any], out_dir: str, command: str = "") -> Tuple[str, str]:
    """Write ``benchmark.json`` and ``benchmark.md`` into ``out_dir``; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    results = {**results, "command": command}
    json_path = os.path.join(out_dir, "benchmark.json")
    md_path = os.path.join(out_dir, "benchmark.md")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=str)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(render_markdown(results, command) + "\n")
    return json_path, md_path
