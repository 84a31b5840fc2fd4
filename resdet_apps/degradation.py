"""The degradation problem, plain vs residual (He et al. 2015, Sec. 4.2, Figures 6 and 7).

The paper's central finding: a deeper *plain* net has a higher training error than a shallower
one (plain-56 above plain-20), while with identity shortcuts the deeper net trains better
(ResNet-56 below ResNet-20), and residual functions have small responses. This module replays
the experiment on the embedded shapes dataset (:mod:`resdet.data.shapes`, object crops at
32x32, 7 shapes + background), with the classification engine
(:func:`resdet.engine.classification.run`) and nothing downloaded:

1. ``data``: generate the shapes dataset with 32 px crops (skipped when complete).
2. ``<run>``: train each of plain-20, plain-56, ResNet-20, ResNet-56 (CIFAR-style 6n+2 nets,
   option A shortcuts, the Sec. 4.2 recipe scaled down: ``configs/shapes_degradation.yaml``
   plus the schedule's overrides). By default two chains run side by side, one process and
   one thread each, each chain one deep and one shallow net, so the cores are evenly loaded.
3. ``<run>_responses``: the std of each 3x3 layer's response on val crops
   (:mod:`resdet.modeling.layer_responses`), saved as ``responses.json`` in the run folder.
4. ``report``: ``report.md``, ``fig6_training_curves.png``, ``fig7_layer_responses.png`` and
   ``summary.json`` (:mod:`resdet_apps.degradation_report`).

Every step is skipped when already done with the same settings, so re-running resumes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from resdet.config.load import ConfigError, config_to_dict, load_config
from resdet.config.schema import Config
from resdet.data.shapes import shapes_paths
from resdet.utils.logging import setup_logging
from resdet_apps.demo_steps import (
    Background,
    StepRun,
    StepTimer,
    prepare_step,
    schedule_and_data_root,
    shapes_step,
)

logger = logging.getLogger(__name__)

__all__ = ["SCHEDULES", "DegradationOptions", "Schedule", "build_configs", "run_degradation"]

RESPONSES_FILE = "responses.json"


@dataclass
class Schedule:
    """One preset: the dataset and the overrides shared by the four training runs.

    Attributes:
        num_train, num_val: scenes of :func:`~resdet.data.shapes.generate_shapes` (its
            crops are the images: about 4.7 per scene).
        opts: ``KEY VALUE`` overrides of the config, for every run.
        response_images: val crops the layer responses are measured on (evenly spaced over
            the class-sorted folder, so every class is in).
    """

    num_train: int = 1500
    num_val: int = 300
    opts: List[str] = field(default_factory=list)
    response_images: int = 500


SCHEDULES: Dict[str, Schedule] = {
    # The config as it is (see configs/shapes_degradation.yaml): sized for 15 minutes on
    # 2 idle CPU cores, everything included (README: how it was estimated).
    "default": Schedule(),
    # A smoke test of every step in seconds: tiny data, a few iterations (what the tests run).
    "quick": Schedule(
        num_train=12,
        num_val=6,
        opts=[
            "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "[3, 5]",
            "TEST.EVAL_PERIOD", "3", "TEST.IMS_PER_BATCH", "16", "LOG_PERIOD", "2",
            "SOLVER.CHECKPOINT_PERIOD", "100",
        ],
        response_images=8,
    ),
}  # fmt: skip


@dataclass
class DegradationOptions:
    """What :func:`run_degradation` does.

    Attributes:
        config: the YAML of the recipe (``configs/shapes_degradation.yaml``; the tool passes
            it); every run overrides ``MODEL.BACKBONE.DEPTH`` and ``PLAIN``.
        output: folder of everything written (one subfolder per run, report, PNGs).
        schedule: a key of :data:`SCHEDULES`.
        depths: ``(shallow, deep)`` CIFAR depths 6n+2 (the paper's pair is 20 and 56).
        data_root: where the 32 px shapes dataset is; "" is
            ``<RESDET_DATASETS or ./datasets>/shapes_c32`` (``shapes_c32_quick`` for "quick").
        opts: extra ``KEY VALUE`` overrides, after the schedule's.
        parallel: two chains in two processes (one thread each); else one after the other.
        workers: processes generating the dataset.
    """

    config: str
    output: str = "output/degradation"
    schedule: str = "default"
    depths: Tuple[int, int] = (20, 56)
    data_root: str = ""
    opts: List[str] = field(default_factory=list)
    parallel: bool = True
    workers: int = 2


def run_names(depths: Sequence[int]) -> List[Tuple[str, int, bool]]:
    """``(name, depth, plain)`` of the four runs, e.g. ``("plain-20", 20, True)``."""
    return [
        (f"{'plain' if plain else 'ResNet'}-{d}", d, plain)
        for plain in (True, False)
        for d in depths
    ]


def build_configs(opts: DegradationOptions, data_root: str) -> Dict[str, Config]:
    """The resolved config of each run, keyed by run name (``plain-20``, ..., ``ResNet-56``).

    Raises:
        ConfigError: unknown schedule, bad depths, unknown or mistyped override, missing file.
    """
    if opts.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule '{opts.schedule}'; use {sorted(SCHEDULES)}")
    shallow, deep = opts.depths
    if not shallow < deep or any(d < 8 or (d - 2) % 6 for d in opts.depths):
        raise ConfigError(
            f"depths must be two CIFAR depths 6n+2, shallow then deep (e.g. 20 56), "
            f"got {list(opts.depths)}"
        )
    paths = shapes_paths(data_root)
    configs = {}
    for name, depth, plain in run_names(opts.depths):
        configs[name] = load_config(
            opts.config,
            [
                *SCHEDULES[opts.schedule].opts,
                *opts.opts,
                "MODEL.BACKBONE.DEPTH", str(depth),
                "MODEL.BACKBONE.PLAIN", str(plain),
                "DATASETS.CLS_TRAIN", paths["crops_train"],
                "DATASETS.CLS_TEST", paths["crops_val"],
                "OUTPUT_DIR", os.path.join(opts.output, name.lower()),
            ],
        )  # fmt: skip
    return configs


def measure_responses(cfg: Config, num_images: int) -> Dict[str, Any]:
    """Std of each 3x3 layer's response of ``OUTPUT_DIR/model_final.pth`` on val crops.

    Returns (and writes to ``OUTPUT_DIR/responses.json``) ``{"layers": [conv names],
    "std": [floats], "num_images": int}``.
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Subset

    from resdet.engine.checkpoint import load_model_weights
    from resdet.engine.classification import build_cls_datasets
    from resdet.modeling.classifier import build_classifier
    from resdet.modeling.layer_responses import layer_response_std

    _, val, _ = build_cls_datasets(cfg)
    if val is None:
        raise ConfigError("DATASETS.CLS_TEST is empty: the layer responses need val images")
    n = len(val)  # type: ignore[arg-type]
    indices = np.unique(np.linspace(0, n - 1, min(num_images, n)).round().astype(int))
    loader = DataLoader(Subset(val, indices.tolist()), batch_size=cfg.TEST.IMS_PER_BATCH)
    model = build_classifier(cfg)
    load_model_weights(model, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), strict=True)
    names, stds = layer_response_std(model, (images for images, _ in loader), torch.device("cpu"))
    result = {"layers": names, "std": stds, "num_images": len(indices)}
    with open(os.path.join(cfg.OUTPUT_DIR, RESPONSES_FILE), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result


def _train_and_measure(name: str, cfg: Config, num_images: int, timer: StepTimer) -> None:
    """Steps ``<name>`` (train, or resume, unless done) and ``<name>_responses``."""
    from resdet.engine import classification

    def train() -> str:
        status = prepare_step(cfg.OUTPUT_DIR, config_to_dict(cfg), "model_final.pth")
        if status != "skipped":
            classification.run(cfg, resume=True)
        return status

    def responses() -> str:
        path = os.path.join(cfg.OUTPUT_DIR, RESPONSES_FILE)
        final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        if os.path.isfile(path) and os.path.getmtime(path) >= os.path.getmtime(final):
            with open(path, encoding="utf-8") as f:
                if json.load(f).get("num_images") == num_images:
                    return "skipped"
        measure_responses(cfg, num_images)
        return "ran"

    for step, fn in ((name, train), (f"{name}_responses", responses)):
        # CPU seconds of this one-thread process: close to the wall time the step would take
        # on an idle core, whatever else shares the machine (the budget's yardstick).
        cpu = time.process_time()
        timer.run(step, fn)
        if timer.steps[step]["status"] != "done before":
            timer.steps[step]["cpu_seconds"] = round(time.process_time() - cpu, 1)


def _chain(
    runs: List[Tuple[str, Config]],
    num_images: int,
    log_dir: str,
    quiet: bool,
    steps: Dict[str, Dict[str, Any]],
) -> Dict[str, Dict[str, Any]]:
    """Train and measure ``runs`` one after the other in this process, on one thread.

    Args:
        log_dir: the experiment's folder; its log is reopened after each training run (a
            run closes the log handlers it opened).
        quiet: drop this process's console output (the second process: each run's
            ``log.txt`` has it all), so only one progress bar shows.
        steps: wall times recorded earlier, so a skipped step keeps the time it took.

    Returns:
        the wall time and status of this chain's steps.
    """
    import torch

    torch.set_num_threads(1)
    if quiet:
        sys.stderr = open(os.devnull, "w")  # for the rest of this process's life
    timer = StepTimer(None)
    names = {n for name, _ in runs for n in (name, f"{name}_responses")}
    timer.steps = {k: v for k, v in steps.items() if k in names}
    for name, cfg in runs:
        _train_and_measure(name, cfg, num_images, timer)
        setup_logging(log_dir)
    return timer.steps


def run_degradation(opts: DegradationOptions) -> Dict[str, Any]:
    """Run the whole experiment as ``opts`` says; return the summary also written to
    ``<output>/summary.json`` (errors, the finding, responses, wall time per step, load).

    Raises:
        ConfigError, DatasetError: bad options, config or data (the message says which).
    """
    from resdet_apps import degradation_report

    sch, data_root = schedule_and_data_root(SCHEDULES, opts.schedule, opts.data_root, "shapes_c32")
    configs = build_configs(opts, data_root)
    with StepRun(opts.output) as run:
        t_start, load_start = time.perf_counter(), os.getloadavg()
        timer = run.timer
        data = shapes_step(data_root, opts.workers, num_train=sch.num_train,
                           num_val=sch.num_val, crop_size=32)  # fmt: skip

        timer.run("data", data)
        # Two chains of equal cost: each trains one deep and one shallow net (deep first, so
        # the long runs start early). Plain and residual nets cost about the same.
        p_shallow, p_deep, r_shallow, r_deep = configs.items()
        chains = [[r_deep, p_shallow], [p_deep, r_shallow]]
        if opts.parallel:
            run.background = Background(
                _chain,
                *(chains[1], sch.response_images, opts.output, True, timer.steps),
                name=f"second training process ({', '.join(n for n, _ in chains[1])})",
            )
            steps = _chain(chains[0], sch.response_images, opts.output, False, timer.steps)
            timer.steps.update(steps)
            logger.info("waiting for the second process (%s)", [n for n, _ in chains[1]])
            timer.steps.update(run.background.result())
            run.background = None
        else:
            for chain in chains:
                steps = _chain(chain, sch.response_images, opts.output, False, timer.steps)
                timer.steps.update(steps)
        timer.save()
        summary: Dict[str, Any] = {}

        def report() -> str:
            summary.update(degradation_report.summarize(configs, timer.steps))
            summary.update(
                schedule=opts.schedule,
                depths=list(opts.depths),
                parallel=opts.parallel,
                data_root=data_root,
                wall_seconds=round(time.perf_counter() - t_start, 1),
                loadavg_start=[round(x, 2) for x in load_start],
                loadavg_end=[round(x, 2) for x in os.getloadavg()],
            )
            summary.update(degradation_report.write_report(opts.output, summary))
            return "ran"

        timer.run("report", report)
        summary["steps"] = timer.steps
        with open(os.path.join(opts.output, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        return summary
