"""Parameter and multiply-add counts per stage, for ResNet classifiers and Faster R-CNN.

Convention: **one multiply-add (MAC) = 2 FLOPs**. ``torch.utils.flop_counter.FlopCounterMode``
counts FLOPs (2 per MAC for convolutions, linear layers and matrix products) and every number
here is its count divided by 2, which is the unit He et al. 2015 call "FLOPs" (Table 1:
ResNet-50 "3.8 x 10^9"; torchvision's 4.09 "GFLOPS" for its stride-in-3x3 ResNet-50 is the
same unit). Only convolutions, linear layers and matrix products count: batch norm, ReLU,
pooling, additions, RoIAlign and NMS do not.

How the counting runs:
- The backbone and the RPN head run on a ``meta``-device copy of the model: shapes only, no
  arithmetic, so counting ResNet-152 at 800x1344 takes well under a second.
- A detector's RoI head runs on *one* RoI with real (zero) features, and its count is
  multiplied by ``num_rois``: every RoI costs the same, and RoIAlign over FPN levels cannot
  run on ``meta`` tensors (it selects boxes per level, a data-dependent shape).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from resdet.config.schema import Config
from resdet.layers.roi_align import MultiScaleRoIAlign
from resdet.modeling.backbone.resnet import ResNet

__all__ = [
    "ModelStats",
    "StatRow",
    "classifier_stats",
    "count_macs",
    "default_input_size",
    "detector_stats",
    "model_stats",
]


@dataclass
class StatRow:
    """One line of the table; ``indent`` 1 marks a part of the row above it."""

    name: str
    params: int
    macs: int
    indent: int = 0


@dataclass
class ModelStats:
    """Counts for one model at one input size.

    Attributes:
        arch: "classifier" or "faster_rcnn".
        input_size: ``(h, w)`` asked for; ``padded_size`` is what the network sees (a
            detector pads to its size divisibility).
        rows: top-level rows (``indent`` 0) add up to the totals; indented rows are parts.
        num_rois: RoIs per image the RoI-head count assumes (detectors only).
    """

    arch: str
    input_size: Tuple[int, int]
    padded_size: Tuple[int, int]
    total_params: int
    trainable_params: int
    total_macs: int
    rows: List[StatRow] = field(default_factory=list)
    num_rois: Optional[int] = None

    def format_table(self) -> str:
        """A plain-text table: params in millions, MACs in billions (1 MAC = 2 FLOPs)."""
        h, w = self.input_size
        ph, pw = self.padded_size
        size = f"{h}x{w}" + (f" (padded to {ph}x{pw})" if (ph, pw) != (h, w) else "")
        lines = [f"{self.arch} at input {size}; 1 MAC = 1 multiply-add = 2 FLOPs"]
        if self.num_rois is not None:
            lines.append(f"roi_heads counted for {self.num_rois} RoIs per image")
        header = f"{'module':<28}{'params (M)':>12}{'GMACs':>12}{'% MACs':>9}"
        lines += [header, "-" * len(header)]
        for r in [*self.rows, StatRow("total", self.total_params, self.total_macs)]:
            if r.name == "total":
                lines.append("-" * len(header))
            pct = 100.0 * r.macs / self.total_macs if self.total_macs else 0.0
            name = "  " * r.indent + r.name
            lines.append(f"{name:<28}{r.params / 1e6:>12.3f}{r.macs / 1e9:>12.3f}{pct:>8.1f}%")
        lines.append(f"trainable params: {self.trainable_params / 1e6:.3f} M")
        return "\n".join(lines)


def count_macs(module: nn.Module, *inputs: Any) -> Tuple[Any, Dict[str, int]]:
    """Run ``module(*inputs)`` under ``FlopCounterMode``; return its output and MACs per module.

    Keys are module paths relative to ``module`` (``"layer1"``, ``"bottom_up.layer1.0.conv2"``),
    ``""`` for ``module`` itself and ``"Global"`` for everything counted; values are FLOPs / 2.
    A module called from inside ``module`` without being one of its children (the C4 head's
    borrowed res5) keeps the name FlopCounterMode gives it (its class name).
    """
    with FlopCounterMode(display=False) as counter:
        output = module(*inputs)
    root = type(module).__name__
    out: Dict[str, int] = {}
    for name, per_op in counter.get_flop_counts().items():
        # FlopCounterMode names modules "<RootClass>.<path>"; make paths relative to the root.
        if name == root:
            name = ""
        elif name.startswith(root + "."):
            name = name[len(root) + 1 :]
        out[name] = out.get(name, 0) + sum(per_op.values()) // 2
    # RoIAlign does not count (see above), however it computes: on CPU it pools as a sparse
    # product, which the counter would take for a dense matrix product.
    for pooler, m in module.named_modules():
        if isinstance(m, MultiScaleRoIAlign) and out.get(pooler):
            macs = out[pooler]
            for name in out:
                if name in ("Global", "") or pooler == name or pooler.startswith(name + "."):
                    out[name] -= macs
    return output, out


def _params(*modules: nn.Module) -> int:
    seen = {id(p): p for m in modules for p in m.parameters()}
    return sum(p.numel() for p in seen.values())


def _meta_copy(model: nn.Module) -> nn.Module:
    # deepcopy keeps shared submodules shared (the C4 head borrows the backbone's res5).
    return copy.deepcopy(model).to("meta")


def _trunk_rows(resnet: ResNet, macs: Dict[str, int], prefix: str, indent: int) -> List[StatRow]:
    """Rows stem, res2.. for a ResNet whose counts sit under ``prefix`` in ``macs``."""
    stem = StatRow("stem", _params(resnet.conv1, resnet.bn1), macs.get(f"{prefix}conv1", 0), indent)
    rows = [stem]
    for i, name in enumerate(resnet.stage_names):
        layer = getattr(resnet, f"layer{i + 1}")
        rows.append(StatRow(name, _params(layer), macs.get(f"{prefix}layer{i + 1}", 0), indent))
    return rows


def classifier_stats(model: ResNet, input_size: Tuple[int, int]) -> ModelStats:
    """Stem, res2..res5 (res2..res4 for CIFAR nets) and fc for one ``[1, 3, h, w]`` image."""
    h, w = input_size
    # eval: a train-mode BN refuses the 1x1 maps a small crop leaves at res5 (batch of one)
    meta = _meta_copy(model).eval()
    _, macs = count_macs(meta, torch.zeros(1, 3, h, w, device="meta"))
    rows = _trunk_rows(model, macs, "", 0)
    if model.fc is not None:
        rows.append(StatRow("fc", _params(model.fc), macs.get("fc", 0)))
    return ModelStats(
        arch="classifier",
        input_size=(h, w),
        padded_size=(h, w),
        total_params=_params(model),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=macs.get("Global", 0),
        rows=rows,
    )


def _prefix_of(root: nn.Module, target: nn.Module) -> str:
    for name, m in root.named_modules():
        if m is target:
            return f"{name}." if name else ""
    raise ValueError("the detector's ResNet trunk is not inside its backbone")


def detector_stats(model: nn.Module, input_size: Tuple[int, int], num_rois: int) -> ModelStats:
    """Backbone (stem, res2..), fpn, rpn and roi_heads of a ``FasterRCNN`` for one image.

    Args:
        model: a ``resdet.modeling.detection.FasterRCNN``.
        input_size: ``(h, w)`` of the resized image; padded as the model pads it.
        num_rois: proposals per image reaching the RoI head (the paper tests with 300).
    """
    h, w = input_size
    d = model.size_divisibility
    ph, pw = math.ceil(h / d) * d, math.ceil(w / d) * d
    meta = _meta_copy(model)
    feats, bb_macs = count_macs(meta.backbone, torch.zeros(1, 3, ph, pw, device="meta"))
    rpn_macs = count_macs(meta.rpn.head, [feats[f] for f in meta.rpn.in_features])[1]["Global"]

    # One real RoI through the box head; zeros stand in for the features (shape is all that
    # matters), the box is inside the image so every RoIAlign level is valid.
    device = next(model.parameters()).device
    real = {k: torch.zeros(v.shape, device=device) for k, v in feats.items()}
    box = [torch.tensor([[0.0, 0.0, min(64.0, pw), min(64.0, ph)]], device=device)]
    heads = model.roi_heads
    # The whole model goes to eval, not just the heads: the C4 head's res5 belongs to the
    # backbone, and a train-mode BN there would update the caller's running statistics.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pooled, head_macs = count_macs(heads.box_head, real, box, [(ph, pw)])
            _, pred_macs = count_macs(heads.predictor, pooled)
    finally:
        model.train(was_training)

    resnet: ResNet = model.resnet
    prefix = _prefix_of(model.backbone, resnet)
    trunk = _trunk_rows(resnet, bb_macs, prefix, 1)
    c4 = not hasattr(model.backbone, "bottom_up")
    if c4:
        # The C4 trunk stops at res4; res5 runs once per RoI inside roi_heads, so its
        # parameters and MACs are reported there.
        trunk = [r for r in trunk if r.name != "res5"]
    trunk_params = sum(r.params for r in trunk)
    trunk_macs = bb_macs.get(prefix.rstrip("."), 0)  # "" is the backbone itself (C4)
    rows = [StatRow("backbone", trunk_params, trunk_macs), *trunk]
    if not c4:
        rows.append(
            StatRow(
                "fpn", _params(model.backbone) - _params(resnet), bb_macs["Global"] - trunk_macs
            )
        )
    rows.append(StatRow("rpn", _params(model.rpn), rpn_macs))
    box_params = _params(heads.box_head) + (_params(resnet.stage("res5")) if c4 else 0)
    pred_params = _params(heads.predictor)
    head_per_roi, pred_per_roi = head_macs["Global"], pred_macs["Global"]
    rows += [
        StatRow("roi_heads", box_params + pred_params, (head_per_roi + pred_per_roi) * num_rois),
        StatRow("res5 (per-RoI head)" if c4 else "box_head (2fc)", box_params,
                head_per_roi * num_rois, 1),
        StatRow("predictor", pred_params, pred_per_roi * num_rois, 1),
    ]  # fmt: skip
    total_macs = sum(r.macs for r in rows if r.indent == 0)
    return ModelStats(
        arch="faster_rcnn",
        input_size=(h, w),
        padded_size=(ph, pw),
        total_params=_params(model),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=total_macs,
        rows=rows,
        num_rois=num_rois,
    )


def default_input_size(cfg: Config) -> Tuple[int, int]:
    """Classifiers: ``INPUT.CROP_SIZE`` square; detectors: ``MIN_SIZE_TEST x MAX_SIZE_TEST``
    (800x1333 by default, the usual detectron2-style reporting size)."""
    if cfg.MODEL.ARCH == "classifier":
        return cfg.INPUT.CROP_SIZE, cfg.INPUT.CROP_SIZE
    return cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST


def model_stats(
    cfg: Config,
    input_size: Optional[Tuple[int, int]] = None,
    num_rois: Optional[int] = None,
) -> ModelStats:
    """Build the model ``cfg`` describes (random init) and count it.

    Args:
        input_size: ``(h, w)``; default :func:`default_input_size`.
        num_rois: detectors only; default ``MODEL.RPN.POST_NMS_TOPK_TEST``.
    """
    size = tuple(input_size) if input_size is not None else default_input_size(cfg)
    if cfg.MODEL.ARCH == "classifier":
        from resdet.modeling.classifier import build_classifier

        return classifier_stats(build_classifier(cfg), size)  # type: ignore[arg-type]
    if cfg.MODEL.ARCH == "faster_rcnn":
        from resdet.modeling.detection.build import build_detector

        rois = num_rois if num_rois is not None else cfg.MODEL.RPN.POST_NMS_TOPK_TEST
        return detector_stats(build_detector(cfg), size, rois)  # type: ignore[arg-type]
    raise ValueError(f"MODEL.ARCH must be 'classifier' or 'faster_rcnn', got '{cfg.MODEL.ARCH}'")
