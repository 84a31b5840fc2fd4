"""The classification task: the builders :func:`resdet.engine.runner.run_task` calls.

``run(cfg)`` trains a ResNet classifier (ImageNet, CIFAR-10 or any ImageFolder) with the
paper's recipes (He et al. 2015, Sec. 3.4 and 4.2) and writes into ``cfg.OUTPUT_DIR``:
``config.yaml``, ``log.txt``, ``metrics.jsonl``, TensorBoard events, ``model_XXXXXXX.pth``
and ``model_final.pth`` (``"model"``: the classifier's state dict, with the torchvision-style
keys a detector's backbone loads). The data (datasets, transforms, the position-seeded
training stream) is :mod:`resdet.data.cls_dataset`.

Exact resume: the training stream is one function of ``SEED`` and each sample's augmentation
is seeded by its position in it, so skipping the batches already consumed reproduces the
remaining batches exactly -- for any number of DataLoader workers. Together with model,
optimizer, scheduler, scaler and RNG states, a resumed run matches an uninterrupted one (bit
for bit on CPU with DETERMINISTIC).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, ContextManager, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from resdet.config.load import ConfigError
from resdet.config.schema import Config
from resdet.data.cls_dataset import (
    build_cls_dataset,
    build_cls_datasets,
    build_cls_train_loader,
    build_cls_transforms,
)
from resdet.data.loader import worker_init
from resdet.engine.dist import get_rank, get_world_size
from resdet.engine.model_weights import load_model_weights
from resdet.engine.runner import Task, TaskParts, TrainParts, run_task
from resdet.evaluation.classification import ClassificationMeter
from resdet.modeling.classifier import build_classifier

logger = logging.getLogger(__name__)

__all__ = [
    "CLASSIFICATION",
    "build_cls_datasets",
    "build_cls_transforms",
    "evaluate_classifier",
    "run",
]


def _eval_loader(cfg: Config, dataset: Dataset, ten_crop: bool) -> DataLoader:
    rank, world = get_rank(), get_world_size()
    per_rank = max(1, cfg.TEST.IMS_PER_BATCH // world)
    if ten_crop:
        per_rank = max(1, per_rank // 10)  # each image is 10 crops
    # Rank r evaluates r, r + world, ...: every image exactly once (DistributedSampler pads).
    shard = list(range(rank, len(dataset), world))  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=shard,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=worker_init,
        generator=torch.Generator().manual_seed(cfg.SEED),
    )


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_ctx_factory: Any = None,
    channels_last: bool = False,
    prefix: str = "",
) -> Dict[str, float]:
    """Top-1 / top-5 error over ``loader`` (summed over ranks).

    Batches are ``(float[N, 3, H, W], int64[N])``, or ``float[N, V, 3, H, W]`` for multi-view
    tests (10-crop), whose softmaxes are averaged per image. Returns
    ``{prefix + "top1_err", prefix + "top5_err"}`` as fractions; leaves the model in eval mode.
    """
    model.eval()
    meter = ClassificationMeter((1, 5))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for images, labels in loader:
        views = images.shape[1] if images.ndim == 5 else 0
        images = images.flatten(0, 1) if views else images
        images = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
        with amp_ctx_factory() if amp_ctx_factory else torch.autocast(device.type, enabled=False):
            logits = model(images)["logits"].float()
        scores = logits.softmax(1).view(-1, views, logits.shape[1]).mean(1) if views else logits
        meter.update(scores.cpu(), labels)
    return {prefix + k: v for k, v in meter.compute().items()}


def _check_inputs(cfg: Config, weights: str, resuming: bool, eval_only: bool) -> None:
    if cfg.MODEL.INPUT_FORMAT != "RGB":
        raise ConfigError("MODEL.INPUT_FORMAT: classification reads RGB images; set 'RGB'")


def _build_model(cfg: Config, device: torch.device) -> nn.Module:
    model = build_classifier(cfg).to(device)
    if cfg.MODEL.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model


def _parts(
    cfg: Config,
    model: nn.Module,
    device: torch.device,
    amp_ctx: Callable[[], ContextManager],
    eval_only: bool,
) -> TaskParts:
    train_set, test_set, class_names = build_cls_datasets(cfg)
    train_tf, _, ten_tf = build_cls_transforms(cfg)
    fmt = torch.channels_last if cfg.MODEL.CHANNELS_LAST else torch.contiguous_format

    def evaluate(ten_crop: bool = False) -> Dict[str, float]:
        assert test_set is not None
        ds = test_set
        if ten_crop:
            ds = build_cls_dataset(cfg.DATASETS.CLS_TEST, False, cfg, ten_tf, class_names)
        loader, prefix = _eval_loader(cfg, ds, ten_crop), "tencrop_" if ten_crop else ""
        return evaluate_classifier(model, loader, device, amp_ctx, cfg.MODEL.CHANNELS_LAST, prefix)

    use_ten = cfg.TEST.TEN_CROP and ten_tf is not None
    if cfg.TEST.TEN_CROP and ten_tf is None:
        logger.warning(
            "TEST.TEN_CROP ignored: INPUT.AUGMENT '%s' has no 10-crop test", cfg.INPUT.AUGMENT
        )

    def final_eval() -> Dict[str, float]:
        return {**evaluate(), **(evaluate(ten_crop=True) if use_ten else {})}

    def initial_weights(m: nn.Module, weights: str) -> None:
        if weights or cfg.MODEL.WEIGHTS:
            load_model_weights(m, weights or cfg.MODEL.WEIGHTS)

    def batches(start_iter: int, per_rank: int) -> Any:
        world = get_world_size()
        return iter(
            build_cls_train_loader(cfg, train_set, train_tf, per_rank, start_iter, world > 1)
        )

    def compute_losses(
        m: nn.Module, batch: Tuple[torch.Tensor, torch.Tensor]
    ) -> Dict[str, torch.Tensor]:
        images, labels = batch
        images = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
        labels = labels.to(device, non_blocking=True)
        logits = m(images)["logits"]
        return {
            "loss_cls": F.cross_entropy(logits.float(), labels),
            # Top-1 error of this batch (augmented, train-mode BN): the thin curves of the
            # paper's Fig. 4/6 and the signal of the ResNet-110 warm-up.
            "train_err": (logits.detach().argmax(1) != labels).float().mean(),
        }

    def train() -> TrainParts:
        extra = {"class_names": class_names}
        return TrainParts(extra, initial_weights, batches, compute_losses)

    has_test = test_set is not None
    return TaskParts(evaluate if has_test else None, train, final_eval if has_test else None)


CLASSIFICATION = Task(
    name="classification",
    test_key="DATASETS.CLS_TEST",
    build_model=_build_model,
    parts=_parts,
    check_inputs=_check_inputs,
)


def run(
    cfg: Config, resume: bool = False, eval_only: bool = False, weights: str = ""
) -> Dict[str, float]:
    """Train (or, with ``eval_only``, evaluate) a classifier as ``cfg`` says
    (:func:`resdet.engine.runner.run_task` with :data:`CLASSIFICATION`).

    Args:
        resume: continue from ``OUTPUT_DIR/last_checkpoint`` (model, optimizer, scheduler,
            scaler, iteration, RNG, sampler position); starts fresh when there is none.
        eval_only: evaluate ``weights`` (or MODEL.WEIGHTS, or the last checkpoint) and return.
        weights: a checkpoint to initialise from (ignored when resuming succeeds).

    Returns:
        the final evaluation results (``top1_err``, ``top5_err``, ``tencrop_*``), or ``{}``.
    """
    return run_task(CLASSIFICATION, cfg, resume, eval_only, weights)
