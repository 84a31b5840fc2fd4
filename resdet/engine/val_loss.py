"""Validation loss of a detector: the four training losses measured on the test set.

AP says how good the detections are; the losses on held-out images say whether the model
still fits them better, and show over-fitting long before AP turns (``TEST.VAL_LOSS``).

The detector computes losses only in its training branch (``model.training``), which also
samples anchors and RoIs at random and, with ``MODEL.BACKBONE.NORM BN``, would update the BN
running statistics. :func:`loss_mode` runs that branch with every BN layer in eval mode
(running statistics used, not changed); :func:`detection_val_losses` runs it without
gradients inside :func:`torch.random.fork_rng` with a fixed seed, so the sampling is the same
at every evaluation and the training RNG stream is untouched (a resumed run stays bit-exact).
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Tuple

import torch
import torch.nn as nn

from resdet.config.schema import Config
from resdet.data.loader import build_detection_test_loader
from resdet.data.records import DatasetMeta, DetectionRecord
from resdet.engine.dist import all_reduce_dict, get_world_size
from resdet.engine.model_weights import unwrap_model

logger = logging.getLogger(__name__)

__all__ = ["detection_val_losses", "loss_mode"]


@contextlib.contextmanager
def loss_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in training mode with every ``_BatchNorm`` in eval mode; afterwards every
    submodule's ``training`` flag is restored as it was."""
    flags = [(m, m.training) for m in model.modules()]
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _all_cuda_devices() -> List[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@torch.no_grad()
def detection_val_losses(
    model: nn.Module,
    cfg: Config,
    test_sets: List[Tuple[str, List[DetectionRecord], DatasetMeta]],
    amp_ctx: Callable[[], ContextManager],
) -> Dict[str, float]:
    """Mean loss terms over every image of each test set (averaged over ranks).

    Images are resized with the test transform, not flipped; VOC ``difficult`` objects are
    left out as in training; sampling is seeded with ``cfg.SEED``.

    Returns:
        ``{"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss"}`` (``loss`` is
        their sum), prefixed with ``"<dataset>/"`` when there are several test sets -- the
        same keys as :func:`~resdet.engine.detection.evaluate_detector`'s metrics.
    """
    model = unwrap_model(model)
    results: Dict[str, float] = {}
    with torch.random.fork_rng(devices=_all_cuda_devices()), loss_mode(model):
        torch.manual_seed(cfg.SEED)
        for name, records, _ in test_sets:
            loader = build_detection_test_loader(
                cfg, records, distributed=get_world_size() > 1, drop_difficult=True
            )
            sums: Dict[str, float] = defaultdict(float)
            count = 0
            for batch in loader:
                with amp_ctx():
                    losses: Dict[str, Any] = model(batch)
                for k, v in losses.items():
                    sums[k] += float(v) * len(batch)
                count += len(batch)
            totals = all_reduce_dict({**sums, "_images": count}, average=False)
            n = max(totals.pop("_images"), 1.0)
            means = {k: v / n for k, v in totals.items()}
            means["loss"] = sum(means.values())
            prefix = "" if len(test_sets) == 1 else f"{name}/"
            results.update({prefix + k: v for k, v in means.items()})
    return results
