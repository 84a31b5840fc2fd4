"""Speed benchmark: resdet's detectors against torchvision's Faster R-CNN, on the same images.

What is compared (``BENCHMARKS.md`` has the latest numbers and the command that made them):

- **Models** are named ``base[+mod...]``. Bases: ``r18_fpn``, ``r50_fpn``, ``r101_fpn``,
  ``r18_c4``, ``r50_c4`` (the paper's 300 test proposals), ``r50_c4_1000`` (1000 test
  proposals, detectron2's C4 setting), ``r101_c4``, and torchvision's ``tv_r18_fpn``,
  ``tv_r50_fpn``, ``tv_r101_fpn``. Modifiers (resdet only): ``fold`` (frozen BN folded into the
  convolutions, :mod:`resdet.layers.fold`; in training folded on the fly, same parameters and
  keys), ``fuse`` (folded, then conv + bias + ReLU + residual
  add as single oneDNN calls in channels_last, :mod:`resdet.layers.fuse`), ``wino`` (fused,
  and 3x3 stride-1 convolutions as NNPACK Winograd convolutions; in training their forward and
  backward as Winograd convolutions, :mod:`resdet.layers.winograd`), ``cl``
  (channels_last), ``bf16`` (CPU/CUDA
  autocast), ``compile`` (``torch.compile`` of the backbone with inductor weight freezing;
  inference only, its compile time reported separately).
- **Equal settings.** torchvision's model is built like its COCO-pretrained default
  (``FrozenBatchNorm2d``, 3 trainable stages) with ``weights=None`` -- nothing is downloaded --
  and with resdet's R50-FPN settings: number of classes, pre/post-NMS top-k (test and train),
  NMS and score thresholds, detections per image, RoIs sampled per image, RoIAlign sampling
  ratio. Every model sees the same uint8 image(s) of exactly ``size`` (no resize is needed;
  torchvision's transform still runs its own, a scale-1 bilinear pass it always pays).
- **Calibrated random weights.** With random weights the RPN and the box head are degenerate
  (all class scores ~1/81 < the 0.05 threshold: zero detections, no NMS work).
  :func:`~resdet.utils.calibrate.calibrate_` sets every frozen BN's statistics from the
  benchmark image (so activations are unit-scale through the whole trunk, like a trained
  network's) and scales the class logits to a standard deviation of 2, so each model produces
  its configured number of proposals and detections. The counts each model produced are
  reported next to its time.
- **Timing.** Every model of a mode runs in a worker process of its own
  (:class:`~resdet_apps.benchmark_workers.NativeRunner`; ``--in-process``: all in this one),
  alternating (one run of each per round) after ``warmup`` rounds, so a change of machine
  load hits them alike; the median, min and max wall time and the median process CPU time of
  ``repeats`` rounds are reported.
  **Runtime peers** (onnxruntime, OpenVINO) run resdet's ONNX export of one model, each in its
  own process and one run per round like the others (:mod:`resdet_apps.benchmark_peers`).
  Inference runs under ``torch.inference_mode``; a training step is forward, backward and an
  SGD step on a batch of images with ground-truth boxes.
- **Memory.** Peak resident memory (``VmHWM``) of a process that loads the same calibrated
  weights and runs the same work once: the model's worker, read after its first unit
  (``tracemalloc`` does not see torch's CPU allocations); ``work`` is the peak minus the
  process's RSS just before the work started.

The report's markdown and JSON are written by :mod:`resdet_apps.benchmark_report`.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d

from resdet.accel import inference_copy, to_channels_last, training_paths_
from resdet.config import load_config
from resdet.config.load import packaged_config_path
from resdet.config.schema import Config
from resdet.data.shapes_render import make_scene
from resdet.utils.calibrate import calibrate_

logger = logging.getLogger(__name__)

NUM_CLASSES = 80  # COCO: the setting all published timings use

# base name -> (packaged config, overrides)
RESDET_MODELS: Dict[str, Tuple[str, List[str]]] = {
    "r18_fpn": ("coco_r50_fpn.yaml", ["MODEL.BACKBONE.DEPTH", "18"]),
    "r50_fpn": ("coco_r50_fpn.yaml", []),
    "r101_fpn": ("coco_r50_fpn.yaml", ["MODEL.BACKBONE.DEPTH", "101"]),
    "r18_c4": ("coco_r50_c4.yaml", ["MODEL.BACKBONE.DEPTH", "18"]),
    "r50_c4": ("coco_r50_c4.yaml", []),
    "r50_c4_1000": ("coco_r50_c4.yaml", ["MODEL.RPN.POST_NMS_TOPK_TEST", "1000"]),
    "r101_c4": ("coco_r101.yaml", []),
}
TV_MODELS = {"tv_r18_fpn": 18, "tv_r50_fpn": 50, "tv_r101_fpn": 101}
MODIFIERS = ("fold", "fuse", "wino", "cl", "bf16", "compile")
TRAIN_ONLY_INVALID = ("fuse", "compile")  # inference-only fast paths


@dataclass
class ModelSpec:
    """A parsed model name: ``base`` plus fast-path modifiers, e.g. ``r50_fpn+fold+cl``."""

    name: str
    base: str
    mods: Tuple[str, ...]

    @property
    def is_torchvision(self) -> bool:
        return self.base in TV_MODELS

    @staticmethod
    def parse(name: str) -> ModelSpec:
        base, *mods = name.strip().split("+")
        if base not in RESDET_MODELS and base not in TV_MODELS:
            known = sorted([*RESDET_MODELS, *TV_MODELS])
            raise ValueError(f"unknown model '{base}' in '{name}'; choose from {known}")
        bad = [m for m in mods if m not in MODIFIERS]
        if bad:
            raise ValueError(f"unknown modifier(s) {bad} in '{name}'; choose from {MODIFIERS}")
        if {"fuse", "wino"} & set(mods) and "compile" in mods:
            raise ValueError(
                f"'{name}': compile the folded model ('+fold+compile'); inductor "
                "does its own fusion and cannot trace the hand-fused modules"
            )
        if base in TV_MODELS and mods:
            raise ValueError(f"'{name}': torchvision models run as shipped, without modifiers")
        return ModelSpec(name.strip(), base, tuple(mods))


def resdet_config(base: str) -> Config:
    """The config of a resdet base model (COCO settings, ``NUM_CLASSES`` 80)."""
    file, opts = RESDET_MODELS[base]
    overrides = [*opts, "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES)]
    return load_config(packaged_config_path(file), overrides)


def build_torchvision(depth: int, cfg: Config) -> nn.Module:
    """torchvision's ``fasterrcnn_resnet50_fpn`` recipe (any depth) with resdet's settings.

    As ``fasterrcnn_resnet50_fpn(weights=...)`` builds it for fine-tuning: ``FrozenBatchNorm2d``
    and ``trainable_backbone_layers=3`` (res3..res5 trainable). Random init, no download.
    ``cfg`` is resdet's R50-FPN config, whose proposal counts and thresholds are copied.
    """
    from torchvision.models import resnet
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import MultiScaleRoIAlign

    trunk = getattr(resnet, f"resnet{depth}")(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(trunk, trainable_layers=3)
    r, h = cfg.MODEL.RPN, cfg.MODEL.ROI_HEADS
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], h.POOLER_RESOLUTION, h.POOLER_SAMPLING_RATIO)
    return FasterRCNN(
        backbone,
        num_classes=h.NUM_CLASSES + 1,  # torchvision counts the background class
        min_size=cfg.INPUT.MIN_SIZE_TEST,
        max_size=cfg.INPUT.MAX_SIZE_TEST,
        box_roi_pool=pooler,
        rpn_pre_nms_top_n_train=r.PRE_NMS_TOPK_TRAIN,
        rpn_pre_nms_top_n_test=r.PRE_NMS_TOPK_TEST,
        rpn_post_nms_top_n_train=r.POST_NMS_TOPK_TRAIN,
        rpn_post_nms_top_n_test=r.POST_NMS_TOPK_TEST,
        rpn_nms_thresh=r.NMS_THRESH,
        rpn_batch_size_per_image=r.BATCH_SIZE_PER_IMAGE,
        box_score_thresh=h.SCORE_THRESH_TEST,
        box_nms_thresh=h.NMS_THRESH_TEST,
        box_detections_per_img=h.DETECTIONS_PER_IMAGE,
        box_batch_size_per_image=h.BATCH_SIZE_PER_IMAGE,
        box_positive_fraction=h.POSITIVE_FRACTION,
    )


def build_base_model(spec: ModelSpec, size: Tuple[int, int], seed: int = 0) -> nn.Module:
    """The model of ``spec.base`` with seeded random weights, sized for ``size`` = (h, w)."""
    torch.manual_seed(seed)
    if spec.is_torchvision:
        cfg = resdet_config("r50_fpn")
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min(size), max(size)
        return build_torchvision(TV_MODELS[spec.base], cfg)
    from resdet.modeling.detection.build import build_detector

    return build_detector(resdet_config(spec.base))


# ----------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """The images one unit of work uses, in each toolkit's own input format."""

    resdet: List[Dict[str, torch.Tensor]]
    tv_images: List[torch.Tensor]
    tv_targets: List[Dict[str, torch.Tensor]]


def make_inputs(size: Tuple[int, int], batch: int, seed: int = 0) -> Inputs:
    """``batch`` scenes of ``size``. resdet takes uint8 RGB 0-255 and labels ``0..K-1``;
    torchvision takes float RGB 0-1 and labels ``1..K`` (0 is its background)."""
    rd, tv_img, tv_tgt = [], [], []
    for i in range(batch):
        image, boxes, labels = make_scene(size, i, seed)
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        b, lab = torch.from_numpy(boxes), torch.from_numpy(labels)
        rd.append({"image": img, "boxes": b, "labels": lab})
        tv_img.append(img.float() / 255.0)
        tv_tgt.append({"boxes": b, "labels": lab + 1})
    return Inputs(rd, tv_img, tv_tgt)


# ----------------------------------------------------------------------------- work units


class Runner:
    """A model of one spec, prepared for one mode, with the callable that does one unit of work.

    ``mode`` "infer": one image through the eval-mode model under ``inference_mode``.
    ``mode`` "train": one training step (forward, loss sum, backward, SGD step) on ``batch``
    images. ``counts`` holds the proposals / detections per image of the latest run.
    """

    def __init__(
        self, spec: ModelSpec, model: nn.Module, mode: str, inputs: Inputs, lr: float = 1e-6
    ) -> None:
        self.spec, self.mode, self.inputs = spec, mode, inputs
        self.counts: Dict[str, Any] = {}
        self.compile_s: float | None = None
        if mode == "train" and set(spec.mods) & set(TRAIN_ONLY_INVALID):
            raise ValueError(f"{spec.name}: {TRAIN_ONLY_INVALID} are inference-only modifiers")
        cl = "cl" in spec.mods
        if mode == "infer":
            fuse = bool({"fuse", "wino"} & set(spec.mods))
            model = inference_copy(model, fold="fold" in spec.mods, fuse=fuse,
                                   winograd="wino" in spec.mods, inplace=True)  # fmt: skip
        else:
            # On the fly (same parameters and keys); Winograd forward and both gradients.
            training_paths_(model, fold="fold" in spec.mods, winograd="wino" in spec.mods)
            model.train()
        if cl:
            model = to_channels_last(model)
        if "compile" in spec.mods:
            import torch._inductor.config as inductor_config

            # Freezing folds the (constant) weights into the graph and prepacks them for
            # oneDNN, which is what makes inductor fast for CPU inference.
            inductor_config.freezing = True
            model.backbone = torch.compile(model.backbone)
        self.model = model
        self.device_type = "cpu"
        self.amp = "bf16" in spec.mods
        params = [p for p in model.parameters() if p.requires_grad]
        # A tiny learning rate: the optimizer does all its arithmetic, the weights (and so the
        # proposals each step produces) barely move between repeats.
        self.optimizer = (
            torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
            if mode == "train"
            else None
        )
        model.rpn.register_forward_hook(self._count_proposals)

    def _count_proposals(self, module: nn.Module, args: Any, output: Any) -> None:
        self.counts["proposals"] = [int(len(p)) for p in output[0]]

    def _autocast(self) -> Any:
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp)

    def __call__(self) -> None:
        if self.mode == "infer":
            with torch.inference_mode(), self._autocast():
                if self.spec.is_torchvision:
                    out = self.model(self.inputs.tv_images[:1])
                else:
                    out = self.model(self.inputs.resdet[:1])
            self.counts["detections"] = [int(len(o["boxes"])) for o in out]
            return
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            if self.spec.is_torchvision:
                losses = self.model(self.inputs.tv_images, self.inputs.tv_targets)
            else:
                losses = self.model(self.inputs.resdet)
        total = sum(losses.values())
        total.backward()
        self.optimizer.step()
        self.counts["loss"] = float(total.detach())


def calibrated_model(spec: ModelSpec, size: Tuple[int, int], seed: int = 0) -> nn.Module:
    """The base model of ``spec``, calibrated on the benchmark image (see :func:`calibrate_`)."""
    model = build_base_model(spec, size, seed)
    inputs = make_inputs(size, 1, seed)
    base = ModelSpec(spec.base, spec.base, ())
    if base.is_torchvision:
        run = lambda: model(inputs.tv_images)  # noqa: E731
    else:
        run = lambda: model(inputs.resdet)  # noqa: E731
    calibrate_(model, run)
    logger.info("calibrated %s (%s)", spec.base, base.name)
    return model


def time_alternating(
    runners: Sequence[Callable[[], Optional[Tuple[float, float]]]],
    names: Sequence[str],
    warmup: int,
    repeats: int,
) -> Dict[str, Dict[str, Any]]:
    """Run each runner once per round, ``warmup + repeats`` rounds; time the last ``repeats``.

    A runner that times itself (a runtime peer in its own process) returns its ``(wall, cpu)``
    seconds, which are taken instead of this process's clocks. Returns ``{name: {"wall":
    [s...], "cpu": [s...], "first_s": s}}``; ``first_s`` is the first (warm-up) call, which for
    ``torch.compile`` is the compile time.
    """
    out: Dict[str, Dict[str, Any]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(warmup + repeats):
        for run, name in zip(runners, names):
            t0, c0 = time.perf_counter(), time.process_time()
            own = run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if own is not None:
                wall, cpu = own
            if r == 0:
                out[name]["first_s"] = wall
            if r >= warmup:
                out[name]["wall"].append(wall)
                out[name]["cpu"].append(cpu)
            logger.info("round %d %-24s %.3f s", r, name, wall)
    return out


def summarize(times: List[float]) -> Dict[str, float]:
    """Median, min and max of a list of seconds."""
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def gemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    """Achieved fp32 GEMM throughput (``[n, n] @ [n, n]``, best of ``repeats``) in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def backbone_flops(backbone: nn.Module, shape: Tuple[int, ...]) -> int:
    """FLOPs (2 per multiply-add) of one backbone forward on ``shape``, counted on ``meta``."""
    from resdet.modeling.stats import count_macs

    meta = copy.deepcopy(backbone).to("meta")
    return 2 * count_macs(meta, torch.zeros(shape, device="meta"))[1]["Global"]
