"""The weights a detector starts training from, and the conventions they were trained with.

A checkpoint records the config it was trained with; the keys in :data:`_INPUT_CONVENTIONS`
change what the same tensors compute (stride placement, channel order, pixel statistics,
anchors, RoI pooling, box coding), so a difference from the run's config is a warning naming
both values rather than a silently wrong detector.
"""

from __future__ import annotations

import logging
from typing import Any, List, Sequence

from resdet.config.schema import Config
from resdet.engine.head_transfer import transfer_box_predictor
from resdet.engine.model_weights import load_checkpoint, load_model_weights
from resdet.modeling.detection.faster_rcnn import FasterRCNN

logger = logging.getLogger(__name__)

__all__ = ["input_convention_mismatches", "load_initial_weights"]


# Keys whose value the weights were trained with and the detector must use too: the tensors
# have the same shapes either way, so a mismatch would train silently wrong. The trunk's keys
# matter for every checkpoint; the detector's only for a whole detector (MODEL.WEIGHTS, e.g. one
# converted from torchvision): a classifier's config holds the schema's default anchors and
# RoI settings, which its weights never used.
_TRUNK_CONVENTIONS = (
    ("MODEL", "BACKBONE", "STRIDE_IN_1X1"),
    ("MODEL", "INPUT_FORMAT"),
    ("MODEL", "PIXEL_MEAN"),
    ("MODEL", "PIXEL_STD"),
    ("MODEL", "PIXEL_SCALE"),
)
_DETECTOR_CONVENTIONS = (
    ("MODEL", "ANCHOR", "SIZES"),
    ("MODEL", "ANCHOR", "ASPECT_RATIOS"),
    ("MODEL", "ANCHOR", "ROUND"),
    ("MODEL", "ANCHOR", "STRIDE_FROM_INPUT"),
    ("MODEL", "RPN", "BBOX_REG_WEIGHTS"),
    ("MODEL", "ROI_HEADS", "POOLER_ALIGNED"),
    ("MODEL", "ROI_HEADS", "POOLER_SAMPLING_RATIO"),
    ("MODEL", "ROI_HEADS", "BBOX_REG_WEIGHTS"),
)


def input_convention_mismatches(source: Any, cfg: Config, trunk_only: bool = False) -> List[str]:
    """Differences between a checkpoint's stored config dict and ``cfg`` that change what the
    weights compute (stride placement, channel order, pixel statistics; unless ``trunk_only``,
    for a classifier's weights, also anchors, RoI pooling and box coding)."""
    if not isinstance(source, dict):
        return []
    problems = []
    keys = _TRUNK_CONVENTIONS if trunk_only else _TRUNK_CONVENTIONS + _DETECTOR_CONVENTIONS
    for path in keys:
        theirs: Any = source
        for key in path:
            theirs = theirs.get(key) if isinstance(theirs, dict) else None
        ours: Any = cfg
        for key in path:
            ours = getattr(ours, key)
        if path[-1] == "POOLER_ALIGNED":  # None: the head's default (C4 aligned, FPN not)
            head = ((source.get("MODEL") or {}).get("ROI_HEADS") or {}).get("NAME")
            theirs = (head == "c4") if theirs is None and head else theirs
            ours = (cfg.MODEL.ROI_HEADS.NAME == "c4") if ours is None else ours
        if theirs is not None and theirs != ours:
            key = ".".join(path)
            problems.append(
                f"the weights were trained with {key} {theirs} but this config has {ours}; "
                f"set {key} {theirs} unless you mean to change it"
            )
    return problems


def load_initial_weights(
    model: FasterRCNN, cfg: Config, weights: str, class_names: Sequence[str]
) -> None:
    """Start a detector before training: ``weights`` (``--weights``) or ``MODEL.WEIGHTS`` (a
    whole detector, possibly of other classes: :mod:`resdet.engine.head_transfer`), else the
    classifier checkpoint ``MODEL.BACKBONE.PRETRAINED`` into the trunk, else nothing (from
    scratch, logged). Differences between the weights' recorded conventions and ``cfg`` are
    warnings (:func:`input_convention_mismatches`)."""
    if weights or cfg.MODEL.WEIGHTS:
        # A whole detector, possibly of other classes: the box predictor is rebuilt for the
        # training set's classes, copying the rows of the classes both name (head_transfer).
        path = weights or cfg.MODEL.WEIGHTS
        checkpoint = load_checkpoint(path)
        for problem in input_convention_mismatches(checkpoint.get("config"), cfg):
            logger.warning("%s: %s", path, problem)
        source_names = (checkpoint.get("extra") or {}).get("class_names")
        sd = transfer_box_predictor(
            checkpoint["model"], model.state_dict(), source_names, class_names, path
        )
        load_model_weights(model, sd, source=path)
    elif cfg.MODEL.BACKBONE.PRETRAINED:
        # A classification checkpoint: same ResNet keys, only fc.* is left over (logged).
        path = cfg.MODEL.BACKBONE.PRETRAINED
        logger.info("initialising the backbone from %s", path)
        checkpoint = load_checkpoint(path)
        for problem in input_convention_mismatches(checkpoint.get("config"), cfg, trunk_only=True):
            logger.warning("%s: %s", path, problem)
        load_model_weights(model.resnet, checkpoint, source=path)
    else:
        logger.warning("no MODEL.WEIGHTS or MODEL.BACKBONE.PRETRAINED: training from scratch")
