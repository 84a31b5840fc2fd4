"""The training loop: one readable function shared by classification and detection.

The task supplies ``compute_losses(model, batch) -> {"loss_*": scalar Tensor, ...}``; the loop
sums every key starting with ``loss``, back-propagates (through the AMP gradient scaler),
optionally clips the gradient norm, steps the optimizer and the per-iteration LR scheduler,
then calls the hooks. Other keys of the returned dict (e.g. ``"train_err"``) are logged metrics:
they are converted to floats and handed to the hooks in ``state.extra`` but not optimised.

Everything else -- logging, checkpoints, evaluation, LR feedback -- is a hook
(:mod:`resdet.engine.hooks`), so the loop stays free of task specifics.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Sequence

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

__all__ = ["Hook", "TrainState", "train_loop"]

LossFn = Callable[[nn.Module, Any], Dict[str, torch.Tensor]]


@dataclass
class TrainState:
    """What the hooks see. ``iteration`` counts *completed* iterations (1 after the first step).

    Attributes:
        losses: this iteration's loss terms and their sum ``"loss"``, as floats.
        extra: this iteration's other values: ``lr`` (used by this step), ``time`` and
            ``data_time`` (seconds), ``images_per_s`` (when ``ims_per_batch`` is known) and the
            non-loss keys returned by ``compute_losses``.
        metrics: the latest evaluation results (written by ``EvalHook``).
        last_eval_iter: the iteration of the latest evaluation (-1: none yet).
        hook_state: what hooks carry across a resume (e.g. the best metric so far); saved in
            every checkpoint's ``extra["hook_state"]`` by ``CheckpointHook`` and handed back
            to :func:`train_loop` when resuming.
        stop_reason: set by a hook to end training early (e.g. early stopping); the loop
            stops before the next step, logs the reason and runs ``after_train`` as usual.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    start_iter: int
    max_iter: int
    ims_per_batch: int = 0
    iteration: int = 0
    losses: Dict[str, float] = field(default_factory=dict)
    extra: Dict[str, float] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    last_eval_iter: int = -1
    hook_state: Dict[str, Any] = field(default_factory=dict)
    stop_reason: str = ""


class Hook:
    """Base class of training hooks; override what you need.

    ``before_train`` runs once before the first step, ``after_step`` after every step,
    ``after_train`` once after the last step (not when training fails), and ``close`` always
    (to release files, progress bars, writers). Every rank calls every hook; a hook that
    writes files does so on rank 0 only.
    """

    def before_train(self, state: TrainState) -> None:
        pass

    def after_step(self, state: TrainState) -> None:
        pass

    def after_train(self, state: TrainState) -> None:
        pass

    def close(self) -> None:
        pass


def _format_terms(losses: Dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={float(v.detach()):.6g}" for k, v in losses.items())


def train_loop(
    model: nn.Module,
    compute_losses: LossFn,
    data_iter: Iterator[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    start_iter: int,
    max_iter: int,
    hooks: Sequence[Hook] = (),
    amp_ctx_factory: Callable[[], ContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float = 0.0,
    ims_per_batch: int = 0,
    hook_state: Dict[str, Any] | None = None,
) -> TrainState:
    """Train ``model`` from iteration ``start_iter`` to ``max_iter``.

    Args:
        model: in train mode during the steps (hooks that evaluate must switch back).
        compute_losses: ``(model, batch) -> {"loss_*": scalar Tensor, other: scalar}``.
        data_iter: yields one batch per iteration (an infinite iterator).
        optimizer, scheduler: ``scheduler.step()`` is called after every optimizer step.
        start_iter: completed iterations so far (0, or the resumed checkpoint's iteration).
        max_iter: stop after this many completed iterations.
        hooks: called in order; see :class:`Hook`.
        amp_ctx_factory: returns the autocast context for the forward pass.
        scaler: AMP gradient scaler; None or a disabled one for fp32/bf16.
        clip_grad_norm: clip the total gradient norm to this value; 0 disables.
        ims_per_batch: global images per iteration, for the images/s figure (0: not reported).
        hook_state: the resumed checkpoint's ``extra["hook_state"]`` (see :class:`TrainState`).

    Returns:
        the final :class:`TrainState`.

    Raises:
        FloatingPointError: the total loss is NaN or infinite; raised before the optimizer
            step, so the weights and every saved checkpoint hold the last good state.
    """
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        start_iter=start_iter,
        max_iter=max_iter,
        ims_per_batch=ims_per_batch,
        iteration=start_iter,
        hook_state=dict(hook_state or {}),
    )
    params: List[torch.Tensor] = [p for g in optimizer.param_groups for p in g["params"]]
    logger.info("training from iteration %d to %d", start_iter, max_iter)
    try:
        model.train()
        for h in hooks:
            h.before_train(state)
        for it in range(start_iter, max_iter):
            if state.stop_reason:  # a hook ended training (checked before_train too)
                logger.info("training stopped at iteration %d: %s", it, state.stop_reason)
                break
            t0 = time.perf_counter()
            batch = next(data_iter)
            data_time = time.perf_counter() - t0

            with amp_ctx_factory():
                outputs = compute_losses(model, batch)
            losses = {k: v for k, v in outputs.items() if k.startswith("loss")}
            if not losses:
                raise ValueError(f"compute_losses returned no 'loss*' keys: {sorted(outputs)}")
            total = sum(losses.values())

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            # Checked after queuing backward (one sync either way) and before the step.
            if not torch.isfinite(total.detach()).item():
                raise FloatingPointError(
                    f"iteration {it + 1}: total loss is {float(total.detach())} "
                    f"({_format_terms(losses)}); the weights are those after iteration {it}. "
                    "Lower SOLVER.BASE_LR, add warm-up or set SOLVER.CLIP_GRADIENTS."
                )
            if clip_grad_norm > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            step_time = time.perf_counter() - t0
            state.iteration = it + 1
            state.losses = {k: float(v.detach()) for k, v in losses.items()}
            state.losses["loss"] = float(total.detach())
            state.extra = {
                k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                for k, v in outputs.items()
                if not k.startswith("loss")
            }
            state.extra.update(lr=lr, time=step_time, data_time=data_time)
            if ims_per_batch:
                state.extra["images_per_s"] = ims_per_batch / max(step_time, 1e-9)
            for h in hooks:
                h.after_step(state)
        for h in hooks:
            h.after_train(state)
    finally:
        for h in hooks:
            h.close()
    return state
