"""Training hooks: progress bar, metrics log, checkpoints, evaluation, LR feedback.

:func:`build_hooks` gives a run's list, in the order they act: metrics, progress,
evaluation, LR feedback, best model / early stop (:mod:`resdet.engine.selection`), checkpoints
(evaluation before the checkpoint, so a checkpoint taken at an evaluation iteration already
holds the scheduler state that evaluation changed).

Files: ``metrics.jsonl`` holds one JSON object per line -- training lines
``{"iteration", "lr", "loss", "loss_*", "time", "data_time", "images_per_s", ...}`` averaged
over the last ``LOG_PERIOD`` iterations, and evaluation lines ``{"iteration", "val/<metric>"}``.
The same scalars go to TensorBoard (``train/<key>`` and ``val/<metric>``) in ``OUTPUT_DIR``.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import os
import sys
from collections import defaultdict
from typing import Any, Callable, Dict, List, Mapping

from resdet.config.load import ConfigError
from resdet.config.schema import Config
from resdet.engine.checkpoint import Checkpointer, atomic_write
from resdet.engine.dist import all_reduce_dict, is_main_process
from resdet.engine.selection import build_selection_hooks, is_tta_metric
from resdet.engine.trainer import Hook, TrainState

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointHook",
    "EvalHook",
    "LRFeedbackHook",
    "MetricsHook",
    "MetricsWriter",
    "ProgressHook",
]

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and TensorBoard; rank 0 only.

    Args:
        output_dir: where ``metrics.jsonl`` and the TensorBoard event files go.
        start_iter: records of later iterations (left by a run that went further before it
            was interrupted) are dropped from ``metrics.jsonl`` and purged from TensorBoard,
            so a resumed run's curves have no duplicates.
        enabled: default ``is_main_process()``.
    """

    def __init__(self, output_dir: str, start_iter: int = 0, enabled: bool | None = None):
        self.enabled = is_main_process() if enabled is None else enabled
        self.path = os.path.join(output_dir, METRICS_FILE)
        self.output_dir = output_dir
        self.start_iter = start_iter
        self._tb: Any = None
        if self.enabled:
            os.makedirs(output_dir, exist_ok=True)
            self._truncate_after(start_iter)

    def _truncate_after(self, start_iter: int) -> None:
        if not os.path.isfile(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("iteration", 0) <= start_iter:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        if len(kept) != len(lines):
            atomic_write(self.path, lambda f: f.write("".join(kept).encode()))

    def _tensorboard(self) -> Any:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional for the metrics file
                logger.warning("tensorboard is not installed; writing metrics.jsonl only")
                self._tb = False
                return None
            # Events after start_iter from an earlier run in this directory are discarded.
            self._tb = SummaryWriter(log_dir=self.output_dir, purge_step=self.start_iter + 1)
        return self._tb or None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` (must hold ``"iteration"``); numeric values also go to TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(record)) + "\n")
        tb = self._tensorboard()
        if tb is not None:
            step = int(record["iteration"])
            for k, v in record.items():
                if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                    tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
            tb.flush()

    def close(self) -> None:
        if self._tb:
            self._tb.close()
        self._tb = None


class MetricsHook(Hook):
    """Every ``period`` iterations (and at the last one): averaged scalars to the writer and log.

    Losses and task metrics are averaged over the window and over ranks (every rank takes
    part in the reduction), ``lr`` is the latest value, ``images_per_s`` uses the mean
    iteration time of the window.
    """

    def __init__(self, writer: MetricsWriter, period: int = 20) -> None:
        self.writer = writer
        self.period = max(1, period)
        self._window: Dict[str, List[float]] = defaultdict(list)

    def after_step(self, state: TrainState) -> None:
        for k, v in {**state.losses, **state.extra}.items():
            if k not in ("lr", "images_per_s"):
                self._window[k].append(v)
        it = state.iteration
        if it % self.period and it != state.max_iter:
            return
        self._flush(state)

    def after_train(self, state: TrainState) -> None:
        if self._window:  # training stopped early, between two logging iterations
            self._flush(state)

    def _flush(self, state: TrainState) -> None:
        it = state.iteration
        means = {k: sum(v) / len(v) for k, v in self._window.items() if v}
        self._window.clear()
        timing = {k: means.pop(k) for k in ("time", "data_time") if k in means}
        means = all_reduce_dict(means)
        record: Dict[str, Any] = {"iteration": it, "lr": state.extra.get("lr", float("nan"))}
        record.update(means)
        record.update(timing)
        if state.ims_per_batch and timing.get("time"):
            record["images_per_s"] = state.ims_per_batch / timing["time"]
        self.writer.write(record)
        eta = datetime.timedelta(seconds=int(timing.get("time", 0.0) * (state.max_iter - it)))
        shown = "  ".join(
            f"{k}: {v:.4g}"
            for k, v in record.items()
            if k not in ("iteration", "time", "data_time")
        )
        logger.info(
            "iter %d/%d  %s  time: %.3fs  eta: %s",
            it,
            state.max_iter,
            shown,
            timing.get("time", 0.0),
            eta,
        )

    def close(self) -> None:
        self.writer.close()


class ProgressHook(Hook):
    """A tqdm bar (loss, lr, images/s, ETA) on rank 0.

    ``enabled`` defaults to rank 0 with stderr a terminal: redirected to a file, a bar is
    thousands of carriage-return lines; MetricsHook's log lines carry the ETA there.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = is_main_process() and sys.stderr.isatty()
        self.enabled = enabled
        self._bar: Any = None

    def before_train(self, state: TrainState) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=state.max_iter,
            initial=state.start_iter,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def after_step(self, state: TrainState) -> None:
        if self._bar is None:
            return
        post = {
            "loss": f"{state.losses.get('loss', float('nan')):.4g}",
            "lr": f"{state.extra.get('lr', float('nan')):.3g}",
        }
        if "images_per_s" in state.extra:
            post["im/s"] = f"{state.extra['images_per_s']:.1f}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CheckpointHook(Hook):
    """Save ``model_XXXXXXX`` every ``period`` iterations and ``final_name`` after training.

    ``period <= 0`` saves only the final checkpoint. The checkpoint's ``extra`` holds the
    given ``extra`` (e.g. ``{"class_names": [...]}``), the latest eval ``metrics`` and
    ``state.hook_state`` (what other hooks need after a resume).
    """

    def __init__(
        self,
        checkpointer: Checkpointer,
        period: int,
        final_name: str = "model_final",
        extra: Dict[str, Any] | None = None,
    ) -> None:
        self.checkpointer = checkpointer
        self.period = period
        self.final_name = final_name
        self.extra = dict(extra or {})

    def _save(self, state: TrainState, name: str) -> None:
        self.checkpointer.save(
            name,
            state.model,
            state.optimizer,
            state.scheduler,
            state.scaler,
            iteration=state.iteration,
            extra={
                **self.extra,
                "metrics": dict(state.metrics),
                "hook_state": copy.deepcopy(state.hook_state),
            },
        )

    def after_step(self, state: TrainState) -> None:
        it = state.iteration
        if self.period > 0 and it % self.period == 0 and it < state.max_iter:
            self._save(state, f"model_{it:07d}")

    def after_train(self, state: TrainState) -> None:
        self._save(state, self.final_name)


class EvalHook(Hook):
    """Run ``eval_fn() -> {metric: float}`` every ``period`` iterations and after training.

    ``period <= 0`` evaluates only at the end; ``final_eval_fn`` (default ``eval_fn``) is the
    end-of-training evaluation (e.g. adding the 10-crop test). Results are logged, written as
    ``val/<metric>`` and kept in ``state.metrics``; the model is put back in train mode.
    """

    def __init__(
        self,
        period: int,
        eval_fn: Callable[[], Dict[str, float]],
        writer: MetricsWriter | None = None,
        final_eval_fn: Callable[[], Dict[str, float]] | None = None,
    ) -> None:
        self.period = period
        self.eval_fn = eval_fn
        self.final_eval_fn = final_eval_fn or eval_fn
        self.writer = writer

    def _run(self, state: TrainState, fn: Callable[[], Dict[str, float]]) -> None:
        results = {k: float(v) for k, v in fn().items()}
        state.model.train()
        state.metrics = results
        state.last_eval_iter = state.iteration
        logger.info(
            "evaluation at iteration %d: %s",
            state.iteration,
            ", ".join(f"{k}={v:.4f}" for k, v in results.items()),
        )
        if self.writer is not None:
            self.writer.write(
                {"iteration": state.iteration, **{f"val/{k}": v for k, v in results.items()}}
            )

    def after_step(self, state: TrainState) -> None:
        it = state.iteration
        if self.period > 0 and it % self.period == 0 and it < state.max_iter:
            self._run(state, self.eval_fn)

    def after_train(self, state: TrainState) -> None:
        # Training stopped early right after an evaluation: its results are the final ones.
        if self.final_eval_fn is self.eval_fn and state.last_eval_iter == state.iteration:
            return
        self._run(state, self.final_eval_fn)


class LRFeedbackHook(Hook):
    """Feed schedulers that listen: validation results to ``report`` (the plateau rule) and the
    training error to ``report_train_error`` (the ResNet-110 warm-up). Place after EvalHook.

    Args:
        scheduler: the LR scheduler; methods it lacks are simply not called.
        metric: key of the eval results watched by ``report`` (``SOLVER.PLATEAU_METRIC``).
        train_error_key: key in ``state.extra`` holding this iteration's training error; it is
            averaged over ranks so every rank switches the lr at the same iteration.
    """

    def __init__(
        self, scheduler: Any, metric: str = "top1_err", train_error_key: str = "train_err"
    ):
        self.scheduler = scheduler
        self.metric = metric
        self.train_error_key = train_error_key

    def after_step(self, state: TrainState) -> None:
        s = self.scheduler
        if hasattr(s, "report_train_error") and not getattr(s, "reached", False):
            if self.train_error_key in state.extra:
                err = all_reduce_dict({"e": state.extra[self.train_error_key]})["e"]
                s.report_train_error(err)
        if getattr(s, "uses_metric", False) and state.last_eval_iter == state.iteration:
            if self.metric not in state.metrics:
                raise KeyError(
                    f"SOLVER.PLATEAU_METRIC '{self.metric}' is not among the evaluation "
                    f"results {sorted(state.metrics)}"
                )
            s.report(state.metrics[self.metric])


def build_hooks(
    cfg: Config,
    writer: MetricsWriter,
    checkpointer: Checkpointer,
    scheduler: Any,
    evaluate: Callable[[], Dict[str, float]] | None,
    final_eval: Callable[[], Dict[str, float]] | None,
    extra: Dict[str, Any],
) -> List[Hook]:
    """The hooks of a training run (``LOG_PERIOD``, ``TEST.EVAL_PERIOD``, ``SOLVER.*``).

    Args:
        evaluate: the periodic evaluation; None: the run has no test set (no evaluation, and
            no best model or early stop).
        final_eval: the evaluation after training (default ``evaluate``).
        extra: stored in every checkpoint's ``"extra"`` (e.g. ``{"class_names": [...]}``).
    """
    hooks: List[Hook] = [MetricsHook(writer, cfg.LOG_PERIOD), ProgressHook()]
    if evaluate is not None:
        hooks.append(EvalHook(cfg.TEST.EVAL_PERIOD, evaluate, writer, final_eval))
    if cfg.SOLVER.LR_SCHEDULER == "plateau" and is_tta_metric(cfg.SOLVER.PLATEAU_METRIC):
        raise ConfigError(
            f"SOLVER.PLATEAU_METRIC {cfg.SOLVER.PLATEAU_METRIC}: test-time augmentation "
            "(TEST.AUG) runs in the final evaluation only; watch a periodic evaluation's metric"
        )
    hooks.append(LRFeedbackHook(scheduler, cfg.SOLVER.PLATEAU_METRIC))
    hooks += build_selection_hooks(cfg, checkpointer, extra, evaluate is not None)
    hooks.append(CheckpointHook(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, extra=extra))
    return hooks
