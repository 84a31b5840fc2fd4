"""The run skeleton both tasks share: set-up, eval-only, resume, DDP, hooks, final evaluation.

``run_task(task, cfg, resume, eval_only, weights)`` is the one sequence every run follows
(detectron2's ``DefaultTrainer`` split into a fixed skeleton and per-task builders, without
the subclassing): output folder, logging and ``config.yaml``; input checks; the deterministic
set-up and seeds; the model; then either the evaluation of some weights (``--eval-only``) or
training -- optimizer, schedule, AMP scaler, resume or initial weights, DDP wrapping, the
hooks (metrics, progress, evaluation, LR feedback, best model / early stop, checkpoints) and
:func:`~resdet.engine.trainer.train_loop`.

What differs between classification and detection is a :class:`Task`: plain functions that
build the model, check the task's inputs and, once the model exists, give the run its
evaluation and its training data (:class:`TaskParts`, :class:`TrainParts`). The tasks are in
:mod:`resdet.engine.classification` and :mod:`resdet.engine.detection`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator

import torch
import torch.nn as nn

from resdet.accel import set_threads
from resdet.config.load import ConfigError, save_config
from resdet.config.schema import Config
from resdet.data.image_io import set_max_image_pixels
from resdet.engine.amp import autocast_factory, build_grad_scaler
from resdet.engine.checkpoint import Checkpointer
from resdet.engine.dist import (
    barrier,
    check_same_on_all_ranks,
    check_sync_bn,
    get_world_size,
    init_distributed,
    is_main_process,
)
from resdet.engine.hooks import MetricsWriter, build_hooks
from resdet.engine.model_weights import load_model_weights, require_checkpoint_file
from resdet.engine.optim import build_lr_scheduler, build_optimizer
from resdet.engine.runtime import deterministic_mode, resolve_device, seed_everything
from resdet.engine.trainer import train_loop
from resdet.utils.logging import close_logging, setup_logging
from resdet.utils.output import check_output_dir, estimate_checkpoint_bytes, require_free_space

logger = logging.getLogger(__name__)

__all__ = ["Task", "TaskParts", "TrainParts", "run_task"]

Metrics = Dict[str, float]
AmpContext = Callable[[], ContextManager]


@dataclass
class TrainParts:
    """What training needs from a task, built only when the run trains.

    Attributes:
        extra: stored in every checkpoint's ``"extra"`` (``class_names``, ``category_ids``).
        initial_weights: ``(model, weights)`` loads the weights a fresh run starts from
            (``weights`` is ``--weights``, possibly ""); not called when resuming.
        batches: ``(start_iter, images_per_rank)`` -> the endless batch stream, positioned
            after the ``start_iter`` batches already consumed (exact resume).
        compute_losses: ``(model, batch) -> {"loss_*": scalar, ...}`` for the loop.
    """

    extra: Dict[str, Any]
    initial_weights: Callable[[nn.Module, str], None]
    batches: Callable[[int, int], Iterator[Any]]
    compute_losses: Callable[[nn.Module, Any], Dict[str, torch.Tensor]]


def _nothing() -> None:
    return None


@dataclass
class TaskParts:
    """What a run needs from its task once the model exists.

    Attributes:
        evaluate: the periodic evaluation, ``() -> {metric: float}``; None without a test set.
        train: builds :class:`TrainParts` (loads the training data); called only to train.
        final_eval: the evaluation after training and of ``--eval-only`` (default
            ``evaluate``), e.g. adding the 10-crop test.
        finish: called last on every rank, after training or an evaluation (e.g. reports).
    """

    evaluate: Callable[[], Metrics] | None
    train: Callable[[], TrainParts]
    final_eval: Callable[[], Metrics] | None = None
    finish: Callable[[], None] = _nothing


def _same_config(cfg: Config, eval_only: bool) -> Config:
    return cfg


def _no_checks(cfg: Config, weights: str, resuming: bool, eval_only: bool) -> None:
    return None


def _no_preparation(model: nn.Module, cfg: Config, device: torch.device) -> None:
    return None


@dataclass(frozen=True)
class Task:
    """The per-task builders :func:`run_task` calls (plain functions, no subclassing).

    Attributes:
        name: "classification" or "detection", for the log.
        test_key: the config key naming the test set, for messages (``DATASETS.TEST``).
        build_model: ``(cfg, device) -> model`` on ``device``.
        parts: ``(cfg, model, device, amp_ctx, eval_only) -> TaskParts``; loads the test data.
        resolve_config: ``(cfg, eval_only) -> cfg`` before it is saved (e.g. the class count
            taken from the data).
        check_inputs: ``(cfg, weights, resuming, eval_only)``: the task's own checks of
            paths and options, before any data is loaded.
        prepare_for_training: ``(model, cfg, device)`` in place before DDP wrapping (the fast
            paths for training).
        find_unused_parameters: DDP's flag (a detector's head can leave parameters unused).
    """

    name: str
    test_key: str
    build_model: Callable[[Config, torch.device], nn.Module]
    parts: Callable[[Config, nn.Module, torch.device, AmpContext, bool], TaskParts]
    resolve_config: Callable[[Config, bool], Config] = _same_config
    check_inputs: Callable[[Config, str, bool, bool], None] = _no_checks
    prepare_for_training: Callable[[nn.Module, Config, torch.device], None] = _no_preparation
    find_unused_parameters: bool = False


def run_task(
    task: Task, cfg: Config, resume: bool = False, eval_only: bool = False, weights: str = ""
) -> Metrics:
    """Train (or with ``eval_only`` evaluate) ``task`` as ``cfg`` says.

    Writes into ``cfg.OUTPUT_DIR``: ``config.yaml`` (the resolved config), ``log.txt``,
    ``metrics.jsonl``, TensorBoard events, checkpoints, ``eval_results.json`` (eval-only) and
    the task's result files.

    Args:
        resume: continue from ``OUTPUT_DIR/last_checkpoint`` (model, optimizer, scheduler,
            scaler, iteration, RNG, data stream position); starts fresh when there is none.
        eval_only: evaluate ``weights`` (or MODEL.WEIGHTS, or the last checkpoint) and return.
        weights: a checkpoint to initialise from (ignored when resuming succeeds).

    Returns:
        the last evaluation's metrics, or ``{}`` when nothing was evaluated.
    """
    rank, _, _ = init_distributed()
    set_max_image_pixels(cfg.INPUT.MAX_IMAGE_PIXELS)
    set_threads(cfg.ACCEL.THREADS)  # 0 (the default) keeps the process's count
    if is_main_process():
        check_output_dir(cfg.OUTPUT_DIR)  # a file, read-only or full: say so before any work
    setup_logging(cfg.OUTPUT_DIR, rank)
    try:
        with deterministic_mode(cfg.DETERMINISTIC):
            # Before the config is saved: config.yaml and the checkpoints hold what ran.
            cfg = task.resolve_config(cfg, eval_only)
            if is_main_process():
                save_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
            return _run(task, cfg, resume, eval_only, weights)
    finally:
        close_logging()


def _check_inputs(task: Task, cfg: Config, weights: str, resuming: bool, eval_only: bool) -> None:
    """Fail on a mistyped path or option before any data is loaded."""
    if cfg.DATASETS.ON_ERROR not in ("raise", "skip"):
        raise ConfigError(
            f"DATASETS.ON_ERROR must be 'raise' or 'skip', got {cfg.DATASETS.ON_ERROR!r}"
        )
    if cfg.DATALOADER.CACHE_MB < 0:
        raise ConfigError(
            f"DATALOADER.CACHE_MB must be >= 0 (0: off), got {cfg.DATALOADER.CACHE_MB}"
        )
    require_checkpoint_file(weights, "--weights")
    if not resuming:  # the initial weights are not read when resuming
        require_checkpoint_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    task.check_inputs(cfg, weights, resuming, eval_only)


def _evaluate_weights(
    cfg: Config, model: nn.Module, parts: TaskParts, test_key: str, source: str
) -> Metrics:
    """The eval-only branch: ``source``'s weights through the final evaluation."""
    if not source:
        raise ConfigError(
            "--eval-only needs --weights, MODEL.WEIGHTS or a checkpoint in OUTPUT_DIR"
        )
    if parts.evaluate is None:
        raise ConfigError(f"--eval-only needs {test_key}")
    load_model_weights(model, source)
    results = (parts.final_eval or parts.evaluate)()
    logger.info("evaluation of %s: %s", source, json.dumps(results))
    if is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"weights": source, **results}, f, indent=2)
    parts.finish()
    return results


def _run(task: Task, cfg: Config, resume: bool, eval_only: bool, weights: str) -> Metrics:
    out, world = cfg.OUTPUT_DIR, get_world_size()
    device = resolve_device(cfg.MODEL.DEVICE)
    logger.info("%s run in %s on %s (world size %d)", task.name, out, device, world)
    checkpointer = Checkpointer(out, cfg.SOLVER.MAX_TO_KEEP, cfg)
    resuming = resume and not eval_only and checkpointer.last_checkpoint() is not None
    _check_inputs(task, cfg, weights, resuming, eval_only)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.DETERMINISTIC
    seed_everything(cfg.SEED)

    model = task.build_model(cfg, device)
    check_sync_bn(model, device, world)
    amp = cfg.SOLVER.AMP
    amp_ctx = autocast_factory(device.type, amp.ENABLED, amp.DTYPE)
    parts = task.parts(cfg, model, device, amp_ctx, eval_only)
    if eval_only:
        source = weights or cfg.MODEL.WEIGHTS or checkpointer.last_checkpoint() or ""
        return _evaluate_weights(cfg, model, parts, task.test_key, source)

    train = parts.train()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, cfg.SOLVER.MAX_ITER)
    scaler = build_grad_scaler(device.type, amp.ENABLED, amp.DTYPE)
    if is_main_process():  # a disk that cannot hold one checkpoint fails now, not later
        require_free_space(out, estimate_checkpoint_bytes(model, optimizer))
    has_eval = parts.evaluate is not None
    if getattr(scheduler, "uses_metric", False) and (not has_eval or cfg.TEST.EVAL_PERIOD <= 0):
        raise ConfigError(
            f"SOLVER.LR_SCHEDULER plateau needs {task.test_key} and TEST.EVAL_PERIOD > 0"
        )
    start_iter, hook_state = 0, {}
    if resuming:
        ckpt = checkpointer.resume(model, optimizer, scheduler, scaler)
        start_iter, hook_state = int(ckpt["iteration"]), ckpt.get("extra", {}).get("hook_state")
    else:
        if resume:
            logger.info("--resume: no checkpoint in %s, starting from scratch", out)
        train.initial_weights(model, weights)

    check_same_on_all_ranks(start_iter, "the iteration to start from")
    task.prepare_for_training(model, cfg, device)  # in place: the optimizer's tensors stay
    train_model: nn.Module = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=task.find_unused_parameters
        )
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes"
        )
    batches = train.batches(start_iter, cfg.SOLVER.IMS_PER_BATCH // world)

    if not has_eval:
        logger.warning("%s is empty: no validation", task.test_key)
    writer = MetricsWriter(out, start_iter)
    hooks = build_hooks(
        cfg, writer, checkpointer, scheduler, parts.evaluate, parts.final_eval, train.extra
    )
    state = train_loop(
        train_model,
        train.compute_losses,
        batches,
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
    parts.finish()
    return state.metrics
