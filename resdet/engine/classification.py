"""The classification task: data, model, loss and evaluation from a Config, on the generic engine.

``run(cfg)`` trains a ResNet classifier (ImageNet, CIFAR-10 or any ImageFolder) with the
paper's recipes (He et al. 2015, Sec. 3.4 and 4.2) and writes into ``cfg.OUTPUT_DIR``:
``config.yaml`` (first), ``log.txt``, ``metrics.jsonl``, TensorBoard events,
``model_XXXXXXX.pth`` and ``model_final.pth`` (``"model"``: the classifier's state dict, with
the torchvision-style keys a detector's backbone loads).

Exact resume: the training stream is :class:`~resdet.data.loader.InfiniteSampler` (a function
of ``SEED``) and each sample's augmentation is seeded by its position in that stream, so
skipping ``iteration * batch`` positions reproduces the remaining batches exactly -- for any
number of DataLoader workers. Together with model, optimizer, scheduler, scaler and RNG
states, a resumed run matches an uninterrupted one (bit for bit on CPU with DETERMINISTIC).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Iterator, List, Tuple

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from resdet.config.load import ConfigError, save_config
from resdet.config.schema import Config
from resdet.data import cls_transforms as T
from resdet.data.catalog import datasets_root
from resdet.data.cifar import CIFAR10
from resdet.data.image_io import set_max_image_pixels
from resdet.data.imagefolder import ImageFolderDataset
from resdet.data.loader import InfiniteSampler
from resdet.data.random_state import seed_compose
from resdet.data.records import DatasetError
from resdet.engine.amp import autocast_factory, build_grad_scaler
from resdet.engine.checkpoint import Checkpointer, load_model_weights, require_checkpoint_file
from resdet.engine.dist import (
    barrier,
    check_same_on_all_ranks,
    check_sync_bn,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
)
from resdet.engine.hooks import (
    CheckpointHook,
    EvalHook,
    LRFeedbackHook,
    MetricsHook,
    MetricsWriter,
    ProgressHook,
)
from resdet.engine.optim import build_lr_scheduler, build_optimizer
from resdet.engine.runtime import resolve_device, seed_everything
from resdet.engine.selection import build_selection_hooks
from resdet.engine.trainer import train_loop
from resdet.evaluation.classification import ClassificationMeter
from resdet.modeling.classifier import build_classifier
from resdet.utils.logging import close_logging, setup_logging
from resdet.utils.output import check_output_dir, estimate_checkpoint_bytes, require_free_space

logger = logging.getLogger(__name__)

__all__ = ["build_cls_datasets", "build_cls_transforms", "evaluate_classifier", "run"]


def build_cls_transforms(cfg: Config) -> Tuple[Any, Any, Any | None]:
    """``(train, eval, ten_crop or None)`` transforms for ``INPUT.AUGMENT``.

    "imagenet": the paper's scale augmentation (shorter side in SCALE_RANGE), CROP_SIZE crop,
    flip, PCA lighting; "cifar": 4-pixel pad + 32 crop + flip; "generic": scale + crop + flip +
    colour jitter. Evaluation resizes the shorter side to TEST_RESIZE and takes the central
    CROP_SIZE crop ("cifar": the image as is). Normalization: MODEL.PIXEL_MEAN / PIXEL_STD.
    """
    i, mean, std = cfg.INPUT, tuple(cfg.MODEL.PIXEL_MEAN), tuple(cfg.MODEL.PIXEL_STD)
    scale = (int(i.SCALE_RANGE[0]), int(i.SCALE_RANGE[-1]))
    eval_tf = T.imagenet_eval_transform(i.CROP_SIZE, i.TEST_RESIZE, mean, std)
    ten_tf = T.ten_crop_transform(i.CROP_SIZE, i.TEST_RESIZE, mean, std)
    if i.AUGMENT == "imagenet":
        train = T.imagenet_train_transform(i.CROP_SIZE, scale, mean, std, i.PCA_STD)
        return train, eval_tf, ten_tf
    if i.AUGMENT == "generic":
        return T.generic_train_transform(i.CROP_SIZE, mean, std, scale), eval_tf, ten_tf
    if i.AUGMENT == "cifar":
        train = T.cifar_train_transform(mean, std, size=i.CROP_SIZE)
        return train, T.cifar_eval_transform(mean, std), None
    raise ConfigError(
        f"INPUT.AUGMENT: unknown recipe '{i.AUGMENT}'; use 'imagenet', 'cifar' or 'generic'"
    )


def _dataset(name: str, train: bool, cfg: Config, transform: Any, classes: Any) -> Dataset:
    root = datasets_root()
    if name == "imagenet":
        return ImageFolderDataset(
            os.path.join(root, "imagenet", "train" if train else "val"), transform, classes
        )
    if name == "cifar10":
        val = cfg.DATASETS.CIFAR_VAL_SIZE
        split = "train" if train else ("val" if val > 0 else "test")
        return CIFAR10(os.path.join(root, "cifar-10-batches-py"), split, transform, val)
    return ImageFolderDataset(name, transform, classes)


def build_cls_datasets(cfg: Config) -> Tuple[Dataset, Dataset | None, List[str]]:
    """``(train without transform, test with the eval transform or None, class names)``.

    ``DATASETS.CLS_TRAIN`` / ``CLS_TEST``: "imagenet" (``<root>/imagenet/train|val``),
    "cifar10" (``<root>/cifar-10-batches-py``; test is the last CIFAR_VAL_SIZE training images
    when > 0, else the test batch) or an ImageFolder path (the test folder uses the training
    class order). ``<root>`` is ``$RESDET_DATASETS`` or ``./datasets``.

    Raises:
        ConfigError: CLS_TRAIN unset or MODEL.NUM_CLASSES differing from the dataset's.
        DatasetError: missing or malformed data (from the dataset classes).
    """
    if not cfg.DATASETS.CLS_TRAIN:
        raise ConfigError("DATASETS.CLS_TRAIN is empty: set 'imagenet', 'cifar10' or a folder")
    _, eval_tf, _ = build_cls_transforms(cfg)
    train = _dataset(cfg.DATASETS.CLS_TRAIN, True, cfg, None, None)
    names = list(train.class_names)  # type: ignore[attr-defined]
    if len(names) != cfg.MODEL.NUM_CLASSES:
        raise ConfigError(
            f"MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES} but DATASETS.CLS_TRAIN "
            f"'{cfg.DATASETS.CLS_TRAIN}' has {len(names)} classes; "
            f"set MODEL.NUM_CLASSES {len(names)}"
        )
    test = (
        _dataset(cfg.DATASETS.CLS_TEST, False, cfg, eval_tf, names)
        if cfg.DATASETS.CLS_TEST
        else None
    )
    return train, test, names


class _PositionedSampler(Sampler):
    """Yields ``(index, position)``: ``position`` is the sample's place in the global stream."""

    def __init__(self, sampler: InfiniteSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        s = self.sampler
        for j, index in enumerate(s, start=s.start_iter_offset):
            yield index, j * s.world_size + s.rank


class _SeededAugment(Dataset):
    """Applies ``transform`` to ``dataset[index]`` with an RNG seeded by (seed, position).

    ``on_error="skip"`` (``DATASETS.ON_ERROR``): an unreadable image is logged (once per file
    and process, with a running count) and the next readable index is used in its place.
    """

    def __init__(self, dataset: Dataset, transform: Any, seed: int, on_error: str = "raise"):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.on_error = on_error
        self._unreadable: set = set()

    def _read(self, index: int) -> Tuple[torch.Tensor, int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        for _ in range(n):
            try:
                return self.dataset[index]
            except DatasetError as e:
                if self.on_error != "skip":
                    raise DatasetError(
                        f"{e} [index {index}; DATASETS.ON_ERROR skip skips such images, "
                        "tools/check_dataset.py lists all of them]"
                    ) from e
                if index not in self._unreadable:
                    self._unreadable.add(index)
                    logger.warning(
                        "unreadable image skipped (DATASETS.ON_ERROR skip): %s [index %d]; "
                        "%d unreadable images met so far in this process",
                        e,
                        index,
                        len(self._unreadable),
                    )
                index = (index + 1) % n
        raise DatasetError(f"none of the {n} training images could be read")

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, int]:
        index, position = key
        image, label = self._read(index)  # uint8[3, H, W]
        image = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        compose = self.transform.compose
        seed_compose(compose, (self.seed, position))
        return compose(image=image)["image"], label


def _worker_init(_: int) -> None:
    cv2.setNumThreads(0)  # opencv threads in every worker oversubscribe the cores


def _train_loader(cfg: Config, dataset: Dataset, transform: Any, start_iter: int) -> DataLoader:
    rank, world = get_rank(), get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes"
        )
    per_rank = cfg.SOLVER.IMS_PER_BATCH // world
    sampler = InfiniteSampler(
        len(dataset),
        shuffle=True,
        seed=cfg.SEED,
        rank=rank,
        world_size=world,  # type: ignore[arg-type]
        start_iter_offset=start_iter * per_rank,
    )
    batches = BatchSampler(_PositionedSampler(sampler), per_rank, drop_last=True)
    return DataLoader(
        _SeededAugment(dataset, transform, cfg.SEED, cfg.DATASETS.ON_ERROR),
        batch_sampler=batches,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(cfg.SEED + rank),
    )


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
        worker_init_fn=_worker_init,
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


def run(
    cfg: Config, resume: bool = False, eval_only: bool = False, weights: str = ""
) -> Dict[str, float]:
    """Train (or, with ``eval_only``, evaluate) a classifier as ``cfg`` says.

    Args:
        resume: continue from ``OUTPUT_DIR/last_checkpoint`` (model, optimizer, scheduler,
            scaler, iteration, RNG, sampler position); starts fresh when there is none.
        eval_only: evaluate ``weights`` (or MODEL.WEIGHTS, or the last checkpoint) and return.
        weights: a checkpoint to initialise from (ignored when resuming succeeds).

    Returns:
        the final evaluation results (``top1_err``, ``top5_err``, ``tencrop_*``), or ``{}``.
    """
    rank, _, _ = init_distributed()
    out = cfg.OUTPUT_DIR
    set_max_image_pixels(cfg.INPUT.MAX_IMAGE_PIXELS)
    if is_main_process():
        check_output_dir(out)  # a file, read-only or full: say so before any work
        save_config(cfg, os.path.join(out, "config.yaml"))
    setup_logging(out, rank)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _run(cfg, resume, eval_only, weights)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        close_logging()


def _run(cfg: Config, resume: bool, eval_only: bool, weights: str) -> Dict[str, float]:
    out = cfg.OUTPUT_DIR
    device = resolve_device(cfg.MODEL.DEVICE)
    world = get_world_size()
    logger.info("classification run in %s on %s (world size %d)", out, device, world)
    if cfg.MODEL.INPUT_FORMAT != "RGB":
        raise ConfigError("MODEL.INPUT_FORMAT: classification reads RGB images; set 'RGB'")
    if cfg.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by cuBLAS
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.DETERMINISTIC
    seed_everything(cfg.SEED)
    require_checkpoint_file(weights, "--weights")
    require_checkpoint_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    if cfg.DATASETS.ON_ERROR not in ("raise", "skip"):
        raise ConfigError(
            f"DATASETS.ON_ERROR must be 'raise' or 'skip', got {cfg.DATASETS.ON_ERROR!r}"
        )

    model = build_classifier(cfg).to(device)
    check_sync_bn(model, device, world)
    if cfg.MODEL.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    train_set, test_set, class_names = build_cls_datasets(cfg)
    train_tf, _, ten_tf = build_cls_transforms(cfg)
    amp = cfg.SOLVER.AMP
    amp_ctx = autocast_factory(device.type, amp.ENABLED, amp.DTYPE)
    checkpointer = Checkpointer(out, cfg.SOLVER.MAX_TO_KEEP, cfg)

    def evaluate(ten_crop: bool = False) -> Dict[str, float]:
        assert test_set is not None
        ds = test_set
        if ten_crop:
            ds = _dataset(cfg.DATASETS.CLS_TEST, False, cfg, ten_tf, class_names)
        loader, prefix = _eval_loader(cfg, ds, ten_crop), "tencrop_" if ten_crop else ""
        return evaluate_classifier(model, loader, device, amp_ctx, cfg.MODEL.CHANNELS_LAST, prefix)

    use_ten = cfg.TEST.TEN_CROP and ten_tf is not None
    if cfg.TEST.TEN_CROP and ten_tf is None:
        logger.warning(
            "TEST.TEN_CROP ignored: INPUT.AUGMENT '%s' has no 10-crop test", cfg.INPUT.AUGMENT
        )

    def final_eval() -> Dict[str, float]:
        return {**evaluate(), **(evaluate(ten_crop=True) if use_ten else {})}

    if eval_only:
        source = weights or cfg.MODEL.WEIGHTS or checkpointer.last_checkpoint()
        if not source:
            raise ConfigError(
                "--eval-only needs --weights, MODEL.WEIGHTS or a checkpoint in OUTPUT_DIR"
            )
        if test_set is None:
            raise ConfigError("--eval-only needs DATASETS.CLS_TEST")
        load_model_weights(model, source)
        results = final_eval()
        logger.info("evaluation of %s: %s", source, json.dumps(results))
        if is_main_process():
            with open(os.path.join(out, "eval_results.json"), "w", encoding="utf-8") as f:
                json.dump({"weights": source, **results}, f, indent=2)
        return results

    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, cfg.SOLVER.MAX_ITER)
    scaler = build_grad_scaler(device.type, amp.ENABLED, amp.DTYPE)
    if is_main_process():  # a disk that cannot hold one checkpoint fails now, not later
        require_free_space(out, estimate_checkpoint_bytes(model, optimizer))
    if getattr(scheduler, "uses_metric", False) and (test_set is None or cfg.TEST.EVAL_PERIOD <= 0):
        raise ConfigError(
            "SOLVER.LR_SCHEDULER plateau needs DATASETS.CLS_TEST and TEST.EVAL_PERIOD > 0"
        )
    start_iter, hook_state = 0, {}
    if resume and checkpointer.last_checkpoint():
        ckpt = checkpointer.resume(model, optimizer, scheduler, scaler)
        start_iter, hook_state = int(ckpt["iteration"]), ckpt.get("extra", {}).get("hook_state")
    else:
        if resume:
            logger.info("--resume: no checkpoint in %s, starting from scratch", out)
        if weights or cfg.MODEL.WEIGHTS:
            load_model_weights(model, weights or cfg.MODEL.WEIGHTS)

    check_same_on_all_ranks(start_iter, "the iteration to start from")
    train_model: nn.Module = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    data_iter = iter(_train_loader(cfg, train_set, train_tf, start_iter))
    fmt = torch.channels_last if cfg.MODEL.CHANNELS_LAST else torch.contiguous_format

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

    writer = MetricsWriter(out, start_iter)
    hooks = [MetricsHook(writer, cfg.LOG_PERIOD), ProgressHook()]
    if test_set is not None:
        hooks.append(EvalHook(cfg.TEST.EVAL_PERIOD, evaluate, writer, final_eval))
    else:
        logger.warning("DATASETS.CLS_TEST is empty: no validation")
    hooks.append(LRFeedbackHook(scheduler, cfg.SOLVER.PLATEAU_METRIC))
    extra = {"class_names": class_names}
    hooks += build_selection_hooks(cfg, checkpointer, extra, test_set is not None)
    hooks.append(CheckpointHook(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, extra=extra))
    state = train_loop(
        train_model,
        compute_losses,
        data_iter,
        optimizer,
        scheduler,
        start_iter,
        cfg.SOLVER.MAX_ITER,
        hooks,
        amp_ctx,
        scaler,
        cfg.SOLVER.CLIP_GRADIENTS,
        ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
        hook_state=hook_state,
    )
    barrier()
    return state.metrics
