"""Keeping the best model and stopping when validation stops improving: two training hooks.

- :class:`BestCheckpointHook` writes ``model_best.pth`` (weights, config, class names and, in
  ``extra["best"]``, the metric, its value and the iteration) whenever an evaluation improves
  on the best value of ``SOLVER.BEST_METRIC`` so far (``SOLVER.BEST_MODE`` ``max`` or ``min``).
  It is saved atomically by the run's :class:`~resdet.engine.checkpoint.Checkpointer`, next
  to the periodic checkpoints, without moving ``last_checkpoint`` (resuming continues from the
  newest training state) and is never pruned.
- :class:`EarlyStopHook` ends training after ``SOLVER.EARLY_STOP_PATIENCE`` evaluations in a
  row without improvement: it sets ``state.stop_reason``, the loop stops before the next step
  and runs ``after_train`` as after the last iteration (a final checkpoint; the last
  evaluation's results stand as the final ones).

Metric names are the keys the evaluation returns, e.g. ``coco/AP50``, ``voc/mAP07``,
``loss`` (with ``TEST.VAL_LOSS``; ``min``) for detection and ``top1_err`` (``min``) for
classification. "Improvement" is strict; a NaN never improves. Both hooks keep their progress
in ``state.hook_state`` (saved in every checkpoint), so a resumed run remembers the best value
and the evaluations without improvement, and ``--resume`` after an early stop does not train
further. Place them after ``EvalHook`` and before ``CheckpointHook``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, List

from resdet.config.load import ConfigError
from resdet.config.schema import Config
from resdet.engine.checkpoint import Checkpointer
from resdet.engine.trainer import Hook, TrainState

logger = logging.getLogger(__name__)

__all__ = ["BestCheckpointHook", "EarlyStopHook", "MetricTracker", "build_selection_hooks"]

MODES = ("max", "min")


class MetricTracker:
    """The best value of one metric over a run's evaluations.

    Attributes:
        best: the best value so far (None before the first finite one).
        best_iter: the iteration it was measured at (-1: none).
        bad_evals: evaluations since the last improvement.
        last_iter: the iteration of the last evaluation seen (each is counted once).
    """

    def __init__(self, metric: str, mode: str = "max") -> None:
        if mode not in MODES:
            raise ConfigError(f"SOLVER.BEST_MODE must be 'max' or 'min', got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.best: float | None = None
        self.best_iter = -1
        self.bad_evals = 0
        self.last_iter = -1

    def update(self, value: float, iteration: int) -> bool:
        """Record one evaluation; returns whether it improved on the best value."""
        self.last_iter = iteration
        better = math.isfinite(value) and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        )
        if better:
            self.best, self.best_iter, self.bad_evals = float(value), iteration, 0
        else:
            self.bad_evals += 1
        return better

    def new_evaluation(self, state: TrainState) -> float | None:
        """The metric's value when ``state`` holds an evaluation not seen yet, else None.

        Raises:
            ConfigError: the metric is not among the evaluation's results (lists them).
        """
        if state.last_eval_iter != state.iteration or state.iteration == self.last_iter:
            return None
        if self.metric not in state.metrics:
            raise ConfigError(
                f"SOLVER.BEST_METRIC '{self.metric}' is not among the evaluation results "
                f"{sorted(state.metrics)}"
            )
        return float(state.metrics[self.metric])

    def state_dict(self) -> Dict[str, Any]:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "best": self.best,
            "best_iter": self.best_iter,
            "bad_evals": self.bad_evals,
            "last_iter": self.last_iter,
        }

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; a record of another metric or mode (the
        config changed before the resume) is ignored: tracking starts afresh."""
        if d.get("metric") != self.metric or d.get("mode") != self.mode:
            if d:
                logger.info("best-metric record of %s (%s) ignored", d.get("metric"), d.get("mode"))
            return
        self.best = d["best"]
        self.best_iter = int(d["best_iter"])
        self.bad_evals = int(d["bad_evals"])
        self.last_iter = int(d["last_iter"])


class BestCheckpointHook(Hook):
    """Save ``<name>.pth`` (default ``model_best``) at every evaluation that improves ``metric``.

    The file holds the model's weights, the config and ``extra`` plus ``extra["best"] =
    {"metric", "value", "mode", "iteration"}`` and ``extra["metrics"]`` (that evaluation's
    results); no optimizer state. Every rank calls the checkpointer (it gathers RNG states);
    rank 0 writes.
    """

    KEY = "best_checkpoint"

    def __init__(
        self,
        checkpointer: Checkpointer,
        metric: str,
        mode: str = "max",
        extra: Dict[str, Any] | None = None,
        name: str = "model_best",
    ) -> None:
        self.checkpointer = checkpointer
        self.tracker = MetricTracker(metric, mode)
        self.extra = dict(extra or {})
        self.name = name

    def before_train(self, state: TrainState) -> None:
        self.tracker.load_state_dict(state.hook_state.get(self.KEY, {}))

    def _check(self, state: TrainState) -> None:
        value = self.tracker.new_evaluation(state)
        if value is None:
            return
        improved = self.tracker.update(value, state.iteration)
        state.hook_state[self.KEY] = self.tracker.state_dict()
        if not improved:
            return
        t = self.tracker
        logger.info("new best %s = %.4f at iteration %d", t.metric, value, state.iteration)
        best = {"metric": t.metric, "value": value, "mode": t.mode, "iteration": state.iteration}
        self.checkpointer.save(
            self.name,
            state.model,
            iteration=state.iteration,
            extra={**self.extra, "metrics": dict(state.metrics), "best": best},
            update_last=False,
        )

    def after_step(self, state: TrainState) -> None:
        self._check(state)

    def after_train(self, state: TrainState) -> None:
        self._check(state)  # the final evaluation


class EarlyStopHook(Hook):
    """Stop training after ``patience`` evaluations in a row without improving ``metric``."""

    KEY = "early_stop"

    def __init__(self, metric: str, mode: str = "max", patience: int = 1) -> None:
        if patience < 1:
            raise ConfigError(f"SOLVER.EARLY_STOP_PATIENCE must be >= 1 here, got {patience}")
        self.tracker = MetricTracker(metric, mode)
        self.patience = patience

    def before_train(self, state: TrainState) -> None:
        saved = state.hook_state.get(self.KEY, {})
        self.tracker.load_state_dict(saved.get("tracker", {}))
        if saved.get("stopped"):  # resumed from the checkpoint of an early-stopped run
            state.stop_reason = saved["stopped"]

    def after_step(self, state: TrainState) -> None:
        value = self.tracker.new_evaluation(state)
        if value is None:
            return
        self.tracker.update(value, state.iteration)
        t = self.tracker
        record: Dict[str, Any] = {"tracker": t.state_dict()}
        if t.bad_evals >= self.patience:
            best = "nan" if t.best is None else f"{t.best:.4f}"
            state.stop_reason = (
                f"early stopping: {t.metric} has not improved on {best} (iteration "
                f"{t.best_iter}) for {t.bad_evals} evaluations "
                f"(SOLVER.EARLY_STOP_PATIENCE {self.patience})"
            )
            record["stopped"] = state.stop_reason
        state.hook_state[self.KEY] = record


def is_tta_metric(metric: str) -> bool:
    """``coco_tta/AP`` or ``<dataset>/coco_tta/AP``: a test-time-augmented result, which only
    the final evaluation has (``TEST.AUG``)."""
    parts = metric.split("/")
    return len(parts) >= 2 and parts[-2].endswith("_tta")


def build_selection_hooks(
    cfg: Config, checkpointer: Checkpointer, extra: Dict[str, Any], has_eval: bool
) -> List[Hook]:
    """The hooks ``SOLVER.BEST_METRIC`` / ``BEST_MODE`` / ``EARLY_STOP_PATIENCE`` ask for.

    Args:
        extra: stored in ``model_best.pth``'s ``extra`` (e.g. ``{"class_names": [...]}``).
        has_eval: whether the run evaluates (a test set is configured).

    Raises:
        ConfigError: early stopping without a metric, a metric without a validation set, a
            bad mode or a negative patience.
    """
    s = cfg.SOLVER
    if s.EARLY_STOP_PATIENCE < 0:
        raise ConfigError(f"SOLVER.EARLY_STOP_PATIENCE must be >= 0, got {s.EARLY_STOP_PATIENCE}")
    if s.BEST_MODE not in MODES:
        raise ConfigError(f"SOLVER.BEST_MODE must be 'max' or 'min', got {s.BEST_MODE!r}")
    if not s.BEST_METRIC:
        if s.EARLY_STOP_PATIENCE:
            raise ConfigError(
                "SOLVER.EARLY_STOP_PATIENCE needs SOLVER.BEST_METRIC (the metric to watch)"
            )
        return []
    if not has_eval:
        raise ConfigError(f"SOLVER.BEST_METRIC {s.BEST_METRIC} needs a validation set")
    if s.BEST_METRIC.split("/")[-1].startswith("loss") and not cfg.TEST.VAL_LOSS:
        raise ConfigError(f"SOLVER.BEST_METRIC {s.BEST_METRIC} needs TEST.VAL_LOSS True")
    if is_tta_metric(s.BEST_METRIC):
        raise ConfigError(
            f"SOLVER.BEST_METRIC {s.BEST_METRIC}: test-time augmentation (TEST.AUG) runs in the "
            "final evaluation only; watch the periodic evaluations' metric (without '_tta')"
        )
    last = s.BEST_METRIC.split("/")[-1]
    if s.BEST_MODE == "max" and (last.startswith("loss") or last.endswith("err")):
        logger.warning(
            "SOLVER.BEST_MODE max keeps the highest %s; errors and losses want BEST_MODE min",
            s.BEST_METRIC,
        )
    if cfg.TEST.EVAL_PERIOD <= 0:
        logger.warning(
            "SOLVER.BEST_METRIC with TEST.EVAL_PERIOD 0: only the final evaluation is compared"
        )
    hooks: List[Hook] = [BestCheckpointHook(checkpointer, s.BEST_METRIC, s.BEST_MODE, extra)]
    if s.EARLY_STOP_PATIENCE:
        hooks.append(EarlyStopHook(s.BEST_METRIC, s.BEST_MODE, s.EARLY_STOP_PATIENCE))
    return hooks
