"""One runtime peer of the benchmark, in its own process: loads an exported model once, then
runs it once per ``run`` line read on stdin and answers with one JSON line on stdout.

    python -m resdet_apps.peer_worker RUNTIME MODEL IMAGE_NPY THREADS

``RUNTIME`` is ``onnxruntime``, ``openvino`` (fp32 arithmetic) or ``openvino_bf16``. The
process imports numpy and the runtime only -- not torch -- so no torch thread pool lives beside
the runtime's (in one process they slow each other: resdet measured 1.5-1.9x). The benchmark
(:mod:`resdet_apps.benchmark_peers`) writes ``run`` when it is this peer's turn in a round, so
the runtimes and the native models alternate and machine-load drift hits them alike.

Protocol (:func:`answer_loop`, which the benchmark's native models use too): after loading,
one line ``{"ready": true, "load_s", "rss_mb", ...}`` (a native model adds ``first_s``,
``first_peak_mb`` and ``before_mb`` of its first unit of work); per ``run`` line, ``{"wall",
"cpu", "counts", "peak_mb"}`` (wall and process CPU seconds of the inference call alone,
measured here; ``counts``: ``{"detections": [n]}``; peak resident MB of this process so far;
a native model adds ``faults``, the minor page faults of the unit); ``quit`` or end of input
ends it. A failure is ``{"error": "..."}`` and exit status 1. The benchmark skips any line
that is not a JSON object (a library that printed to stdout before the loop redirected it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

RUNTIMES = ("onnxruntime", "openvino", "openvino_bf16")


def rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB, from ``/proc/self/status``
    (VmHWM, not ``ru_maxrss``: a forked child inherits its parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_runtime(runtime: str, model: str, threads: int) -> Callable[[np.ndarray], List]:
    """The inference call of ``model`` in ``runtime`` with ``threads`` intra-op threads."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"image": x})
    if runtime in ("openvino", "openvino_bf16"):
        import openvino as ov

        # The settings of resdet.export.openvino.compile_openvino (not imported: it needs torch).
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "bf16" if runtime == "openvino_bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        compiled = ov.Core().compile_model(model, "CPU", config)
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> List:
            result = request.infer({"image": x})
            return [result[out] for out in compiled.outputs]

        return run
    raise ValueError(f"unknown runtime '{runtime}'; choose from {RUNTIMES}")


def answer_loop(name: str, load: Callable[[], Tuple[Dict[str, Any], Callable[[], Dict]]]) -> int:
    """The worker side of the protocol above, shared by the runtime peers and the benchmark's
    native models (:mod:`resdet_apps.benchmark_workers`): ``load()`` returns what ``ready``
    reports beside its load time and RSS, and the call that runs one unit of work and returns
    its answer (``counts``, and for a native model ``faults``); the wall and CPU seconds of
    that call and the peak resident MB are added here. Errors are answered, naming ``name``."""
    # Answers go to a private copy of stdout; what the libraries print goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def say(obj: dict) -> None:
        answers.write(json.dumps(obj) + "\n")
        answers.flush()

    try:
        t0 = time.perf_counter()
        info, run = load()
        say({"ready": True, "load_s": time.perf_counter() - t0, "rss_mb": rss_mb("VmRSS"),
             **info})  # fmt: skip
        for line in sys.stdin:
            if line.strip() != "run":
                break
            t0, c0 = time.perf_counter(), time.process_time()
            answer = run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            say({"wall": wall, "cpu": cpu, **answer, "peak_mb": rss_mb("VmHWM")})
    except Exception as e:  # reported to the benchmark, which names the worker
        say({"error": f"{name}: {type(e).__name__}: {e}"})
        return 1
    return 0


def serve(runtime: str, model: str, image_file: str, threads: int) -> int:
    def load() -> Tuple[Dict[str, Any], Callable[[], Dict]]:
        image = np.ascontiguousarray(np.load(image_file), np.float32)
        infer = load_runtime(runtime, model, threads)

        def run() -> Dict[str, Any]:
            return {"counts": {"detections": [int(len(infer(image)[0]))]}}

        return {}, run

    return answer_loop(runtime, load)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(f"usage: python -m resdet_apps.peer_worker {{{','.join(RUNTIMES)}}} "
                 "MODEL IMAGE_NPY THREADS")  # fmt: skip
    sys.exit(serve(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
