"""How many detector iterations ``make demo`` runs here: as many as fit its time budget at the
speed measured on this CPU.

The demo trains two chains side by side, one core each: the classifier then the pretrained
detector, and the from-scratch detector. Both detectors run the same iterations (the transfer
comparison), so the fitted count is the largest that lets the longer chain finish its training
within :data:`BUDGET_SECONDS`:

    n = min((budget - classifier seconds) / pretrained step, budget / from-scratch step)

rounded down to a hundred and kept within [:data:`MIN_ITERS`, :data:`MAX_ITERS`]. A detector's
step is its fastest training path's probe pass (:mod:`resdet.accel`, the measurement that
picks the path, taken again here) times :data:`STEP_OVERHEAD`; the classifier's is timed here
on random crops. On a CPU twice as fast the demo trains twice as long, not half as long; on a
slow one it stays within the budget with fewer iterations.

The probes are timed as the demo trains: one thread, and, where the demo runs its two chains
side by side, with the other core kept busy by a sibling process training a detector
(:func:`other_core_busy`). Two cores of a host slow each other (hyperthreads of one physical
core, shared caches and memory bandwidth) by a factor that depends on the host: 1.0-1.1 on the
AVX2 EPYC, 1.25-1.4 on the AVX-512-BF16 one, where probes timed alone fitted 5,300 iterations
that ran 1.38x slower than predicted.

The count is written to ``<output>/fitted_schedule.json`` and read back by a re-run of the same
schedule, so resuming an interrupted demo never changes its settings.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Iterator, Optional

import torch
import torch.nn.functional as F

from resdet.config.load import save_config
from resdet.config.schema import Config
from resdet.utils.machine import usable_cores
from resdet_apps import child_env

logger = logging.getLogger(__name__)

__all__ = ["BUDGET_SECONDS", "FIT_FILE", "fit_iterations", "fitted_det_iters", "other_core_busy"]

# Training time of the longer chain: the 15 minutes of `make demo` less set-up (a fresh venv:
# 1.2-2.4 min), data (12-29 s), the final evaluation (~25-30 s with the mirrored view; the
# periodic ones are in STEP_OVERHEAD), the fit's probes (~10 s), the report, and ~1 minute
# for the host slowing down after the fit measured it. 590 s with STEP_OVERHEAD 1.15, the
# fit's first settings after it took its probes afresh, fitted 2,500 iterations that ran at
# 1.00x the probe and ended in 10 min 56 s with set-up (a fast hour of an AVX2 EPYC).
BUDGET_SECONDS = 620.0
# A real training iteration over the probe's pass (two images of the training size, forward and
# backward, the fastest of three; the real one adds the optimizer step, the data and the
# periodic evaluations, and shares the machine with the other chain). Measured in `make demo`
# on a 2-core AVX2 EPYC, the probe timed by the fit itself: pretrained 0.161 s per iteration
# for a 0.161 s probe (1.00x), from scratch 0.195 for 0.176 (1.11x, beside the classifier
# then the pretrained detector); in the next run 0.151 for 0.157 (0.96x) and 0.196 for 0.180
# (1.09x). The pretrained chain, the one the classifier lengthens, is the one that binds.
# Those probes were timed alone; timed beside a busy core (other_core_busy) they already hold
# most of the other chain's slowing (0-11% there), so on that CPU 1.1 now predicts a few
# percent high: fewer iterations, still within the budget.
STEP_OVERHEAD = 1.1
# The classifier run over its timed steps: data loading, augmentation, evaluations, the other
# chain beside it. Measured there: 222 s for 1,400 steps (0.159 s each) timed at 0.089-0.100 s
# (1.6-1.8x) before the decoded-crop cache; since it, at 1.8x the fit predicted 131, 118, 120
# and 237 s for runs of 119, 111, 104 and 173 s (1.07-1.37x too long): 1.7 keeps the
# prediction at or above the run in all four. Those steps were timed alone; now timed beside a
# busy core they already hold the other chain's part, so 1.7 predicts a little high there.
CLS_OVERHEAD = 1.7
MIN_ITERS, MAX_ITERS = 500, 6000
FIT_FILE = "fitted_schedule.json"
# The sibling's own deadline, should the fit end without stopping it, and how long it may take
# to start computing (imports and building a detector: 3-5 s here) before the fit goes on alone.
SIBLING_SECONDS = 300.0
SIBLING_START_SECONDS = 60.0
# The sibling: training passes of a detector, one thread, until killed or its deadline.
_SIBLING = """
import sys, time, torch
torch.set_num_threads(1)
from resdet.accel import probe_size
from resdet.accel.measure import probe_batch
from resdet.config.load import load_config
from resdet.modeling.detection.build import build_detector
cfg = load_config(sys.argv[1])
model = build_detector(cfg).train()
batch = probe_batch(probe_size(cfg, True), train=True)
amp = cfg.SOLVER.AMP.ENABLED
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = sum(model(batch).values())
    loss.backward()
    model.zero_grad(set_to_none=True)
"""


@contextlib.contextmanager
def other_core_busy(cfg: Config) -> Iterator[Optional[subprocess.Popen]]:
    """Keep another core busy, as the demo's other chain will, while the block runs: a
    subprocess training the detector ``cfg`` describes (its weights random: the load is what
    counts), one thread, stopped when the block ends. Yields the process once it computes, or
    None (a one-core machine; a process that failed to start: the probes are then timed alone,
    and a warning says so)."""
    if usable_cores() < 2:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sibling.yaml")
        sibling = copy.deepcopy(cfg)
        sibling.MODEL.WEIGHTS, sibling.MODEL.BACKBONE.PRETRAINED = "", ""
        save_config(sibling, path)
        cmd = [sys.executable, "-c", _SIBLING, path, str(SIBLING_SECONDS)]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=child_env())  # fmt: skip
        try:
            running = _started(proc, SIBLING_START_SECONDS)
            if not running:
                logger.warning("the fit's sibling load did not start: probes timed alone")
            yield proc if running else None
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _started(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether ``proc`` printed "ready" within ``timeout`` seconds (read in a thread: a child
    that hangs before it never blocks the fit)."""
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout or ():
            if line.strip() == "ready":
                ready.set()
                return

    threading.Thread(target=read, daemon=True).start()
    return ready.wait(timeout)


def fit_iterations(
    cls_seconds: float,
    pre_step: float,
    scratch_step: Optional[float],
    budget: float = BUDGET_SECONDS,
) -> int:
    """Detector iterations that let both chains train within ``budget`` seconds: the
    pretrained one after ``cls_seconds`` of classifier, at ``pre_step`` s per iteration, and
    the from-scratch one (None: not run) at ``scratch_step``."""
    n = (budget - cls_seconds) / pre_step
    if scratch_step is not None:
        n = min(n, budget / scratch_step)
    return int(min(MAX_ITERS, max(MIN_ITERS, n // 100 * 100)))


def _detector_step(cfg: Config) -> float:
    """Predicted seconds per training iteration of the detector ``cfg`` builds, one thread."""
    from resdet.accel import training_step_times
    from resdet.modeling.detection.build import build_detector

    # Measured now, not read from the cache: the host's speed moves by tens of percent from
    # hour to hour (a probe cached in a slower hour fitted 1,800 iterations that ran at 0.17 s
    # for 0.24 predicted: 9 min 32 s of the 15 minutes with set-up). The new times replace
    # the cached ones, so the training run's own path choice reads this measurement back.
    times = training_step_times(build_detector(cfg), cfg, remeasure=True)
    if cfg.SOLVER.AMP.ENABLED and "bf16" in times:
        probe = times["bf16"]
    else:
        probe = min(t for k, t in times.items() if k != "bf16")  # the fastest fp32 path
    return probe * STEP_OVERHEAD * cfg.SOLVER.IMS_PER_BATCH / 2


def _classifier_seconds(cfg: Config, rounds: int = 8) -> float:
    """Predicted seconds of the classifier run ``cfg`` describes: a training step on random
    crops timed here (the median of ``rounds`` after one untimed: a minimum of three varied
    from 59 to 89 ms within an hour on the AVX2 EPYC, the real run not) x iterations."""
    from resdet.modeling.classifier import build_classifier

    model = build_classifier(cfg).train()
    size = cfg.INPUT.CROP_SIZE
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.SOLVER.IMS_PER_BATCH, 3, size, size, generator=g)
    y = torch.randint(0, cfg.MODEL.NUM_CLASSES, (cfg.SOLVER.IMS_PER_BATCH,), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(rounds + 1):
        t = time.perf_counter()
        F.cross_entropy(model(x)["logits"], y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]) * CLS_OVERHEAD * cfg.SOLVER.MAX_ITER


def fitted_det_iters(
    output: str,
    schedule: str,
    configs: Dict[str, Config],
    budget: float = BUDGET_SECONDS,
    parallel: bool = True,
) -> int:
    """The detector iterations of this demo run (``configs`` as
    :func:`resdet_apps.demo.build_configs` returns them): read from ``output/fitted_schedule.json``
    when an earlier run of ``schedule`` fitted them, else measured with one thread, as the demo
    trains (with ``parallel``, the chains side by side: beside :func:`other_core_busy`), and
    written there. 0 where the detectors train on a GPU: the fit times CPU steps, so the
    schedule's own iterations run there (a GPU trains them in minutes)."""
    from resdet.engine.runtime import resolve_device

    device = resolve_device(configs["det"].MODEL.DEVICE)
    if device.type != "cpu":
        logger.info("detectors train on %s: no fit to the CPU, the schedule's iterations", device)
        return 0
    path = os.path.join(output, FIT_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("schedule") == schedule and saved.get("budget_seconds") == budget:
            return int(saved["det_iters"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    beside = parallel and "scratch" in configs
    load = other_core_busy(configs["scratch"]) if beside else contextlib.nullcontext(None)
    try:
        with load as loaded:
            cls_s = _classifier_seconds(configs["cls"])
            pre = _detector_step(configs["det"])
            scratch = _detector_step(configs["scratch"]) if "scratch" in configs else None
    finally:
        torch.set_num_threads(threads)
    n = fit_iterations(cls_s, pre, scratch, budget)
    record = {
        "schedule": schedule,
        "budget_seconds": budget,
        "det_iters": n,
        "classifier_seconds": round(cls_s, 1),
        "pretrained_step_seconds": round(pre, 4),
        "scratch_step_seconds": None if scratch is None else round(scratch, 4),
        "timed_beside_a_busy_core": loaded is not None,
    }
    os.makedirs(output, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    logger.info("detector iterations fitted to this CPU: %d (%s)", n, json.dumps(record))
    return n
