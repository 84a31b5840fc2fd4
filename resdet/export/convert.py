"""Converting weights trained elsewhere into resdet checkpoints: reading the file, telling
what it holds, and writing a checkpoint that loads.

- ImageNet ResNets (torchvision, MSRA / Caffe2, detectron2 backbones) become classifier
  checkpoints (:mod:`resdet.export.convert_resnet`);
- whole Faster R-CNN detectors (torchvision, detectron2) become detector checkpoints whose
  config reproduces the source (:mod:`resdet.export.convert_detector`).

``.pkl`` files are read with the restricted unpickler, torch files with
``weights_only=True``: nothing in a downloaded file runs.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import torch

from resdet.config.load import config_from_dict, config_to_dict
from resdet.config.schema import Config
from resdet.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from resdet.export import convert_resnet
from resdet.export.convert_detector import (
    detector_kind,
    detectron2_detector_to_resdet,
    torchvision_detector_to_resdet,
)
from resdet.export.convert_resnet import (  # noqa: F401 (re-exported: callers import them here)
    CAFFE2_PIXEL_MEAN_BGR,
    FROZEN_BN_EPS,
    TORCHVISION_MEAN_RGB,
    TORCHVISION_STD_RGB,
    ConversionError,
    as_tensors,
    caffe2_to_resdet,
    d2_resnet_key,
    detectron2_to_resdet,
    imagenet_config,
    layout_from_resdet_keys,
    torchvision_to_resdet,
)
from resdet.modeling.classifier import build_classifier
from resdet.modeling.detection.build import build_detector
from resdet.utils.safe_pickle import safe_load_pickle

logger = logging.getLogger(__name__)

__all__ = [
    *convert_resnet.__all__,  # every name of convert_resnet is re-exported here
    "RawWeights",
    "conversion_meta",
    "convert_weights",
    "load_foreign_weights",
    "read_weights_file",
]


class RawWeights(NamedTuple):
    """What a weights file holds, before any renaming.

    ``container``: ``"resdet"`` (a resdet checkpoint: ``data`` is the whole dict),
    ``"pkl-model"`` (a ``{"model": {...}, "__author__"}`` pickle: ``data`` is the model dict),
    ``"pkl-blobs"`` (Caffe2 blobs, ``*_momentum`` removed) or ``"state_dict"`` (a torch file:
    a state dict, or the ``"model"`` / ``"state_dict"`` entry of a training checkpoint).
    """

    container: str
    data: Dict[str, Any]
    author: str = "unknown"


def _str_keys(d: Mapping[Any, Any]) -> Dict[str, Any]:
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _resdet_names(sd: Mapping[str, Any]) -> bool:
    """Tensors named as resdet's own detector names them (its predictor, RPN head or FPN)."""
    own = ("roi_heads.predictor.", "rpn.head.objectness.", "backbone.lateral.")
    return any(k.startswith(own) for k in sd)


def read_weights_file(path: str) -> RawWeights:
    """Read a ``.pkl`` (restricted unpickler) or a torch file (``weights_only=True``).

    Raises:
        FileNotFoundError: no such file.
        ConversionError: a pickle that is not a dict (the message names the file).
        resdet.utils.safe_pickle.UnsafePickleError: a ``.pkl`` naming anything beyond plain
            containers and numpy arrays (nothing in it is called).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".pkl"):
        data = safe_load_pickle(path)
        if not isinstance(data, dict):
            raise ConversionError(f"{path}: expected a pickled dict, got {type(data).__name__}")
        data = _str_keys(data)
        if isinstance(data.get("model"), dict):
            author = str(data.get("__author__", "unknown"))
            return RawWeights("pkl-model", _str_keys(data["model"]), author)
        blobs = data.get("blobs", data)
        if not isinstance(blobs, dict):
            raise ConversionError(f"{path}: 'blobs' is not a dict")
        blobs = {
            k: v
            for k, v in _str_keys(blobs).items()
            if not str(k).endswith("_momentum")  # SGD state saved next to the weights
        }
        return RawWeights("pkl-blobs", blobs)
    ckpt: Any = load_checkpoint(path)  # weights_only=True: tensors and containers only
    if isinstance(ckpt.get("model"), dict):
        if "config" in ckpt or "meta" in ckpt or _resdet_names(ckpt["model"]):
            return RawWeights("resdet", ckpt)
        # detectron2's DetectionCheckpointer: {"model", "iteration", ...}
        return RawWeights("state_dict", dict(ckpt["model"]), str(ckpt.get("__author__", "unknown")))
    if "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
        ckpt = ckpt["state_dict"]
    return RawWeights("state_dict", ckpt)


def load_foreign_weights(
    path: str, to_rgb: bool = False
) -> Tuple[Dict[str, torch.Tensor], Optional[Config], str]:
    """Read ImageNet weights and convert them to resdet names.

    Returns:
        ``(state_dict, config, source_format)`` with ``source_format`` one of
        ``"resdet"`` (a resdet checkpoint: returned as stored, config from the checkpoint or
        None), ``"torchvision"``, ``"caffe2"`` or ``"detectron2"``.

    Raises:
        FileNotFoundError, ConversionError, UnsafePickleError: see :func:`read_weights_file`;
        ConversionError also for an unknown layout.
    """
    return _backbone_from_raw(read_weights_file(path), path, to_rgb)


def _backbone_from_raw(
    raw: RawWeights, path: str, to_rgb: bool
) -> Tuple[Dict[str, torch.Tensor], Optional[Config], str]:
    if raw.container == "resdet":
        cfg_dict = raw.data.get("config")
        cfg = config_from_dict(cfg_dict, path) if cfg_dict else None
        return dict(raw.data["model"]), cfg, "resdet"
    if raw.container == "pkl-model":
        sd, cfg = detectron2_to_resdet(raw.data, raw.author, path, to_rgb)
        return sd, cfg, "detectron2"
    if raw.container == "pkl-blobs":
        sd, cfg = caffe2_to_resdet(raw.data, path, to_rgb)
        return sd, cfg, "caffe2"
    if any(k.removeprefix("module.").startswith(("stem.", "res2.")) for k in raw.data):
        sd, cfg = detectron2_to_resdet(raw.data, raw.author, path, to_rgb)
        return sd, cfg, "detectron2"
    sd, cfg = torchvision_to_resdet(raw.data, path)
    return sd, cfg, "torchvision"


def convert_weights(
    src: str, dst: str, to_rgb: bool = False, keep_unused_classes: bool = False
) -> Tuple[Config, str]:
    """Convert ``src`` into a resdet checkpoint at ``dst`` and check that it loads.

    ImageNet ResNets become classifier checkpoints; whole torchvision / detectron2 Faster
    R-CNNs become detector checkpoints (:mod:`resdet.export.convert_detector`; ``to_rgb`` does
    not apply, ``keep_unused_classes`` keeps torchvision's 10 ``N/A`` COCO outputs). The check
    builds the model the config describes and loads the converted tensors: a shape mismatch is
    an error naming the key and both shapes; missing and unexpected keys are logged by name
    (and for a detector are an error: every tensor must have its place).

    Returns:
        ``(config, source_format)``; a detector's format ends in ``"-detector"``.

    Raises:
        ConversionError: ``src`` is already a resdet checkpoint (use it directly), or its layout
            is unknown; ValueError: shapes do not fit the inferred architecture.
    """
    raw = read_weights_file(src)
    if raw.container != "resdet":
        done = _convert_detector_file(raw, src, dst, keep_unused_classes)
        if done is not None:
            return done
    sd, cfg, fmt = _backbone_from_raw(raw, src, to_rgb)
    if fmt == "resdet":
        raise ConversionError(
            f"{src} is already a resdet checkpoint ('model' + 'config'): no conversion needed; "
            "pass it to MODEL.WEIGHTS or MODEL.BACKBONE.PRETRAINED as it is"
        )
    assert cfg is not None
    model = build_classifier(cfg)
    result = load_model_weights(model, sd, log=True)
    if result.missing_keys and set(result.missing_keys) - {"fc.weight", "fc.bias"}:
        raise ConversionError(
            f"{src}: converted weights miss {len(result.missing_keys)} ResNet tensors, e.g. "
            f"{result.missing_keys[:5]}: the file is incomplete or not a {cfg.MODEL.BACKBONE.DEPTH}"
            "-layer ResNet"
        )
    own = model.state_dict()
    state = {
        # Only what the file provided (unexpected keys were reported and are dropped): a
        # missing fc must stay missing, not be saved as random weights.
        "model": {k: v for k, v in sd.items() if k in own},
        "config": config_to_dict(cfg),
        "meta": conversion_meta(src, fmt),
    }
    save_checkpoint(dst, state)
    logger.info("wrote %s (%s ResNet-%d)", dst, fmt, cfg.MODEL.BACKBONE.DEPTH)
    return cfg, fmt


def conversion_meta(src: str, fmt: str) -> Dict[str, str]:
    """The ``meta`` of a converted checkpoint: where it came from, when, with which torch."""
    return {
        "converted_from": os.path.basename(src),
        "source_format": fmt,
        "torch_version": str(torch.__version__),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _convert_detector_file(
    raw: RawWeights, src: str, dst: str, keep_unused_classes: bool = False
) -> Optional[Tuple[Config, str]]:
    """Write ``dst`` from ``raw`` if it holds a whole detector; None if it does not.

    The tensors are loaded strictly into the detector the config builds (every tensor of the
    model must come from the file), then saved as ``{"model", "config", "meta", "extra":
    {"class_names", "category_ids"}}``: ``tools/infer.py``, the ``Predictor`` and evaluation
    draw and write the source's class names and dataset ids from it.
    """
    kind = detector_kind(raw.data)
    if kind is None:
        return None
    if kind == "torchvision":
        det = torchvision_detector_to_resdet(raw.data, src, keep_unused_classes)
    else:
        det = detectron2_detector_to_resdet(raw.data, raw.author, src)
    model = build_detector(det.config)
    try:
        load_model_weights(model, det.state_dict, strict=True, log=False)
    except ValueError as e:
        raise ConversionError(f"{src}: the converted {kind} detector does not load: {e}") from e
    fmt = f"{kind}-detector"
    state = {
        "model": det.state_dict,
        "config": config_to_dict(det.config),
        "meta": conversion_meta(src, fmt),
        "extra": {"class_names": det.class_names, "category_ids": det.category_ids},
    }
    save_checkpoint(dst, state)
    b = det.config.MODEL.BACKBONE
    logger.info("wrote %s (%s R%d-%s, %d classes)", dst, fmt, b.DEPTH,
                "FPN" if b.NAME == "resnet_fpn" else "C4", len(det.class_names))  # fmt: skip
    return det.config, fmt
