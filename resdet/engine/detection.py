"""The detection task: data, model and evaluators from a Config, the builders
:func:`resdet.engine.runner.run_task` calls to train or evaluate a Faster R-CNN.

``tools/train_det.py`` and ``tools/eval_det.py`` are thin wrappers over :func:`run`. The
loop itself is :func:`resdet.engine.trainer.train_loop`.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Callable, ContextManager, Dict, List, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from resdet.accel import inference_model, prepare_for_training
from resdet.config.load import ConfigError
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
from resdet.data.loader import build_detection_loader, build_detection_test_loader
from resdet.data.records import DatasetMeta, DetectionRecord
from resdet.engine.dist import all_gather_object, get_world_size, is_main_process
from resdet.engine.initial_weights import load_initial_weights
from resdet.engine.model_weights import require_checkpoint_file
from resdet.engine.runner import Task, TaskParts, TrainParts, run_task
from resdet.engine.val_loss import detection_val_losses
from resdet.evaluation.coco import COCOEvaluator
from resdet.evaluation.tta import DetectorWithTTA, tta_views
from resdet.evaluation.voc import VOCEvaluator
from resdet.modeling.detection.build import build_detector

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
    cfg: Config, records: List[DetectionRecord], drop_difficult: bool = False, resize: bool = True
) -> DataLoader:
    """The loader of a test set: :func:`resdet.data.loader.build_detection_test_loader` with
    this process's distributed setting."""
    return build_detection_test_loader(
        cfg,
        records,
        distributed=get_world_size() > 1,
        drop_difficult=drop_difficult,
        resize=resize,
    )


def _numpy_detections(image_id: int, det: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    return {
        "image_id": image_id,
        "boxes": det["boxes"].float().cpu().numpy(),
        "scores": det["scores"].float().cpu().numpy(),
        "labels": det["labels"].cpu().numpy(),
    }


@torch.inference_mode()
def run_inference(
    model: nn.Module,
    loader: DataLoader,
    amp_ctx: Callable[[], ContextManager],
    desc: str = "inference",
) -> List[Dict[str, Any]]:
    """Detections for every image of ``loader`` on this rank, in original-image pixels
    (with a test-time augmented model, each also holds the first view's under ``"plain"``)."""
    was_training = model.training
    model.eval()
    out: List[Dict[str, Any]] = []
    try:
        for batch in tqdm(loader, desc=desc, disable=not is_main_process(), leave=False):
            with amp_ctx():
                dets = model(batch)
            for x, d in zip(batch, dets):
                entry = _numpy_detections(x["image_id"], d)
                if "plain" in d:
                    entry["plain"] = _numpy_detections(x["image_id"], d["plain"])
                out.append(entry)
    finally:
        model.train(was_training)
    return out


def detect_test_set(
    model: nn.Module,
    cfg: Config,
    records: List[DetectionRecord],
    amp_ctx: Callable[[], ContextManager],
    desc: str,
    tta: bool = False,
) -> List[Dict[str, Any]]:
    """:func:`run_inference` over a test set as it is scored: one pass, or with ``tta`` the
    views of ``TEST.AUG`` fused (each entry then holds the plain detections under
    ``"plain"``)."""
    if not tta:
        return run_inference(model, build_test_loader(cfg, records), amp_ctx, desc)
    loader = build_test_loader(cfg, records, resize=False)  # each view resizes the original
    return run_inference(DetectorWithTTA.from_config(model, cfg), loader, amp_ctx, f"{desc} (TTA)")


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
    tta: bool = False,
) -> Dict[str, float]:
    """Run every test set through the model and every evaluator it asks for.

    Returns flat float metrics, ``"<evaluator>/<metric>"`` (prefixed with the dataset name
    when there are several test sets), the same on every rank (the evaluators gather the
    detections to rank 0, which computes them); per-class tables are written into
    ``output_dir`` by rank 0. With ``tta`` (``TEST.AUG``: :mod:`resdet.evaluation.tta`) one
    pass scores both the plain detections (the first view's, as above) and the fused ones,
    as ``"<evaluator>_tta/<metric>"`` with their files in ``<output_dir>/tta``.
    """
    for kind in {k for _, _, meta in test_sets for k in evaluator_names(cfg, meta)}:
        if kind not in EVALUATORS:
            raise ConfigError(
                f"TEST.EVALUATORS: unknown '{kind}'; choose from {sorted(EVALUATORS)}"
            )
    results: Dict[str, float] = {}
    for name, records, meta in test_sets:
        sub = output_dir if len(test_sets) == 1 else os.path.join(output_dir, name)
        dets = detect_test_set(model, cfg, records, amp_ctx, f"eval {name}", tta)
        runs = [("", sub, dets)]
        if tta:
            plain = [d.pop("plain") for d in dets]
            runs = [("", sub, plain), ("_tta", os.path.join(sub, "tta"), dets)]
        for suffix, folder, dets in runs:
            for kind in evaluator_names(cfg, meta):
                evaluator = EVALUATORS[kind](records, meta, folder if is_main_process() else None)
                evaluator.process(dets)
                prefix = f"{kind}{suffix}/" if len(test_sets) == 1 else f"{name}/{kind}{suffix}/"
                for k, v in evaluator.evaluate().items():
                    if isinstance(v, (int, float)):
                        results[prefix + k] = float(v)
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


def _check_inputs(cfg: Config, weights: str, resuming: bool, eval_only: bool) -> None:
    """The detection inputs: the backbone's pretrained weights, the dataset entries."""
    if not (resuming or weights or cfg.MODEL.WEIGHTS or eval_only):
        require_checkpoint_file(cfg.MODEL.BACKBONE.PRETRAINED, "MODEL.BACKBONE.PRETRAINED")
    # Names and source specs (files, splits) are checked here; the records load later.
    if not eval_only:
        check_dataset_entries(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    check_dataset_entries(cfg.DATASETS.TEST, "DATASETS.TEST")
    if cfg.TEST.AUG.ENABLED:
        tta_views(cfg)  # its settings checked now, not after training


def _build_model(cfg: Config, device: torch.device) -> nn.Module:
    return build_detector(cfg).to(device)


def _parts(
    cfg: Config,
    model: nn.Module,
    device: torch.device,
    amp_ctx: Callable[[], ContextManager],
    eval_only: bool,
) -> TaskParts:
    out = cfg.OUTPUT_DIR
    test_sets = []
    for name in cfg.DATASETS.TEST:
        records, meta = load_detection_data([name], cfg, train=False)
        test_sets.append((display_name(name), records, meta))

    def evaluate(tta: bool = False) -> Dict[str, float]:
        fast = inference_model(model, cfg)
        results = evaluate_detector(fast, cfg, test_sets, amp_ctx, out, tta=tta)
        if cfg.TEST.VAL_LOSS and not eval_only:
            results.update(detection_val_losses(model, cfg, test_sets, amp_ctx))
        return results

    def final_eval() -> Dict[str, float]:
        # Test-time augmentation only here, after training (as detectron2's TEST.AUG): the
        # periodic evaluations stay one pass.
        return evaluate(tta=cfg.TEST.AUG.ENABLED)

    def train() -> TrainParts:
        records, meta = load_detection_data(cfg.DATASETS.TRAIN, cfg, train=True)
        logger.info("training on %s: %d images, %d classes", meta.name, len(records),
                    len(meta.class_names))  # fmt: skip

        def initial_weights(m: nn.Module, weights: str) -> None:
            load_initial_weights(m, cfg, weights, meta.class_names)

        def batches(start_iter: int, per_rank: int) -> Any:
            i = cfg.INPUT
            transform = build_det_transforms(
                i.MIN_SIZE_TRAIN, i.MAX_SIZE_TRAIN, i.FLIP_PROB, is_train=True
            )
            dataset = DetectionDataset(
                records,
                transform,
                on_error=cfg.DATASETS.ON_ERROR,
                seed=cfg.SEED,
                cache_bytes=cfg.DATALOADER.CACHE_MB * 2**20,
            )
            loader = build_detection_loader(
                dataset,
                per_rank,
                cfg.DATALOADER.NUM_WORKERS,
                shuffle=True,
                seed=cfg.SEED,
                aspect_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
                distributed=get_world_size() > 1,
                infinite=True,
                start_iter=start_iter,
            )
            return iter(loader)

        def compute_losses(m: nn.Module, batch: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
            return m(batch)

        extra = {"class_names": meta.class_names, "category_ids": meta.category_ids}
        return TrainParts(extra, initial_weights, batches, compute_losses)

    def finish() -> None:
        write_reports(cfg, test_sets, out)

    if not test_sets:
        return TaskParts(None, train, finish=finish)
    # Without TEST.AUG the final evaluation is the periodic one (an early stop right after
    # an evaluation then reuses its results).
    tta = cfg.TEST.AUG.ENABLED
    return TaskParts(evaluate, train, final_eval=final_eval if tta else None, finish=finish)


DETECTION = Task(
    name="detection",
    test_key="DATASETS.TEST",
    build_model=_build_model,
    parts=_parts,
    # Before the config is saved: config.yaml and the checkpoints hold the real count.
    resolve_config=resolve_num_classes,
    check_inputs=_check_inputs,
    prepare_for_training=prepare_for_training,
    # The C4 head borrows res5 from the backbone; unused parameters can occur when a batch
    # has no foreground.
    find_unused_parameters=True,
)


def run(
    cfg: Config, resume: bool = False, eval_only: bool = False, weights: str = ""
) -> Dict[str, float]:
    """Train (or with ``eval_only`` evaluate) a Faster R-CNN as ``cfg`` says
    (:func:`resdet.engine.runner.run_task` with :data:`DETECTION`).

    Writes into ``cfg.OUTPUT_DIR``: ``config.yaml`` (the resolved config), ``log.txt``,
    ``metrics.jsonl``, TensorBoard events, checkpoints and the evaluators' result files.
    Returns the last evaluation's metrics.
    """
    return run_task(DETECTION, cfg, resume, eval_only, weights)
