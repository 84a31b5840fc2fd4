"""Runtime peers of the inference benchmark: resdet's exported ONNX model of a benchmark model
(same calibrated weights, same image, same size) timed in onnxruntime and in OpenVINO beside
torchvision's and resdet's native paths.

How they are timed: the model is exported once (:func:`resdet.export.onnx.export_onnx`, input
fixed to the benchmark size), and each runtime gets its own worker process
(:mod:`resdet_apps.peer_worker`, which does not import torch) that loads it once. The peers join
:func:`~resdet_apps.benchmark.time_alternating` as runners: on its turn in a round a peer's
runner writes ``run`` to its worker and waits for the answer, so exactly one process computes
at a time, the rounds alternate native models and runtimes, and machine-load drift hits all
alike. The wall and CPU time of a peer are measured inside its worker around the inference call
alone (no pipe, no image copy). Every peer uses the benchmark's ``--threads``: onnxruntime's
``intra_op_num_threads``, OpenVINO's ``INFERENCE_NUM_THREADS``, with
``INFERENCE_PRECISION_HINT`` ``f32`` (``bf16`` for the ``openvino_bf16`` peer, run only on CPUs
with native bf16).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from resdet.utils.machine import cpu_has_flag
from resdet_apps.benchmark import ModelSpec, summarize
from resdet_apps.benchmark_workers import WorkerRunner
from resdet_apps.peer_worker import RUNTIMES

logger = logging.getLogger(__name__)

# runtime -> the package it needs
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino_bf16": "openvino"}


def check_runtimes(runtimes: Sequence[str], model: str) -> ModelSpec:
    """``ValueError`` for an unknown runtime name or a ``model`` that is not a resdet base
    model; returns ``model`` parsed."""
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise ValueError(f"unknown runtime(s) {bad}; choose from {list(RUNTIMES)}")
    spec = ModelSpec.parse(model)
    if spec.is_torchvision or spec.mods:
        raise ValueError(
            f"runtime model '{model}': give a resdet base model (e.g. r50_fpn), whose export "
            "the runtimes run"
        )
    return spec


def unavailable(runtime: str) -> Optional[str]:
    """Why ``runtime`` cannot run here, or None. Looked up without importing it: the runtimes'
    thread pools must not live in the benchmark's (torch) process."""
    if importlib.util.find_spec("onnx") is None:
        return "the ONNX export needs onnx (pip install onnx)"
    package = PACKAGES[runtime]
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed (pip install {package})"
    if runtime == "openvino_bf16" and not (cpu_has_flag("avx512_bf16") or cpu_has_flag("amx_bf16")):
        return "this CPU has no native bf16 (avx512_bf16 / amx_bf16)"
    return None


class PeerRunner(WorkerRunner):
    """A runtime running an exported model in its worker process (:mod:`resdet_apps.peer_worker`,
    which does not import torch)."""

    def __init__(self, runtime: str, name: str, model: str, image: str, threads: int) -> None:
        self.runtime = runtime
        cmd = [sys.executable, "-m", "resdet_apps.peer_worker", runtime, model, image, str(threads)]
        super().__init__(name, cmd)

    def row(self, times: Dict[str, Any], memory: bool) -> Dict[str, Any]:
        """The peer's row of the inference table, from its ``time_alternating`` entry."""
        row = {"model": self.name, "runtime": self.runtime, "images": 1,
               "wall": summarize(times["wall"]), "cpu_median": summarize(times["cpu"])["median"],
               "first_s": times["first_s"], "load_s": self.load_s, **self.counts}  # fmt: skip
        if memory:  # the worker's own peak; "work" = above its RSS once the model was loaded
            row["memory"] = self.memory_row(self.peak_mb, self.rss_mb)
        return row


def start_peers(
    runtimes: Sequence[str], spec: ModelSpec, model: nn.Module, image: np.ndarray,
    threads: int, tmpdir: str,
) -> Tuple[List[PeerRunner], Dict[str, str]]:  # fmt: skip
    """Export ``model`` (the calibrated base of ``spec``) to ONNX at ``image``'s size and start
    one worker per available runtime. ``image``: ``float32[1, 3, H, W]`` RGB 0-255, the
    benchmark's image. Returns the peers and ``{runtime: why it was skipped}``."""
    skipped = {r: why for r in runtimes if (why := unavailable(r))}
    for runtime, why in skipped.items():
        logger.warning("runtime peer %s skipped: %s", runtime, why)
    todo = [r for r in runtimes if r not in skipped]
    if not todo:
        return [], skipped
    from resdet.export.onnx import export_onnx

    onnx_path = os.path.join(tmpdir, f"{spec.base}.onnx")
    image_path = os.path.join(tmpdir, "image.npy")
    np.save(image_path, image)
    # A copy: the adapter puts the model in eval mode, and the native runners own theirs.
    export_onnx(copy.deepcopy(model), onnx_path, torch.from_numpy(image), dynamic=False)
    peers = []
    for runtime in todo:
        name = f"{spec.base}@{runtime}"
        try:
            peers.append(PeerRunner(runtime, name, onnx_path, image_path, threads))
        except RuntimeError as e:
            logger.warning("runtime peer %s skipped: %s", runtime, e)
            skipped[runtime] = str(e)
        else:
            logger.info("runtime peer %s loaded in %.1f s", name, peers[-1].load_s)
    return peers, skipped


def peer_lines(results: Dict[str, Any]) -> List[str]:
    """The markdown under the inference table: how the peers ran, what was skipped, and the
    speed of resdet's fastest native variant against each runtime."""
    info = results.get("runtimes")
    if not info:
        return []
    rows = results.get("infer") or []
    base = info["model"]
    lines = [f"Runtime peers (`{base}@<runtime>`): resdet's ONNX export of `{base}` (same "
             "calibrated weights, image and size; input size fixed), each runtime in its own "
             "process, one inference per round alternating with the native models, "
             f"`--threads {info['threads']}` for each; OpenVINO with fp32 arithmetic "
             "(`openvino_bf16`: bf16)."]  # fmt: skip
    if info.get("skipped"):
        lines.append("Skipped: " + "; ".join(f"{r} ({why})" for r, why in info["skipped"].items()))
    native = [r for r in rows if r["model"].split("+")[0] == base and "runtime" not in r]
    peers = [r for r in rows if "runtime" in r]
    table = []
    for peer in peers:
        bf16 = peer["runtime"].endswith("bf16")
        same = [r for r in native if ("bf16" in r["model"].split("+")) == bf16]
        if not same:
            continue
        best = min(same, key=lambda r: r["wall"]["median"])
        ratio = peer["wall"]["median"] / best["wall"]["median"]
        table.append(f"| {best['model']} | {peer['model']} | {ratio:.2f}x |")
    if table:
        lines += ["", "| resdet native (fastest) | runtime peer | native speed vs peer |",
                  "|---|---|---|", *table]  # fmt: skip
    return [*lines, ""]
