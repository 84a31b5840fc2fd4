"""``make demo``: the paper's classification-to-detection transfer, end to end, on one CPU.

He et al. 2015 pretrain a ResNet on ImageNet classification and fine-tune it as the trunk of
Faster R-CNN (Appendix A; Tables 7/8 compare detectors by their pretrained trunk). This module
replays that pipeline on the embedded shapes dataset (:mod:`resdet.data.shapes`), with no
download, in a few minutes:

1. ``data``: generate the shapes scenes, their COCO json / VOC xml and the object crops.
2. ``cls``: pretrain a ResNet classifier on the crops (:func:`resdet.engine.classification.run`).
3. ``det``: fine-tune Faster R-CNN R-FPN from that classifier (:func:`resdet.engine.detection.run`).
4. ``det_eval``: COCO and VOC evaluation of that detector on the whole val split.
5. ``scratch``, ``scratch_eval``: the same detector from random initialisation, same
   iterations, evaluated the same way: the transfer gain. By default this chain runs in a
   second process while steps 2-4 run (two cores, one chain each).
6. ``report``: ``REPORT.md`` with the tables and wall times, and the PNGs
   (:mod:`resdet_apps.demo_report`).

Every step writes into its own folder of ``output`` and is skipped when its outputs are
complete, so re-running after an interruption resumes: a training step continues from its
``last_checkpoint``. A step whose settings changed since it ran is started again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

from resdet.accel import bf16_pays
from resdet.config.load import ConfigError, config_to_dict, load_config, packaged_config_path
from resdet.config.schema import Config
from resdet.data.catalog import (
    datasets_root,
    get_dataset,
    register_coco_instances,
    register_dataset,
)
from resdet.data.shapes import shapes_paths
from resdet.engine import classification, detection
from resdet.utils.logging import setup_logging
from resdet_apps.demo_fit import fitted_det_iters
from resdet_apps.demo_steps import (
    Background,
    StepRun,
    StepTimer,
    prepare_step,
    schedule_and_data_root,
    shapes_step,
)

logger = logging.getLogger(__name__)

__all__ = ["SCHEDULES", "DemoOptions", "Schedule", "run_demo", "repo_config"]


@dataclass
class Schedule:
    """One preset of the demo: dataset size and the config overrides of each training run.

    Attributes:
        num_train, num_val, crop_size: :func:`~resdet.data.shapes.generate_shapes` arguments.
        cls: ``KEY VALUE`` overrides of ``configs/shapes_cls_r18.yaml``.
        det: overrides of ``configs/shapes_r18_fpn.yaml``, for both detector runs.
        scratch: further overrides of the from-scratch run (random init needs trainable,
            normalised layers: BN instead of frozen BN, no frozen stages).
        eval_images: val images of the periodic evaluation (``TEST.EVAL_PERIOD`` in ``det``);
            the final evaluation always uses the whole val split.
    """

    num_train: int = 1500
    num_val: int = 300
    crop_size: int = 64
    cls: List[str] = field(default_factory=list)
    det: List[str] = field(default_factory=list)
    scratch: List[str] = field(default_factory=list)
    eval_images: int = 50


_SCRATCH = [
    "MODEL.BACKBONE.PRETRAINED", "",
    "MODEL.BACKBONE.NORM", "BN",
    "MODEL.BACKBONE.FREEZE_AT", "0",
]  # fmt: skip

SCHEDULES: Dict[str, Schedule] = {
    # The configs as they are, fp32: what `make demo` runs where bf16 does not pay.
    "default": Schedule(scratch=list(_SCRATCH)),
    # What `make demo` runs where bf16 trains the detector faster than fp32 (measured:
    # default_schedule): on a 2-core AMX Xeon 1.6-1.9x faster. `make demo` fits its detector
    # iterations to the measured speed (demo_fit); the 6,000 here are the upper bound.
    "bf16": Schedule(
        cls=["SOLVER.MAX_ITER", "2400", "TEST.EVAL_PERIOD", "400"],
        det=["SOLVER.MAX_ITER", "6000", "TEST.EVAL_PERIOD", "1000", "SOLVER.WARMUP_ITERS", "200",
             "SOLVER.AMP.ENABLED", "True"],
        scratch=list(_SCRATCH),
        eval_images=100,
    ),
    # Longer fp32 runs aimed at the accuracy targets (AP50 >= 0.90, AP >= 0.60): 30 minutes
    # on a 2-core AVX2 EPYC (data already generated), pretrained AP 69.5 / AP50 91.7, from
    # scratch 66.9 / 89.1 (with the detector's former cosine schedule; not rerun with linear).
    "long": Schedule(
        cls=["SOLVER.MAX_ITER", "2400", "TEST.EVAL_PERIOD", "400"],
        det=["SOLVER.MAX_ITER", "6000", "TEST.EVAL_PERIOD", "1000", "SOLVER.WARMUP_ITERS", "200"],
        scratch=list(_SCRATCH),
        eval_images=100,
    ),
    # A smoke test of the whole pipeline in about a minute: tiny data, a few iterations.
    "quick": Schedule(
        num_train=16,
        num_val=8,
        crop_size=32,
        cls=[
            "INPUT.CROP_SIZE", "32", "INPUT.SCALE_RANGE", "[32, 36]", "INPUT.TEST_RESIZE", "32",
            "SOLVER.IMS_PER_BATCH", "16", "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "2",
            "TEST.EVAL_PERIOD", "3", "DATALOADER.NUM_WORKERS", "0", "LOG_PERIOD", "2",
        ],
        det=[
            "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_HEADS.FC_DIM", "32",
            "INPUT.MIN_SIZE_TRAIN", "[96]", "INPUT.MAX_SIZE_TRAIN", "128",
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "1",
            "TEST.EVAL_PERIOD", "2", "DATALOADER.NUM_WORKERS", "0", "LOG_PERIOD", "2",
        ],
        scratch=list(_SCRATCH),
        eval_images=4,
    ),
}  # fmt: skip


def default_schedule(det_config: str = "") -> str:
    """The schedule ``make demo`` runs here: "bf16" where bf16 autocast trains the demo's
    detector faster than float32 on this CPU, else "default" (fp32).

    Decided by :func:`resdet.accel.bf16_pays` on the detector of ``det_config`` (default
    ``shapes_r18_fpn.yaml``) with one thread, as the demo trains it: a training step timed both
    ways once per machine (cached), never timed where bf16 is emulated (no ``avx512_bf16`` /
    ``amx_bf16`` flag: 10-25x slower). The flag alone misleads: an AVX-512-BF16 Xeon without
    AMX trains R50-FPN 0.79x as fast in bf16 as in float32.
    """
    import torch

    from resdet.modeling.detection.build import build_detector

    cfg = load_config(det_config or repo_config("shapes_r18_fpn.yaml"),
                      ["MODEL.BACKBONE.PRETRAINED", ""])  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return "bf16" if bf16_pays(build_detector(cfg), cfg, train=True) else "default"
    finally:
        torch.set_num_threads(threads)


@dataclass
class DemoOptions:
    """What :func:`run_demo` does.

    Attributes:
        output: folder of everything the demo writes (``cls/``, ``det/``, ``det_scratch/``,
            ``REPORT.md``, PNGs, ``summary.json``).
        schedule: a key of :data:`SCHEDULES`.
        data_root: where the shapes dataset is generated; "" is the catalog's
            ``<RESDET_DATASETS or ./datasets>/shapes`` (``shapes_quick`` for "quick").
        cls_config, det_config: YAML files; "" picks the repository's shapes configs.
        cls_opts, det_opts: extra ``KEY VALUE`` overrides, applied after the schedule's
            (``det_opts`` to both detector runs).
        scratch: also train the detector from scratch (the transfer comparison).
        parallel: train it in a second process while the classifier and the pretrained
            detector train (each process uses one thread); else one after the other.
        workers: processes generating the dataset.
        num_vis: val images drawn with predictions and ground truth.
        det_iters: iterations of both detectors (eval, warm-up and checkpoint periods
            follow); 0 keeps the schedule's. ``det_opts`` still override them.
        fit: with ``det_iters`` 0, fit it to this CPU's measured speed and the demo's time
            budget (:mod:`resdet_apps.demo_fit`); what ``make demo`` does.
    """

    output: str = "output/demo"
    schedule: str = "default"
    data_root: str = ""
    cls_config: str = ""
    det_config: str = ""
    cls_opts: List[str] = field(default_factory=list)
    det_opts: List[str] = field(default_factory=list)
    scratch: bool = True
    parallel: bool = True
    workers: int = 2
    num_vis: int = 8
    det_iters: int = 0
    fit: bool = False


def repo_config(name: str) -> str:
    """Path of the packaged config ``name`` (the repository's ``configs/<name>``)."""
    try:
        return packaged_config_path(name)
    except ConfigError as e:
        raise ConfigError(f"{e}; pass it explicitly (--cls-config/--det-config)") from None


def _dataset_names(data_root: str, eval_images: int) -> Tuple[str, str, str]:
    """Catalog names ``(train, val, periodic-eval subset)`` of the shapes data in ``data_root``.

    The standard ``shapes_*`` names when the data is where the catalog looks; otherwise the
    demo registers ``demo_shapes_*`` for its folder. The subset is the first ``eval_images``
    val images (the evaluators score only the images they are given).
    """
    catalog_root = os.path.join(datasets_root(), "shapes")
    train, val = "shapes_train", "shapes_val"
    if os.path.abspath(data_root) != os.path.abspath(catalog_root):
        paths = shapes_paths(data_root)
        train, val = "demo_shapes_train", "demo_shapes_val"
        for name, split in ((train, "train"), (val, "val")):
            register_coco_instances(
                name, paths[f"{split}_json"], paths[f"{split}_images"], overwrite=True
            )
    subset = f"{val}_first{eval_images}"

    def load_subset() -> Any:
        records, meta = get_dataset(val)
        meta.name = subset
        return records[:eval_images], meta

    register_dataset(subset, load_subset, overwrite=True)
    return train, val, subset


def build_configs(opts: DemoOptions, data_root: str) -> Tuple[Dict[str, Config], str]:
    """The resolved configs of the runs and the catalog name of the val split.

    Returns:
        ``({"cls": ..., "det": ..., "scratch": ...}, val_name)``; "scratch" only with
        ``opts.scratch``.

    Raises:
        ConfigError: unknown schedule, unknown or mistyped override, missing config file.
    """
    if opts.schedule not in SCHEDULES:
        raise ConfigError(f"unknown demo schedule '{opts.schedule}'; use {sorted(SCHEDULES)}")
    sch = SCHEDULES[opts.schedule]
    paths = shapes_paths(data_root)
    cls_cfg = load_config(
        opts.cls_config or repo_config("shapes_cls_r18.yaml"),
        [
            *sch.cls,
            *opts.cls_opts,
            "DATASETS.CLS_TRAIN", paths["crops_train"],
            "DATASETS.CLS_TEST", paths["crops_val"],
            "OUTPUT_DIR", os.path.join(opts.output, "cls"),
        ],
    )  # fmt: skip
    train, val, subset = _dataset_names(data_root, sch.eval_images)
    det_path = opts.det_config or repo_config("shapes_r18_fpn.yaml")

    n = opts.det_iters
    iters = [
        "SOLVER.MAX_ITER", str(n), "SOLVER.WARMUP_ITERS", str(max(20, n * 3 // 100)),
        "TEST.EVAL_PERIOD", str(max(1, n // 4)), "SOLVER.CHECKPOINT_PERIOD", str(max(1, n // 10)),
    ] if n > 0 else []  # fmt: skip

    def det_config(name: str, extra: List[str]) -> Config:
        cfg = load_config(
            det_path,
            [
                *sch.det,
                *iters,
                *opts.det_opts,
                *extra,
                "DATASETS.TRAIN", f"[{train}]",
                "OUTPUT_DIR", os.path.join(opts.output, name),
            ],
        )  # fmt: skip
        # Training scores only a few val images, and only when TEST.EVAL_PERIOD asks for
        # curves; the whole val split is scored once at the end (step "eval").
        cfg.DATASETS.TEST = [subset] if cfg.TEST.EVAL_PERIOD > 0 else []
        return cfg

    weights = os.path.join(cls_cfg.OUTPUT_DIR, "model_final.pth")
    configs = {"cls": cls_cfg, "det": det_config("det", ["MODEL.BACKBONE.PRETRAINED", weights])}
    if opts.scratch:
        configs["scratch"] = det_config("det_scratch", list(sch.scratch))
    return configs, val


def _train(cfg: Config, run_fn: Callable[..., Any]) -> str:
    """Train as ``cfg`` says unless done already; resume an interrupted run."""
    status = prepare_step(cfg.OUTPUT_DIR, config_to_dict(cfg), "model_final.pth")
    if status != "skipped":
        run_fn(cfg, resume=True)
    return status


def _evaluate(cfg: Config, val: str) -> str:
    """Score ``OUTPUT_DIR/model_final.pth`` on the whole val split with the COCO and VOC
    evaluators (``coco_metrics.json``, ``voc_metrics.json``, ... in ``OUTPUT_DIR/eval``)."""
    eval_cfg = copy.deepcopy(cfg)
    eval_cfg.DATASETS.TEST = [val]
    eval_cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "eval")
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    settings = {"weights_mtime": os.path.getmtime(weights), **config_to_dict(eval_cfg)}
    status = prepare_step(eval_cfg.OUTPUT_DIR, settings, "eval_results.json")
    if status != "skipped":
        detection.run(eval_cfg, eval_only=True, weights=weights)
    return status


def _scratch_chain(
    cfg: Config, val: str, data_root: str, eval_images: int, steps: Dict[str, Any]
) -> Dict[str, Dict[str, Any]]:
    """Train and evaluate the from-scratch detector; runs in a second process next to the
    classifier -> pretrained-detector chain (it needs nothing from it).

    Returns the wall time and status of the steps "scratch" and "scratch_eval". Its console
    output is dropped (``OUTPUT_DIR/log.txt`` has it all), so only one progress bar shows.
    """
    import torch

    torch.set_num_threads(1)
    sys.stderr = open(os.devnull, "w")  # for the rest of this process's life
    _dataset_names(data_root, eval_images)  # a spawned process starts with the bare catalog
    timer = StepTimer(None)
    timer.steps = {k: v for k, v in steps.items() if k.startswith("scratch")}
    timer.run("scratch", lambda: _train(cfg, detection.run))
    timer.run("scratch_eval", lambda: _evaluate(cfg, val))
    return timer.steps


def run_demo(opts: DemoOptions) -> Dict[str, Any]:
    """Run the whole demo as ``opts`` says; return the summary also written to
    ``<output>/summary.json`` (metrics of each run, wall time per step, report paths).

    Uses one intra-op thread per process (:class:`~resdet_apps.demo_steps.StepRun` says why).
    With ``opts.parallel`` the from-scratch detector trains in a second process meanwhile, so
    the two cores do the two chains of the demo.

    Raises:
        ConfigError, DatasetError: bad options, configs or data (the message says which).
    """
    from resdet_apps import demo_report  # matplotlib and opencv drawing: only when needed

    sch, data_root = schedule_and_data_root(SCHEDULES, opts.schedule, opts.data_root, "shapes")
    with StepRun(opts.output) as run:
        t_start, timer = time.perf_counter(), run.timer
        configs, val = build_configs(opts, data_root)
        if opts.fit and not opts.det_iters:
            n = fitted_det_iters(opts.output, opts.schedule, configs, parallel=opts.parallel)
            opts = dataclasses.replace(opts, det_iters=n, fit=n > 0)
            configs, val = build_configs(opts, data_root)

        data = shapes_step(data_root, opts.workers, num_train=sch.num_train,
                           num_val=sch.num_val, crop_size=sch.crop_size)  # fmt: skip

        def step(name: str, fn: Callable[[], str]) -> None:
            logger.info("demo step '%s'", name)
            timer.run(name, fn)
            setup_logging(opts.output)  # each run closes the log handlers it opened

        step("data", data)
        if "scratch" in configs and opts.parallel:
            scratch_dir = configs["scratch"].OUTPUT_DIR
            run.background = Background(
                _scratch_chain,
                *(configs["scratch"], val, data_root, sch.eval_images, timer.steps),
                name=f"from-scratch detector (log: {scratch_dir}/log.txt)",
            )
            logger.info("from-scratch detector: training in a second process (%s)", scratch_dir)
        step("cls", lambda: _train(configs["cls"], classification.run))
        step("det", lambda: _train(configs["det"], detection.run))
        step("det_eval", lambda: _evaluate(configs["det"], val))
        if run.background is not None:
            logger.info("waiting for the from-scratch detector (%s)", scratch_dir)
            timer.steps.update(run.background.result())
            run.background = None
            timer.save()
        elif "scratch" in configs:
            step("scratch", lambda: _train(configs["scratch"], detection.run))
            step("scratch_eval", lambda: _evaluate(configs["scratch"], val))

        def report() -> str:
            wall = time.perf_counter() - t_start
            demo_report.write_report(opts, configs, val, timer.steps, wall)
            return "ran"

        step("report", report)
        wall = time.perf_counter() - t_start
        summary = demo_report.summarize(opts, configs, timer.steps, wall)
        with open(os.path.join(opts.output, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        return summary
