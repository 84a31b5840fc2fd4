"""The detection task: build data, model and evaluators from a Config, then train or evaluate.

``tools/train_det.py`` and ``tools/eval_det.py`` are thin wrappers over :func:`run` and
:func:`evaluate_checkpoint`. The loop itself is :func:`resdet.engine.trainer.train_loop`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Callable, ContextManager, Dict, List, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from resdet.accel import inference_model, prepare_for_training
from resdet.config.load import ConfigError, save_config
from resdet.config.schema import Config
from resdet.data.catalog import (
    check_dataset_entries,
    dataset_class_names,
    display_name,
    get_dataset,
)
from resdet.data.coco import filter_empty
from resdet.data.det_dataset import DetectionDataset
from resdet.data.det_transforms import build_det_transforms
from resdet.data.image_io import set_max_image_pixels
from resdet.data.loader import build_detection_loader, build_detection_test_loader
from resdet.data.records import DatasetMeta, DetectionRecord
from resdet.engine.amp import autocast_factory, build_grad_scaler
from resdet.engine.checkpoint import (
    Checkpointer,
    load_model_weights,
    require_checkpoint_file,
)
from resdet.engine.dist import (
    all_gather_object,
    barrier,
    check_same_on_all_ranks,
    check_sync_bn,
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
from resdet.engine.initial_weights import load_initial_weights
from resdet.engine.optim import build_lr_scheduler, build_optimizer
from resdet.engine.runtime import resolve_device, seed_everything
from resdet.engine.selection import build_selection_hooks
from resdet.engine.trainer import train_loop
from resdet.engine.val_loss import detection_val_losses
from resdet.evaluation.coco import COCOEvaluator
from resdet.evaluation.voc import VOCEvaluator
from resdet.modeling.detection.build import build_detector
from resdet.utils.logging import close_logging, setup_logging
from resdet.utils.output import check_output_dir, estimate_checkpoint_bytes, require_free_space

logger = logging.getLogger(__name__)

EVALUATORS = {"coco": COCOEvaluator, "voc": VOCEvaluator}


def load_detection_data(
    names: List[str], cfg: Config, train: bool
) -> Tuple[List[DetectionRecord], DatasetMeta]:
    """Records and meta of the named datasets (a ``+`` union when several are listed).

    Bad annotations follow ``DATASETS.ON_ERROR`` ("raise" or "skip", logged).
    """
    if not names:
        raise ConfigError(f"DATASETS.{'TRAIN' if train else 'TEST'} is empty: name a dataset")
    records, meta = get_dataset(
        names if len(names) > 1 else names[0], on_error=cfg.DATASETS.ON_ERROR
    )
    if train and cfg.DATASETS.FILTER_EMPTY:
        records = filter_empty(records)
    if not records:
        raise ConfigError(f"dataset {'+'.join(names)} has no usable images")
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if len(meta.class_names) != num_classes:
        raise ConfigError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes} but dataset {meta.name} has "
            f"{len(meta.class_names)} classes; set MODEL.ROI_HEADS.NUM_CLASSES "
            f"{len(meta.class_names)} (or 0 to take the count from the data)"
        )
    return records, meta


def resolve_num_classes(cfg: Config, eval_only: bool = False) -> Config:
    """``cfg`` with ``MODEL.ROI_HEADS.NUM_CLASSES 0`` replaced by the class count of
    ``DATASETS.TRAIN`` (``DATASETS.TEST`` with ``eval_only``); a non-zero count is kept (and
    checked against the data later by :func:`load_detection_data`). Returns a copy when it
    changes anything, so the saved config and the checkpoints hold the resolved count."""
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        return cfg
    key = "TEST" if eval_only else "TRAIN"
    entries = getattr(cfg.DATASETS, key)
    if not entries:
        raise ConfigError(
            f"MODEL.ROI_HEADS.NUM_CLASSES 0 takes the class count from DATASETS.{key}, "
            "which is empty"
        )
    check_dataset_entries(entries, f"DATASETS.{key}")
    names, _ = dataset_class_names(entries[0])
    resolved = copy.deepcopy(cfg)
    resolved.MODEL.ROI_HEADS.NUM_CLASSES = len(names)
    logger.info("MODEL.ROI_HEADS.NUM_CLASSES 0: %d classes from DATASETS.%s (%s)",
                len(names), key, ", ".join(names))  # fmt: skip
    return resolved


def build_test_loader(
    cfg: Config, records: List[DetectionRecord], drop_difficult: bool = False
) -> DataLoader:
    """The loader of a test set: :func:`resdet.data.loader.build_detection_test_loader` with
    this process's distributed setting."""
    return build_detection_test_loader(
        cfg, records, distributed=get_world_size() > 1, drop_difficult=drop_difficult
    )


@torch.inference_mode()
def run_inference(
    model: nn.Module,
    loader: DataLoader,
    amp_ctx: Callable[[], ContextManager],
    desc: str = "inference",
) -> List[Dict[str, Any]]:
    """Detections for every image of ``loader`` on this rank, in original-image pixels."""
    was_training = model.training
    model.eval()
    out: List[Dict[str, Any]] = []
    try:
        for batch in tqdm(loader, desc=desc, disable=not is_main_process(), leave=False):
            with amp_ctx():
                dets = model(batch)
            for x, d in zip(batch, dets):
                out.append(
                    {
                        "image_id": x["image_id"],
                        "boxes": d["boxes"].float().cpu().numpy(),
                        "scores": d["scores"].float().cpu().numpy(),
                        "labels": d["labels"].cpu().numpy(),
                    }
                )
    finally:
        model.train(was_training)
    return out


def evaluator_names(cfg: Config, meta: DatasetMeta) -> List[str]:
    """The evaluators a test set runs: ``TEST.EVALUATORS`` or the dataset's own, plus ``coco``
    when ``TEST.REPORT`` asks for a report (it is built from the COCO evaluation's results;
    the COCO evaluator scores any dataset, VOC folders and YOLO sets included)."""
    kinds = list(cfg.TEST.EVALUATORS or [meta.evaluator])
    if cfg.TEST.REPORT and "coco" not in kinds:
        kinds.append("coco")
    return kinds


def evaluate_detector(
    model: nn.Module,
    cfg: Config,
    test_sets: List[Tuple[str, List[DetectionRecord], DatasetMeta]],
    amp_ctx: Callable[[], ContextManager],
    output_dir: str,
) -> Dict[str, float]:
    """Run every test set through the model and every evaluator it asks for.

    Returns flat float metrics, ``"<evaluator>/<metric>"`` (prefixed with the dataset name
    when there are several test sets), the same on every rank (the evaluators gather the
    detections to rank 0, which computes them); per-class tables are written into
    ``output_dir`` by rank 0.
    """
    results: Dict[str, float] = {}
    for name, records, meta in test_sets:
        dets = run_inference(model, build_test_loader(cfg, records), amp_ctx, f"eval {name}")
        kinds = evaluator_names(cfg, meta)
        for kind in kinds:
            if kind not in EVALUATORS:
                raise ConfigError(
                    f"TEST.EVALUATORS: unknown '{kind}'; choose from {sorted(EVALUATORS)}"
                )
            sub = output_dir if len(test_sets) == 1 else os.path.join(output_dir, name)
            evaluator = EVALUATORS[kind](records, meta, sub if is_main_process() else None)
            evaluator.process(dets)
            metrics = evaluator.evaluate()
            prefix = f"{kind}/" if len(test_sets) == 1 else f"{name}/{kind}/"
            results.update(
                {prefix + k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            )
    # Only rank 0 computed the metrics; every rank needs them (plateau LR rule, return value).
    return all_gather_object(results)[0]


def write_reports(
    cfg: Config, test_sets: List[Tuple[str, List[DetectionRecord], DatasetMeta]], output_dir: str
) -> None:
    """``TEST.REPORT``: the evaluation report of each test set (rank 0), built from the
    ``coco_results.json`` its last evaluation wrote (:mod:`resdet.evaluation.report_writer`)."""
    if not cfg.TEST.REPORT or not is_main_process():
        return
    from resdet.evaluation.report_writer import report_for_dataset  # matplotlib only if asked

    base = cfg.TEST.REPORT_DIR or os.path.join(output_dir, "report")
    for name, records, meta in test_sets:
        sub = output_dir if len(test_sets) == 1 else os.path.join(output_dir, name)
        target = base if len(test_sets) == 1 else os.path.join(base, name)
        results = os.path.join(sub, "coco_results.json")
        report_for_dataset(records, meta, results, target, cfg.TEST.REPORT_SCORE_THRESH)
        logger.info("evaluation report of %s: %s", name, os.path.join(target, "report.md"))


def run(
    cfg: Config, resume: bool = False, eval_only: bool = False, weights: str = ""
) -> Dict[str, float]:
    """Train (or with ``eval_only`` evaluate) a Faster R-CNN as ``cfg`` says.

    Writes into ``cfg.OUTPUT_DIR``: ``config.yaml`` (the resolved config), ``log.txt``,
    ``metrics.jsonl``, TensorBoard events, checkpoints and the evaluators' result files.
    Returns the last evaluation's metrics.
    """
    rank, _, _ = init_distributed()
    set_max_image_pixels(cfg.INPUT.MAX_IMAGE_PIXELS)
    if is_main_process():
        check_output_dir(cfg.OUTPUT_DIR)  # a file, read-only or full: say so before any work
    setup_logging(cfg.OUTPUT_DIR, rank)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        # Before the config is saved: config.yaml and the checkpoints hold the real count.
        cfg = resolve_num_classes(cfg, eval_only)
        if is_main_process():
            save_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
        return _run(cfg, resume, eval_only, weights)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        close_logging()


def _check_inputs(cfg: Config, weights: str, resuming: bool, eval_only: bool) -> None:
    """Fail on a mistyped path or option before any data is loaded."""
    if cfg.DATASETS.ON_ERROR not in ("raise", "skip"):
        raise ConfigError(
            f"DATASETS.ON_ERROR must be 'raise' or 'skip', got {cfg.DATASETS.ON_ERROR!r}"
        )
    require_checkpoint_file(weights, "--weights")
    if not resuming:  # the initial weights are not read when resuming
        require_checkpoint_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
        if not (weights or cfg.MODEL.WEIGHTS or eval_only):
            require_checkpoint_file(cfg.MODEL.BACKBONE.PRETRAINED, "MODEL.BACKBONE.PRETRAINED")
    # Names and source specs (files, splits) are checked here; the records load later.
    if not eval_only:
        check_dataset_entries(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    check_dataset_entries(cfg.DATASETS.TEST, "DATASETS.TEST")


def _run(cfg: Config, resume: bool, eval_only: bool, weights: str) -> Dict[str, float]:
    out = cfg.OUTPUT_DIR
    device = resolve_device(cfg.MODEL.DEVICE)
    logger.info("detection run in %s on %s (world size %d)", out, device, get_world_size())
    checkpointer = Checkpointer(out, cfg.SOLVER.MAX_TO_KEEP, cfg)
    resuming = resume and not eval_only and checkpointer.last_checkpoint() is not None
    _check_inputs(cfg, weights, resuming, eval_only)
    if cfg.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.DETERMINISTIC
    seed_everything(cfg.SEED)

    model = build_detector(cfg).to(device)
    check_sync_bn(model, device, get_world_size())
    test_sets = []
    for name in cfg.DATASETS.TEST:
        records, meta = load_detection_data([name], cfg, train=False)
        test_sets.append((display_name(name), records, meta))
    amp = cfg.SOLVER.AMP
    amp_ctx = autocast_factory(device.type, amp.ENABLED, amp.DTYPE)

    def evaluate() -> Dict[str, float]:
        results = evaluate_detector(inference_model(model, cfg), cfg, test_sets, amp_ctx, out)
        if cfg.TEST.VAL_LOSS and not eval_only:
            results.update(detection_val_losses(model, cfg, test_sets, amp_ctx))
        return results

    if eval_only:
        source = weights or cfg.MODEL.WEIGHTS or checkpointer.last_checkpoint()
        if not source:
            raise ConfigError(
                "--eval-only needs --weights, MODEL.WEIGHTS or a checkpoint in OUTPUT_DIR"
            )
        if not test_sets:
            raise ConfigError("--eval-only needs DATASETS.TEST")
        load_model_weights(model, source)
        results = evaluate()
        if is_main_process():
            with open(os.path.join(out, "eval_results.json"), "w", encoding="utf-8") as f:
                json.dump({"weights": source, **results}, f, indent=2)
        write_reports(cfg, test_sets, out)
        return results

    train_records, train_meta = load_detection_data(cfg.DATASETS.TRAIN, cfg, train=True)
    logger.info("training on %s: %d images, %d classes", train_meta.name, len(train_records),
                len(train_meta.class_names))  # fmt: skip
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, cfg.SOLVER.MAX_ITER)
    scaler = build_grad_scaler(device.type, amp.ENABLED, amp.DTYPE)
    if is_main_process():  # a disk that cannot hold one checkpoint fails now, not later
        require_free_space(out, estimate_checkpoint_bytes(model, optimizer))
    start_iter, hook_state = 0, {}
    if resume and checkpointer.last_checkpoint():
        ckpt = checkpointer.resume(model, optimizer, scheduler, scaler)
        start_iter, hook_state = int(ckpt["iteration"]), ckpt.get("extra", {}).get("hook_state")
    else:
        if resume:
            logger.info("--resume: no checkpoint in %s, starting from scratch", out)
        load_initial_weights(model, cfg, weights, train_meta.class_names)

    check_same_on_all_ranks(start_iter, "the iteration to start from")
    prepare_for_training(model, cfg, device)  # in place: the optimizer's tensors stay
    train_model: nn.Module = model
    if get_world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        # The C4 head borrows res5 from the backbone; unused parameters can occur when a
        # batch has no foreground, hence find_unused_parameters.
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=True
        )
    world = get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes"
        )
    train_tf = build_det_transforms(
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.FLIP_PROB, is_train=True
    )
    train_set = DetectionDataset(
        train_records, train_tf, on_error=cfg.DATASETS.ON_ERROR, seed=cfg.SEED
    )
    loader = build_detection_loader(
        train_set,
        cfg.SOLVER.IMS_PER_BATCH // world,
        cfg.DATALOADER.NUM_WORKERS,
        shuffle=True,
        seed=cfg.SEED,
        aspect_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        distributed=world > 1,
        infinite=True,
        start_iter=start_iter,
    )

    def compute_losses(m: nn.Module, batch: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        return m(batch)

    writer = MetricsWriter(out, start_iter)
    hooks = [MetricsHook(writer, cfg.LOG_PERIOD), ProgressHook()]
    if test_sets:
        hooks.append(EvalHook(cfg.TEST.EVAL_PERIOD, evaluate, writer))
    hooks.append(LRFeedbackHook(scheduler, cfg.SOLVER.PLATEAU_METRIC))
    extra = {"class_names": train_meta.class_names, "category_ids": train_meta.category_ids}
    hooks += build_selection_hooks(cfg, checkpointer, extra, bool(test_sets))
    hooks.append(CheckpointHook(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, extra=extra))
    state = train_loop(
        train_model,
        compute_losses,
        iter(loader),
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
    write_reports(cfg, test_sets, out)
    return state.metrics
