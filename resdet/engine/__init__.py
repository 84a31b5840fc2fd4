"""The training engine, shared by classification and detection.

- :func:`~resdet.engine.trainer.train_loop`: one readable loop; behaviour is added by hooks
  (:mod:`resdet.engine.hooks`).
- :mod:`resdet.engine.optim`: parameter groups, warm-up + multistep / cosine / linear / plateau
  schedules, the ResNet-110 warm-up-until-error wrapper.
- :mod:`resdet.engine.checkpoint`: atomic saves, exact resume;
  :mod:`resdet.engine.model_weights`: reading checkpoints, loading weights into a model.
- :mod:`resdet.engine.selection`: ``model_best.pth`` and early stopping (hooks);
  :mod:`resdet.engine.val_loss`: the detector's losses on the val set (``TEST.VAL_LOSS``).
- :mod:`resdet.engine.dist` (torchrun helpers) and :mod:`resdet.engine.amp` (autocast, scaler).
- :mod:`resdet.engine.runner`: the run skeleton of both tasks (``run_task``);
  :mod:`resdet.engine.classification` and :mod:`resdet.engine.detection`: the tasks' builders
  and ``run`` (``tools/train_cls.py``, ``tools/train_det.py``).
"""

from resdet.engine.amp import autocast_context, autocast_factory, build_grad_scaler
from resdet.engine.checkpoint import Checkpointer, save_checkpoint
from resdet.engine.hooks import (
    CheckpointHook,
    EvalHook,
    LRFeedbackHook,
    MetricsHook,
    MetricsWriter,
    ProgressHook,
)
from resdet.engine.model_weights import load_checkpoint, load_model_weights
from resdet.engine.optim import build_lr_scheduler, build_optimizer
from resdet.engine.trainer import Hook, TrainState, train_loop

__all__ = [
    "CheckpointHook",
    "Checkpointer",
    "EvalHook",
    "Hook",
    "LRFeedbackHook",
    "MetricsHook",
    "MetricsWriter",
    "ProgressHook",
    "TrainState",
    "autocast_context",
    "autocast_factory",
    "build_grad_scaler",
    "build_lr_scheduler",
    "build_optimizer",
    "load_checkpoint",
    "load_model_weights",
    "save_checkpoint",
    "train_loop",
]
