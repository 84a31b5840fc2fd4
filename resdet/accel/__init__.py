"""The one place that decides which fast paths run, for training and for inference.

Training, evaluation, the :class:`~resdet.predictor.Predictor`, export, the benchmark and the
demo all call this package; none of them assembles or chooses a fast path itself.

- :func:`prepare_for_training` changes a detector in place for training: frozen BN applied to
  the weights on the fly (``SOLVER.FOLD_FROZEN_BN``), then the CPU's convolution path
  (:func:`cpu_training_path`: Winograd, channels_last or neither). Parameters, state-dict keys
  and the optimizer stay as they are.
- :func:`inference_model` makes an eval-mode copy for inference: BN folded into the
  convolutions, on CPU conv + bias + ReLU (+ residual add) fused into single oneDNN calls and,
  where it pays (:func:`inference_winograd`), 3x3 convolutions as Winograd convolutions. The
  model itself is left untouched (it may be training).
- :func:`bf16_pays`: whether bf16 autocast is faster than float32 here (the demo's schedule).
- :func:`set_threads`: the intra-op thread count (``THREADS`` / ``--threads``).

**How a path is chosen** (````ACCEL.DECIDE``; the environment variable ``RESDET_ACCEL_DECIDE``
overrides the config, e.g. in a test suite):

- ``"measure"`` (default): the candidates the config allows (``SOLVER.WINOGRAD``,
  ``SOLVER.CPU_CHANNELS_LAST``, ``TEST.WINOGRAD``) are timed on the model itself at the
  config's image size, once per machine, torch version, thread count and model
  (:mod:`resdet.accel.measure`: ~3 s for a small model, ~2 min for R50-FPN at 800 px on 2
  AVX2 cores; cached); a path other than the plain one is taken when it is at least 3% faster
  (bf16: 10%).
  bf16 is timed only where the CPU computes it natively (``avx512_bf16`` or ``amx_bf16``):
  emulated bf16 is 10-25x slower.
- ``"isa"``: the fixed rule by CPU capability measured on two machines (``BENCHMARKS.md``):
  Winograd on AVX2-only CPUs (:func:`winograd_pays`), channels_last training on AVX-512 ones
  (:func:`channels_last_pays_for_training`), bf16 with AMX. No timing.
- ``"config"``: what the config allows is used, untimed (Winograd before channels_last).

How each path is applied is :mod:`resdet.accel.paths`; the kernels are in
:mod:`resdet.layers`.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from resdet.accel.measure import PROBE_MAX_SIZE, measured_times, native_bf16
from resdet.accel.paths import (
    fuse_for_inference,
    inference_copy,
    to_channels_last,
    training_paths_,
)
from resdet.config.load import ConfigError
from resdet.config.schema import Config
from resdet.layers.winograd import winograd_available
from resdet.utils.machine import cpu_has_flag

__all__ = [
    "DECIDE_MODES",
    "bf16_pays",
    "probe_size",
    "channels_last_pays_for_training",
    "cpu_training_path",
    "decide_mode",
    "fast_path_report",
    "fuse_for_inference",
    "inference_copy",
    "inference_model",
    "inference_winograd",
    "prepare_for_training",
    "set_threads",
    "to_channels_last",
    "training_paths_",
    "training_step_times",
    "winograd_pays",
]

logger = logging.getLogger(__name__)

DECIDE_MODES = ("measure", "isa", "config")
MARGIN = 0.97  # a path other than the plain one must be >= 3% faster to be taken
BF16_MARGIN = 0.90  # bf16 changes the numerics: it must be >= 10% faster


def decide_mode(cfg: Config) -> str:
    """``ACCEL.DECIDE``, or ``$RESDET_ACCEL_DECIDE`` where set; checked against
    :data:`DECIDE_MODES`."""
    mode = os.environ.get("RESDET_ACCEL_DECIDE") or cfg.ACCEL.DECIDE
    if mode not in DECIDE_MODES:
        raise ConfigError(
            f"ACCEL.DECIDE (or RESDET_ACCEL_DECIDE) is {mode!r}; expected one of "
            + ", ".join(repr(m) for m in DECIDE_MODES)
        )
    return mode


def winograd_pays() -> bool:
    """The ``"isa"`` rule for Winograd: where the best vector ISA is AVX2.

    Measured on R50-FPN at 800x1333 (``BENCHMARKS.md``): on an AVX2-only CPU Winograd makes
    inference 1.65x torchvision's speed against 1.20x without, and the training step 1.61x; on
    an AVX-512 CPU (with AMX) oneDNN's own kernels are as fast per layer, inference is slower
    with Winograd (1.30x against 1.68x) and training is fastest channels_last without it
    (1.42x against 1.26x: :func:`channels_last_pays_for_training`).
    """
    return winograd_available() and torch.backends.cpu.get_cpu_capability() == "AVX2"


def channels_last_pays_for_training() -> bool:
    """The ``"isa"`` rule for channels_last training: AVX-512 CPUs (R50-FPN step 1.42x
    torchvision in NHWC, 1.12x NCHW, 1.26x with Winograd; ``BENCHMARKS.md``). On the AVX2-only
    CPU measured, NHWC training was slower than NCHW."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _probe_target(model: Optional[nn.Module]) -> Optional[nn.Module]:
    """What the measurement times: a resdet detector (it has a ``backbone`` and takes the
    list-of-dicts batch), on CPU in float32; None for anything else."""
    if not isinstance(getattr(model, "backbone", None), nn.Module):
        return None
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu" or param.dtype != torch.float32:
        return None
    return model


def probe_size(cfg: Config, train: bool) -> int:
    """The shorter side of the probe images :func:`training_step_times` and the inference
    measurement use: the config's smallest size, within [32, ``PROBE_MAX_SIZE``]."""
    sizes = cfg.INPUT.MIN_SIZE_TRAIN if train else [cfg.INPUT.MIN_SIZE_TEST]
    return max(32, min(min(sizes), PROBE_MAX_SIZE))


def _times(
    model: Optional[nn.Module], cfg: Config, train: bool, remeasure: bool = False
) -> Optional[Dict[str, float]]:
    """The measured times for ``model`` (None when it has no CPU float32 backbone to time)."""
    target = _probe_target(model)
    if target is None:
        return None
    # What the speed depends on besides the weights' shapes: the model section, without the
    # paths the weights come from (a fine-tuning run and the demo's fit, whose pretrained
    # checkpoint lies in another folder, read the same measurement).
    model_cfg = copy.deepcopy(cfg.MODEL)
    model_cfg.WEIGHTS, model_cfg.BACKBONE.PRETRAINED = "", ""
    settings = repr(model_cfg)
    return measured_times(
        target, probe_size(cfg, train), train=train, settings=settings, remeasure=remeasure
    )


def training_step_times(model: nn.Module, cfg: Config, remeasure: bool = False) -> Dict[str, float]:
    """Measured seconds per probe training pass (forward and backward of two images of the
    smallest training size) of each CPU training path of the detector ``model``: the
    measurement the path choice reads (cached per machine; taken now otherwise, or with
    ``remeasure``, which also replaces the cached times)."""
    times = _times(model, cfg, train=True, remeasure=remeasure)
    if times is None:
        raise ConfigError("training steps are timed on a detector's CPU float32 backbone; "
                          "this model has none")  # fmt: skip
    return times


def fast_path_report(model: nn.Module, cfg: Config, remeasure: bool = False) -> Dict[str, Any]:
    """What ``tools/fast_paths.py`` prints: the measured seconds per probe pass of every
    candidate (training and inference; measured now when not cached or ``remeasure``) and
    what :func:`decide_mode` then chooses for ``model`` on CPU."""
    times = {
        "train": _times(model, cfg, train=True, remeasure=remeasure),
        "infer": _times(model, cfg, train=False, remeasure=remeasure),
    }
    if times["train"] is None:
        raise ConfigError("the fast paths are measured on a detector's CPU float32 backbone; "
                          "this model has none")  # fmt: skip
    cpu = torch.device("cpu")
    return {
        "mode": decide_mode(cfg),
        "times": times,
        "training_path": cpu_training_path(cfg, cpu, model),
        "inference_winograd": inference_winograd(model, cfg),
        "bf16_training": bf16_pays(model, cfg, train=True),
        "bf16_inference": bf16_pays(model, cfg, train=False),
        "native_bf16": native_bf16(),
    }


def cpu_training_path(cfg: Config, device: torch.device, model: Optional[nn.Module] = None) -> str:
    """How the detector's convolutions train on this device: ``"winograd"`` (3x3 convolutions
    as NNPACK Winograd convolutions, ``SOLVER.WINOGRAD``), ``"channels_last"`` (oneDNN's NHWC
    kernels, ``SOLVER.CPU_CHANNELS_LAST``; nothing to do when ``MODEL.CHANNELS_LAST`` already
    asks for it) or ``"none"``, chosen as :func:`decide_mode` says (``"measure"`` times
    ``model``'s backbone; without a model it falls back to the ``"isa"`` rule)."""
    if device.type != "cpu":
        return "none"
    allowed = []
    if cfg.SOLVER.WINOGRAD and winograd_available():
        allowed.append("winograd")
    if cfg.SOLVER.CPU_CHANNELS_LAST and not cfg.MODEL.CHANNELS_LAST:
        allowed.append("channels_last")
    mode = decide_mode(cfg)
    if not allowed:
        return "none"
    if mode == "config":
        return allowed[0]
    times = _times(model, cfg, train=True) if mode == "measure" else None
    if times is None:  # "isa", or nothing to time
        if "winograd" in allowed and winograd_pays():
            return "winograd"
        if "channels_last" in allowed and channels_last_pays_for_training():
            return "channels_last"
        return "none"
    base = "channels_last" if cfg.MODEL.CHANNELS_LAST else "nchw"
    best = min((p for p in allowed if p in times), key=times.__getitem__, default=None)
    path = best if best is not None and times[best] < MARGIN * times[base] else "none"
    return _same_on_all_ranks(path)


def _same_on_all_ranks(choice: str) -> str:
    """Rank 0's ``choice`` on every rank of a distributed run (each rank measures on its own,
    under the others' load, and could otherwise train its replica another way)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [choice]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return choice


def inference_winograd(model: nn.Module, cfg: Config) -> bool:
    """Whether the fused CPU inference copy of ``model`` runs its 3x3 convolutions as Winograd
    convolutions (``TEST.WINOGRAD``), chosen as :func:`decide_mode` says."""
    if not (cfg.TEST.WINOGRAD and winograd_available()):
        return False
    mode = decide_mode(cfg)
    if mode == "config":
        return True
    times = _times(model, cfg, train=False) if mode == "measure" else None
    if times is None or "fused_winograd" not in times:
        return winograd_pays()
    return times["fused_winograd"] < MARGIN * times["fused"]


def bf16_pays(model: Optional[nn.Module], cfg: Config, train: bool = True) -> bool:
    """Whether bf16 autocast is faster than float32 for ``model`` on this CPU.

    Never without native bf16 (emulated bf16 is 10-25x slower: not timed). ``"measure"``
    times it against the fastest float32 path (it must be >= 10% faster); ``"isa"`` says yes
    with AMX only (an AVX-512-BF16 Xeon without AMX measured bf16 *slower*: R50-FPN inference
    0.64x, training 0.79x float32); ``"config"`` follows ``SOLVER.AMP.ENABLED``.
    """
    if not native_bf16():
        return False
    mode = decide_mode(cfg)
    if mode == "config":
        return bool(cfg.SOLVER.AMP.ENABLED)
    times = _times(model, cfg, train=train) if mode == "measure" else None
    if times is None or "bf16" not in times:
        return cpu_has_flag("amx_bf16")
    fp32 = min(t for name, t in times.items() if name != "bf16")
    return times["bf16"] < BF16_MARGIN * fp32


def set_threads(threads: int) -> int:
    """Use ``threads`` intra-op threads in this process (``THREADS`` / ``--threads``); 0 keeps
    torch's default (one per core, or ``OMP_NUM_THREADS``). Returns the count in use.

    Lower it when other processes share the cores: oversubscribed threads wait on each other
    (a 1-thread run measured 2.7x faster than the default on a loaded 2-core machine).
    """
    if threads < 0:
        raise ConfigError(f"THREADS is {threads}; expected 0 (torch's default) or a positive count")
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def prepare_for_training(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """The detector ``model`` (in place) with the training fast paths ``cfg`` asks for and this
    device pays for: ``SOLVER.FOLD_FROZEN_BN``, then :func:`cpu_training_path`. Returns it."""
    path = cpu_training_path(cfg, device, model)
    done = training_paths_(
        model,
        fold=cfg.SOLVER.FOLD_FROZEN_BN,
        winograd=path == "winograd",
        channels_last=path == "channels_last",
    )
    if cfg.SOLVER.FOLD_FROZEN_BN:
        logger.info("frozen BN applied to the weights of %d convolutions (SOLVER.FOLD_FROZEN_BN)",
                    done["fold"])  # fmt: skip
    if path == "winograd":
        logger.info("%d 3x3 convolutions train as Winograd convolutions, %d 1x1 ones as GEMMs "
                    "(SOLVER.WINOGRAD)", done["winograd"], done["gemm"])  # fmt: skip
    elif path == "channels_last":
        logger.info("the detector trains channels_last (SOLVER.CPU_CHANNELS_LAST)")
    return model


def inference_model(model: nn.Module, cfg: Config) -> nn.Module:
    """The model to run evaluation and inference with.

    With ``TEST.FAST_INFERENCE`` (the default) an eval-mode copy of ``model`` with BN folded
    into the convolutions and, on CPU, conv + bias + ReLU (+ residual add) fused into single
    oneDNN calls and, where :func:`inference_winograd` says so, 3x3 convolutions run as
    Winograd convolutions (:func:`~resdet.accel.paths.inference_copy`); it gives the same
    detections within float rounding. ``model`` itself is left as it is (it may be training).
    Without it, ``model`` itself.
    """
    if not cfg.TEST.FAST_INFERENCE:
        return model
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    winograd = on_cpu and inference_winograd(model, cfg)
    return inference_copy(model, fuse=on_cpu, winograd=winograd)
