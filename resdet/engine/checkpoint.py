"""Checkpoints of training state: atomic saves, the ones kept, exact resume.

A checkpoint is one ``torch.save``'d dict::

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "iteration": int,
     "rng": [per-rank {"python", "numpy", "torch", "cuda"}], "config": config_to_dict(cfg),
     "meta": {"resdet_version", "torch_version", "time"}, "extra": {...}}

``iteration`` is the number of completed iterations: resuming starts at that iteration.
Everything inside is tensors, numbers, strings, lists and dicts, so :func:`load_checkpoint`
uses ``torch.load(weights_only=True)`` and a downloaded checkpoint cannot run code (reading a
checkpoint and loading its weights into a model, with their checks, is
:mod:`resdet.engine.model_weights`; its names are importable from here too).

Files are written (:func:`resdet.utils.output.atomic_write`) to a temporary name in the same
directory, fsync'ed and renamed over the final name (``os.replace`` is atomic on POSIX): a
crash mid-write leaves the previous checkpoint and the ``last_checkpoint`` pointer untouched,
never a truncated ``.pth``. A full disk or a read-only folder is an ``OutputError`` naming the
file, with the same guarantee.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import random
import re
from typing import Any, Dict, Mapping

import numpy as np
import torch
import torch.nn as nn

from resdet.config.load import config_to_dict
from resdet.config.schema import Config
from resdet.engine.dist import all_gather_object, get_rank, get_world_size, is_main_process
from resdet.engine.model_weights import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    require_checkpoint_file,
    unwrap_model,
)
from resdet.utils.output import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "atomic_write",
    "get_rng_state",
    "load_checkpoint",
    "load_model_weights",
    "require_checkpoint_file",
    "save_checkpoint",
    "set_rng_state",
    "unwrap_model",
]

LAST_CHECKPOINT = "last_checkpoint"
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")
# Temp files of atomic_write ("." + final name + random part + ".tmp"), left by a killed run.
_STALE_TMP = re.compile(r"^\..+\.tmp$")


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` atomically (temp file, fsync, ``os.replace``)."""
    atomic_write(path, lambda f: torch.save(dict(state), f))


def get_rng_state() -> Dict[str, Any]:
    """This process's RNG states as plain lists and tensors (``weights_only``-loadable)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [int(version), [int(x) for x in internal], gauss],
        "numpy": [str(name), keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                "checkpoint has CUDA RNG states for %d devices, this machine has %d; "
                "CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


def _resdet_version() -> str:
    try:
        from importlib.metadata import version

        return version("resdet")
    except Exception:  # not installed (running from the source tree)
        return "unknown"


class Checkpointer:
    """Saves and resumes training state in ``output_dir``, keeping the last ``max_to_keep``.

    Periodic checkpoints are ``model_XXXXXXX.pth`` (completed iterations, 7 digits); the text
    file ``last_checkpoint`` names the newest checkpoint of any name (``model_final.pth``
    included). Every rank must call :meth:`save` (RNG states are gathered from all ranks);
    only rank 0 writes.
    """

    def __init__(self, output_dir: str, max_to_keep: int = 3, config: Config | None = None) -> None:
        self.output_dir = output_dir
        self.max_to_keep = max_to_keep
        self.config = config

    def save(
        self,
        name: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: torch.amp.GradScaler | None = None,
        iteration: int = 0,
        extra: Dict[str, Any] | None = None,
        update_last: bool = True,
    ) -> str | None:
        """Write ``<output_dir>/<name>.pth`` and (``update_last``) point ``last_checkpoint`` at
        it; a side file such as ``model_best.pth`` passes ``update_last=False``, so resuming
        still starts from the newest training state.

        Returns the path on rank 0, None on other ranks.
        """
        rng = all_gather_object(get_rng_state())
        if not is_main_process():
            return None
        state = {
            "model": unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "scaler": scaler.state_dict() if scaler is not None else {},
            "iteration": int(iteration),
            "rng": rng,
            "config": config_to_dict(self.config) if self.config is not None else {},
            "meta": {
                "resdet_version": _resdet_version(),
                "torch_version": str(torch.__version__),
                "time": datetime.datetime.now().isoformat(timespec="seconds"),
            },
            "extra": dict(extra or {}),
        }
        filename = f"{name}.pth"
        path = os.path.join(self.output_dir, filename)
        save_checkpoint(path, state)
        if update_last:
            atomic_write(
                os.path.join(self.output_dir, LAST_CHECKPOINT),
                lambda f: f.write(filename.encode()),
            )
        self._prune()
        logger.info("saved checkpoint %s (iteration %d)", path, iteration)
        return path

    def _prune(self) -> None:
        # A run killed while writing leaves its temp file behind (the checkpoint it was
        # replacing is intact); rank 0 is the only writer, so none is in progress now.
        for f in os.listdir(self.output_dir):
            if _STALE_TMP.match(f):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.output_dir, f))
        if self.max_to_keep <= 0:
            return
        periodic = sorted(
            (int(m.group(1)), f) for f in os.listdir(self.output_dir) if (m := _PERIODIC.match(f))
        )
        last = self.last_checkpoint()
        for _, f in periodic[: -self.max_to_keep]:
            path = os.path.join(self.output_dir, f)
            if last is not None and os.path.abspath(path) == os.path.abspath(last):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def last_checkpoint(self) -> str | None:
        """Path named by ``last_checkpoint``, or None when there is none (or it is gone)."""
        pointer = os.path.join(self.output_dir, LAST_CHECKPOINT)
        if not os.path.isfile(pointer):
            return None
        with open(pointer, encoding="utf-8") as f:
            name = f.read().strip()
        path = os.path.join(self.output_dir, name)
        if not os.path.isfile(path):
            logger.warning("%s names %s, which does not exist", pointer, path)
            return None
        return path

    def resume(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: torch.amp.GradScaler | None = None,
        path: str | None = None,
    ) -> Dict[str, Any]:
        """Restore model, optimizer, scheduler, scaler and RNG from ``path`` (default: last).

        Returns the loaded checkpoint dict (``ckpt["iteration"]`` is where to start).

        Raises:
            FileNotFoundError: no checkpoint to resume from.
            CheckpointError: the file cannot be loaded, or the model's keys or shapes differ
                from the checkpoint's.
        """
        path = path or self.last_checkpoint()
        if path is None:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.output_dir}")
        ckpt = load_checkpoint(path)
        load_model_weights(model, ckpt["model"], log=False, strict=True, source=path)
        if optimizer is not None and ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt.get("rng") or []
        if rng:
            rank, world = get_rank(), get_world_size()
            if len(rng) != world:
                logger.warning(
                    "checkpoint has RNG states of %d ranks, running %d; rank %d takes rank 0's",
                    len(rng),
                    world,
                    rank,
                )
            set_rng_state(rng[rank] if len(rng) == world else rng[0])
        logger.info("resumed from %s at iteration %d", path, ckpt.get("iteration", 0))
        return ckpt
