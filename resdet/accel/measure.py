"""A short measurement of which CPU fast path is fastest for a model on this machine, cached.

Which convolution path trains or infers fastest depends on the CPU, not only on its flags,
and on the model: NNPACK's Winograd kernels beat oneDNN on AVX2-only CPUs for R50-FPN and lose
on AVX-512 ones; on the same AVX2 CPU the demo's narrow R18-FPN trains fastest with neither
Winograd nor channels_last; bf16 autocast is 1.35-1.9x faster than float32 on an AMX Xeon but
*slower* (0.64x inference, 0.79x training on R50-FPN) on an AVX-512-BF16 Xeon without AMX
(``BENCHMARKS.md``). So :mod:`resdet.accel` decides by timing the candidates on the model
itself, on two images of the config's size, once:

- **training**: a training step (forward, losses, backward) of a copy of the detector with
  frozen BN folded on the fly, as is (NCHW), with its 3x3 convolutions as Winograd
  convolutions, channels_last, and, where the CPU computes bf16 natively, under bf16
  autocast;
- **inference**: the fused copy (:func:`~resdet.accel.inference_copy`) with and without
  Winograd and, where bf16 is native, the fused copy under bf16 autocast.

Each candidate runs once untimed, then up to three times in turn with the others (so a change of
load hits all alike; fewer rounds for a large model, within ~6 s of timed passes); its time is
the minimum; where every first pass takes over 6 s, that pass is the measurement. That costs
~3 s for the demo's R18-FPN and ~2 min for R50-FPN at 800 px on 2 AVX2 cores, once.
Without native bf16 (no ``avx512_bf16`` or ``amx_bf16`` flag) bf16 is emulated and 10-25x
slower (measured on an AVX2 EPYC): it is not timed.

The times are cached in ``<cache>/fastpaths.json`` under a key naming the CPU (model name and
flags), the torch version, the thread count and the model (its parameter shapes, its config's
model section and the probe size); ``<cache>`` is ``$RESDET_CACHE_DIR``, else
``$XDG_CACHE_HOME/resdet``, else ``~/.cache/resdet``. ``python tools/fast_paths.py`` shows
them and measures again (``--remeasure``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from resdet.accel.paths import inference_copy, training_paths_
from resdet.layers.winograd import winograd_available
from resdet.utils.machine import cpu_flags, cpu_has_flag, cpu_model
from resdet.utils.output import atomic_write

__all__ = [
    "PROBE_MAX_SIZE",
    "cache_path",
    "machine_key",
    "measure_paths",
    "measured_times",
    "native_bf16",
]

logger = logging.getLogger(__name__)

# The probe's shorter image side at most. The probe runs at the config's own training (or test)
# size up to this: which path wins depends on the map size (on a 2-core AVX2 EPYC, R50-FPN at
# 256 px trained fastest in NCHW, at 800x1333 1.39x faster with Winograd: measured), so a
# smaller probe than the real images chose wrongly.
PROBE_MAX_SIZE = 1024
# Timed passes stop after the round that reaches this many seconds (one round at least).
BUDGET_SECONDS = 6.0
CACHE_FILE = "fastpaths.json"
# Part of every cache key: raised when what a candidate path computes changes (version 2: the
# Winograd inference copy runs NNPACK in the FPN and RPN head only), so that times measured of
# the old kernels are not taken for the new ones.
PATHS_VERSION = 2


def native_bf16() -> bool:
    """Whether this CPU lists a native bf16 instruction (``avx512_bf16`` or ``amx_bf16``).

    Without one bf16 is emulated and many times slower than float32, so it is not worth timing.
    Unknown flags (not Linux) count as native: the measurement then decides.
    """
    if cpu_flags() is None:
        return True
    return cpu_has_flag("avx512_bf16") or cpu_has_flag("amx_bf16")


def cache_path() -> str:
    """``fastpaths.json`` in ``$RESDET_CACHE_DIR``, ``$XDG_CACHE_HOME/resdet`` or
    ``~/.cache/resdet``."""
    root = os.environ.get("RESDET_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "resdet")
    return os.path.join(root, CACHE_FILE)


def machine_key() -> str:
    """What the times depend on besides the model: CPU, flags, torch version, threads."""
    flags = ",".join(sorted(cpu_flags() or ()))
    digest = hashlib.sha1(flags.encode()).hexdigest()[:12]
    threads = torch.get_num_threads()
    return f"{cpu_model()} | flags {digest} | torch {torch.__version__} | threads {threads}"


def _model_key(model: nn.Module, settings: str, size: int, train: bool) -> str:
    shapes = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.state_dict().items())
    digest = hashlib.sha1((shapes + settings).encode()).hexdigest()[:12]
    return f"{'train' if train else 'infer'} | model {digest} | {size}px | paths v{PATHS_VERSION}"


def _read_cache(path: str) -> Dict[str, Dict[str, float]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: str, key: str, times: Dict[str, float]) -> None:
    """Add ``key`` to the cache file; atomically (a half-written file is never read), with the
    umask's mode like any other file. A cache that cannot be written is only a warning: the
    next run measures again."""
    data = _read_cache(path)
    data[key] = times
    text = json.dumps(data, indent=1, sort_keys=True).encode("utf-8")
    try:
        atomic_write(path, lambda f: f.write(text))
    except OSError as e:  # OutputError included
        logger.warning("could not write the fast-path cache %s (%s): measuring again next run",
                       path, e)  # fmt: skip


def probe_batch(size: int, train: bool) -> List[Dict[str, torch.Tensor]]:
    """Two seeded images, ``size x 4/3 size`` and ``4/3 size x size`` (padded into one batch
    as training pads a landscape and a portrait image), with four boxes of class 0 each for
    training: the input every candidate sees."""
    g = torch.Generator().manual_seed(0)
    long = size * 4 // 3
    batch = []
    for h, w in ((size, long), (long, size)):
        item: Dict[str, torch.Tensor] = {
            "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        }
        if train:
            xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
            wh = (torch.rand(4, 2, generator=g) * 0.3 + 0.1) * torch.tensor([w, h])
            item["boxes"] = torch.cat([xy, xy + wh], dim=1)
            item["labels"] = torch.zeros(4, dtype=torch.int64)
        batch.append(item)
    return batch


def _candidates(
    model: nn.Module, size: int, train: bool, bf16: bool
) -> Dict[str, Callable[[], None]]:
    """The paths to time, each as a zero-argument callable running one pass of a copy of
    ``model`` (a detector taking resdet's list-of-dicts batch)."""
    batch = probe_batch(size, train)
    runs: Dict[str, Callable[[], None]] = {}
    if train:

        def trainer(winograd: bool = False, channels_last: bool = False, amp: bool = False):
            m = copy.deepcopy(model).train()
            training_paths_(m, fold=True, winograd=winograd, channels_last=channels_last)

            def run() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    loss = sum(m(batch).values())
                loss.backward()
                m.zero_grad(set_to_none=True)

            return run

        runs["nchw"] = trainer()
        runs["channels_last"] = trainer(channels_last=True)
        if winograd_available():
            runs["winograd"] = trainer(winograd=True)
        if bf16:
            runs["bf16"] = trainer(channels_last=True, amp=True)
    else:

        def inferer(winograd: bool = False, amp: bool = False):
            m = inference_copy(model, fuse=True, winograd=winograd)

            def run() -> None:
                with (
                    torch.inference_mode(),
                    torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp),
                ):
                    m(batch)

            return run

        runs["fused"] = inferer()
        if winograd_available():
            runs["fused_winograd"] = inferer(winograd=True)
        if bf16:
            runs["bf16"] = inferer(amp=True)
    return runs


def measure_paths(
    model: nn.Module,
    size: int = PROBE_MAX_SIZE,
    train: bool = True,
    rounds: int = 3,
    budget: float = BUDGET_SECONDS,
) -> Dict[str, float]:
    """Seconds per pass of each candidate path on ``model``: one untimed pass each, then up to
    ``rounds`` rounds of one timed pass each in turn (at least one; no new round once the timed
    passes have taken ``budget`` seconds); each candidate's time is its minimum.

    ``model``: a float32 CPU detector taking resdet's batch (:func:`probe_batch`); it is not
    changed (each candidate works on a copy).
    """
    # The training passes sample anchors and RoIs from torch's global generator: run them on a
    # fork of it, so a run that measured and one that read the cache train identically (and a
    # resumed run stays bit-exact).
    with torch.random.fork_rng(devices=[]):
        runs = _candidates(model, size, train=train, bf16=native_bf16())
        times: Dict[str, List[float]] = {name: [] for name in runs}
        first = {}
        for name, run in runs.items():
            t = time.perf_counter()
            run()  # first-call allocations and kernel selection: untimed, unless long
            first[name] = time.perf_counter() - t
        if min(first.values()) >= budget:  # passes this long: their first-call cost is noise
            return first
        spent = 0.0
        for _ in range(rounds):
            for name, run in runs.items():
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
                spent += times[name][-1]
            if spent >= budget:
                break
    return {name: min(ts) for name, ts in times.items()}


def measured_times(
    model: nn.Module, size: int, train: bool, settings: str = "", remeasure: bool = False
) -> Dict[str, float]:
    """:func:`measure_paths` for this machine and model, from the cache when it holds them
    (``remeasure``: time again and replace them). ``settings``: what else the model's speed
    depends on (the config's model section), part of the cache key."""
    size = min(size, PROBE_MAX_SIZE)
    key = f"{machine_key()} | {_model_key(model, settings, size, train)}"
    path = cache_path()
    cached: Optional[Dict[str, float]] = None if remeasure else _read_cache(path).get(key)
    if cached:
        return cached
    start = time.perf_counter()
    times = measure_paths(model, size=size, train=train)
    logger.info("measured the %s fast paths of this model in %.1f s (%s): %s",
                "training" if train else "inference", time.perf_counter() - start, path,
                ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()))  # fmt: skip
    _write_cache(path, key, times)
    return times
