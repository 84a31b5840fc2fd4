"""Optimizer (parameter groups) and per-iteration learning-rate schedules.

Schedules are per *iteration*, like the paper's ("divided by 10 at 32k and 48k iterations").
During iteration ``i`` (0-based) the learning rate is ``BASE_LR * factor(i)``; the training
loop calls ``scheduler.step()`` once after every optimizer step.

- ``multistep``: ``GAMMA ** (number of STEPS <= i)``.
- ``cosine``: half a cosine from 1 to 0 over ``max_iter``.
- ``linear``: a straight line from 1 to 0 over ``max_iter``.
- ``plateau``: the paper's ImageNet rule, "divided by 10 when the error plateaus" (Sec. 3.4):
  ``GAMMA`` once the validation metric has not improved for ``PLATEAU_PATIENCE`` evaluations
  (:class:`PlateauLR`, fed by :meth:`PlateauLR.report`).

Each is multiplied by a linear warm-up from ``WARMUP_FACTOR`` to 1 over ``WARMUP_ITERS``.
``WARMUP_UNTIL_TRAIN_ERR > 0`` adds the paper's ResNet-110 trick (Sec. 4.2: "we use 0.01 to warm
up the training until the training error is below 80%, and then go back to 0.1"):
:class:`WarmupUntilTrainError` wraps any of the above and is fed the training error.

Every scheduler here has ``step()``, ``get_last_lr()``, ``state_dict()`` and
``load_state_dict()``; ``report(metric)`` and ``report_train_error(err)`` exist where they
mean something (check with ``hasattr``). State dicts hold only numbers and lists, so they load
with ``torch.load(weights_only=True)``; the schedule's shape (steps, max_iter) comes from the
config, so a run resumed with a larger ``MAX_ITER`` follows the new config.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from collections import deque
from typing import Any, Callable, Dict, List

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from resdet.config.schema import Config, SolverConfig

logger = logging.getLogger(__name__)

__all__ = [
    "PlateauLR",
    "WarmupUntilTrainError",
    "build_lr_scheduler",
    "build_optimizer",
    "get_param_groups",
    "lr_factor_fn",
]

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def get_param_groups(
    model: nn.Module, weight_decay: float, weight_decay_norm: float, weight_decay_bias: float
) -> List[Dict[str, Any]]:
    """Split trainable parameters into weight-decay groups.

    Norm layers' parameters (BN gamma/beta, GroupNorm, LayerNorm) get ``weight_decay_norm``;
    other biases get ``weight_decay_bias``; everything else ``weight_decay``. Decaying BN's
    gamma/beta only shrinks the scale the next layer would undo, so they are usually exempt.
    Parameters with ``requires_grad=False`` (frozen stages) are skipped; a parameter shared by
    two modules is counted once. Empty groups are dropped.

    Returns:
        ``[{"name", "params", "weight_decay"}, ...]`` for ``torch.optim`` constructors.
    """
    groups: Dict[str, Dict[str, Any]] = {
        "decay": {"name": "decay", "params": [], "weight_decay": weight_decay},
        "norm": {"name": "norm", "params": [], "weight_decay": weight_decay_norm},
        "bias": {"name": "bias", "params": [], "weight_decay": weight_decay_bias},
    }
    seen = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORM_TYPES):
                groups["norm"]["params"].append(p)
            elif pname == "bias":
                groups["bias"]["params"].append(p)
            else:
                groups["decay"]["params"].append(p)
    return [g for g in groups.values() if g["params"]]


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over :func:`get_param_groups` of ``model``.

    Raises:
        ValueError: unknown ``SOLVER.OPTIMIZER``, or a model without trainable parameters.
    """
    s = cfg.SOLVER
    groups = get_param_groups(model, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM, s.WEIGHT_DECAY_BIAS)
    if not groups:
        raise ValueError("build_optimizer: the model has no parameters with requires_grad=True")
    name = s.OPTIMIZER.lower()
    # One fused kernel per step instead of a dozen elementwise passes over every parameter:
    # AdamW's step on the demo's detector (1.8 M parameters, 45 tensors) took 3-4 ms instead of
    # 18-22 on one AVX2 core, 6% of its training iteration. CPU and CUDA float tensors have it.
    fused = all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point()
        for g in groups
        for p in g["params"]
    )
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV, fused=fused
        )
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=s.BASE_LR, fused=fused)
    raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer '{s.OPTIMIZER}'; use 'SGD' or 'AdamW'")


def _warmup(warmup_iters: int, warmup_factor: float) -> Callable[[int], float]:
    def factor(it: int) -> float:
        if it >= warmup_iters:
            return 1.0
        alpha = it / warmup_iters
        return warmup_factor * (1.0 - alpha) + alpha

    return factor


def lr_factor_fn(solver: SolverConfig, max_iter: int) -> Callable[[int], float]:
    """``iteration -> lr / BASE_LR`` for "multistep", "cosine" and "linear" (warm-up included).

    Raises:
        ValueError: unknown schedule name or STEPS not increasing.
    """
    warm = _warmup(solver.WARMUP_ITERS, solver.WARMUP_FACTOR)
    kind = solver.LR_SCHEDULER.lower()
    if kind == "multistep":
        steps = list(solver.STEPS)
        if steps != sorted(steps):
            raise ValueError(f"SOLVER.STEPS must be increasing, got {steps}")
        if steps and steps[-1] > max_iter:
            logger.warning("SOLVER.STEPS %s: steps after MAX_ITER=%d never happen", steps, max_iter)
        gamma = solver.GAMMA
        return lambda it: warm(it) * gamma ** bisect_right(steps, it)
    if kind == "cosine":
        return lambda it: warm(it) * 0.5 * (1.0 + math.cos(math.pi * min(it, max_iter) / max_iter))
    if kind == "linear":
        return lambda it: warm(it) * (1.0 - min(it, max_iter) / max_iter)
    raise ValueError(
        f"SOLVER.LR_SCHEDULER: unknown schedule '{solver.LR_SCHEDULER}'; "
        "use 'multistep', 'cosine', 'linear' or 'plateau'"
    )


class PlateauLR:
    """``lr = base_lr * warmup(i) * factor ** drops``; a drop after ``patience`` bad evaluations.

    Call :meth:`step` after every iteration and :meth:`report` with each validation result.
    An evaluation is "bad" when the metric does not beat the best so far (``mode="min"`` for
    errors, ``"max"`` for AP); ``patience`` bad ones in a row divide the lr by ``1/factor``
    and reset the count.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        patience: int,
        factor: float = 0.1,
        mode: str = "min",
        warmup: Callable[[int], float] = lambda it: 1.0,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"PlateauLR: mode must be 'min' or 'max', got '{mode}'")
        if patience < 1:
            raise ValueError(f"SOLVER.PLATEAU_PATIENCE must be >= 1, got {patience}")
        self.optimizer = optimizer
        self.patience, self.factor, self.mode, self.warmup = patience, factor, mode, warmup
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_iter = 0
        self.num_drops = 0
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_evals = 0
        self._apply()

    def _apply(self) -> None:
        scale = self.warmup(self.last_iter) * self.factor**self.num_drops
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * scale

    def step(self) -> None:
        self.last_iter += 1
        self._apply()

    uses_metric = True  # LRFeedbackHook feeds it the validation metric

    def report(self, metric: float) -> None:
        """Feed one validation result; may divide the lr (effective from the next step)."""
        metric = float(metric)
        better = metric < self.best if self.mode == "min" else metric > self.best
        if better:
            self.best, self.bad_evals = metric, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            self.num_drops += 1
            self.bad_evals = 0
            self._apply()
            logger.info(
                "plateau: no improvement on %s for %d evaluations (best %.4f); lr -> %.3g",
                "validation metric",
                self.patience,
                self.best,
                self.optimizer.param_groups[0]["lr"],
            )

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        return {
            "last_iter": self.last_iter,
            "num_drops": self.num_drops,
            "best": self.best,
            "bad_evals": self.bad_evals,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.last_iter = int(state["last_iter"])
        self.num_drops = int(state["num_drops"])
        self.best = float(state["best"])
        self.bad_evals = int(state["bad_evals"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()


class WarmupUntilTrainError:
    """Scale another scheduler's lr by ``factor`` until the running training error < ``threshold``.

    The paper's ResNet-110 (Sec. 4.2): lr 0.01 instead of 0.1 until the training error falls
    below 80% (about 400 iterations), then the normal schedule. The running error is the mean of
    the last ``window`` values passed to :meth:`report_train_error`; once it is below the
    threshold the normal lr is restored at once and the wrapper stays out of the way for good.
    """

    def __init__(self, inner: Any, threshold: float, factor: float = 0.1, window: int = 20) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"SOLVER.WARMUP_UNTIL_TRAIN_ERR must be in (0, 1], got {threshold}")
        self.inner = inner
        self.optimizer = inner.optimizer
        self.threshold, self.factor, self.window = threshold, factor, window
        self.reached = False
        self.recent: deque = deque(maxlen=window)
        self._apply()

    def _apply(self) -> None:
        scale = 1.0 if self.reached else self.factor
        for g, lr in zip(self.optimizer.param_groups, self.inner.get_last_lr()):
            g["lr"] = lr * scale

    def step(self) -> None:
        self.inner.step()
        self._apply()

    def report_train_error(self, err: float) -> None:
        """Feed the training error of one iteration (a fraction in [0, 1])."""
        if self.reached:
            return
        self.recent.append(float(err))
        if len(self.recent) == self.window:
            running = sum(self.recent) / self.window
            if running < self.threshold:
                self.reached = True
                self._apply()
                logger.info(
                    "training error %.3f < %.3f: warm-up over, lr back to %.3g",
                    running,
                    self.threshold,
                    self.optimizer.param_groups[0]["lr"],
                )

    @property
    def uses_metric(self) -> bool:
        return bool(getattr(self.inner, "uses_metric", False))

    def report(self, metric: float) -> None:
        self.inner.report(metric)

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        return {
            "inner": self.inner.state_dict(),
            "reached": self.reached,
            "recent": list(self.recent),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.reached = bool(state["reached"])
        self.recent = deque((float(x) for x in state["recent"]), maxlen=self.window)
        self._apply()


def build_lr_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, max_iter: int) -> Any:
    """The per-iteration scheduler described by ``cfg.SOLVER`` (see the module docstring).

    Returns a ``LambdaLR`` ("multistep", "cosine", "linear") or :class:`PlateauLR`, wrapped in
    :class:`WarmupUntilTrainError` when ``SOLVER.WARMUP_UNTIL_TRAIN_ERR > 0``.
    """
    s = cfg.SOLVER
    if max_iter <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
    scheduler: Any
    if s.LR_SCHEDULER.lower() == "plateau":
        scheduler = PlateauLR(
            optimizer,
            patience=s.PLATEAU_PATIENCE,
            factor=s.GAMMA,
            mode=s.PLATEAU_MODE,
            warmup=_warmup(s.WARMUP_ITERS, s.WARMUP_FACTOR),
        )
    else:
        # A plain function (not a callable object), so LambdaLR.state_dict() stores no
        # schedule parameters: the config decides them on resume.
        scheduler = LambdaLR(optimizer, lr_factor_fn(s, max_iter))
    if s.WARMUP_UNTIL_TRAIN_ERR > 0:
        scheduler = WarmupUntilTrainError(
            scheduler, s.WARMUP_UNTIL_TRAIN_ERR, s.WARMUP_UNTIL_ERR_FACTOR
        )
    return scheduler
