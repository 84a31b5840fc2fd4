"""Checkpoints: atomic saves, exact resume, and importing weights into (part of) a model.

A checkpoint is one ``torch.save``'d dict::

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "iteration": int,
     "rng": [per-rank {"python", "numpy", "torch", "cuda"}], "config": config_to_dict(cfg),
     "meta": {"resdet_version", "torch_version", "time"}, "extra": {...}}

``iteration`` is the number of completed iterations: resuming starts at that iteration.
Everything inside is tensors, numbers, strings, lists and dicts, so :func:`load_checkpoint`
uses ``torch.load(weights_only=True)`` and a downloaded checkpoint cannot run code.

Files are written (:func:`resdet.utils.output.atomic_write`) to a temporary name in the same
directory, fsync'ed and renamed over the final name (``os.replace`` is atomic on POSIX): a
crash mid-write leaves the previous checkpoint and the ``last_checkpoint`` pointer untouched,
never a truncated ``.pth``. A full disk or a read-only folder is an ``OutputError`` naming the
file, with the same guarantee. A file that cannot be loaded or does not fit the model is a
:class:`CheckpointError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pickle
import random
import re
import zipfile
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.module import _IncompatibleKeys

from resdet.config.load import ConfigError, config_to_dict
from resdet.config.schema import Config
from resdet.engine.dist import all_gather_object, get_rank, get_world_size, is_main_process
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


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint cannot be used: truncated, not a checkpoint, refused by ``weights_only``,
    or made for another architecture. The message names the file and the problem.

    (A ``RuntimeError`` and a ``ValueError``, the two classes these failures raised before.)
    """


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` atomically (temp file, fsync, ``os.replace``)."""
    atomic_write(path, lambda f: torch.save(dict(state), f))


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True`` (no code runs on load).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a loadable checkpoint (the message names the file and why).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; keep the line naming what the pickle asked for.
        lines = [line for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        what = lines[0].strip() if lines else str(e).splitlines()[0]
        raise CheckpointError(
            f"cannot load checkpoint {path}: refused by torch.load(weights_only=True), the file "
            f"asks to run code ({what}); nothing was run"
        ) from e
    except Exception as e:
        # torch.save writes a zip; a file cut short has lost the zip's central directory.
        kind = "corrupt" if zipfile.is_zipfile(path) else "truncated, or not a checkpoint"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"cannot load checkpoint {path}: not a complete torch.save file ({kind}; "
            f"{type(e).__name__}: {reason})"
        ) from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def require_checkpoint_file(path: str, key: str) -> None:
    """Fail fast (before any data is loaded) when a configured checkpoint path does not exist.

    Args:
        path: the configured path; "" means unset and passes.
        key: the option's name for the message, e.g. ``"MODEL.WEIGHTS"`` or ``"--weights"``.

    Raises:
        ConfigError: naming the option and the path.
    """
    if path and not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
        raise ConfigError(f"{key}: checkpoint file not found: {path}{where}")


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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (or ``model`` itself)."""
    return (
        model.module
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else model
    )


def _resdet_version() -> str:
    try:
        from importlib.metadata import version

        return version("resdet")
    except Exception:  # not installed (running from the source tree)
        return "unknown"


def _summarize_keys(keys: Sequence[str], max_lines: int = 8) -> str:
    """``fc.{bias, weight}``-style groups; past ``max_lines`` groups, counts per top module."""
    by_parent: Dict[str, List[str]] = defaultdict(list)
    for k in sorted(keys):
        parent, _, leaf = k.rpartition(".")
        by_parent[parent].append(leaf)
    if len(by_parent) <= max_lines:
        parts = []
        for parent, leaves in by_parent.items():
            body = leaves[0] if len(leaves) == 1 else "{" + ", ".join(leaves) + "}"
            parts.append(f"{parent}.{body}" if parent else body)
        return "; ".join(parts)
    counts: Dict[str, int] = defaultdict(int)
    for k in keys:
        counts[k.split(".", 1)[0]] += 1
    return "; ".join(f"{top}.* ({n} keys)" for top, n in sorted(counts.items()))


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_model_weights(
    model: nn.Module,
    state_dict_or_path: Union[str, Mapping[str, Any]],
    prefix: str = "",
    log: bool = True,
    strict: bool = False,
    source: str = "",
) -> _IncompatibleKeys:
    """Load weights into ``model`` (or into its submodule named ``prefix``).

    Args:
        model: the target; a DDP wrapper is unwrapped.
        state_dict_or_path: a ``.pth`` path, a full checkpoint dict (its ``"model"`` is used),
            or a state dict (numpy arrays are accepted, e.g. converted Caffe weights). A leading
            ``module.`` on every key (saved from DDP) is stripped.
        prefix: dotted name of the submodule to load into, e.g. ``"backbone"`` to load an
            ImageNet classifier checkpoint into a detector's trunk (its ``fc.*`` are reported
            as unexpected keys).
        log: log missing / unexpected keys, grouped by module.
        strict: raise when any key is missing or unexpected (exact resume).
        source: the file a given dict was loaded from, for messages (a path argument names
            itself).

    Returns:
        ``(missing_keys, unexpected_keys)`` relative to the target module.

    Raises:
        CheckpointError: a tensor's shape differs from the model's (names the key and both
            shapes), or ``strict`` and the keys differ, or the file cannot be loaded.
    """
    if isinstance(state_dict_or_path, str):
        source = state_dict_or_path
    source = source or "state dict"
    sd: Any = state_dict_or_path
    if isinstance(sd, str):
        sd = load_checkpoint(sd)
    if isinstance(sd.get("model"), Mapping):
        sd = sd["model"]
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{source}: expected a state dict, got {type(sd).__name__}")
    sd = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in sd.items()}
    sd = _strip_module_prefix(sd)
    not_tensors = [str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source}: not a state dict of tensors ({len(not_tensors)} entries are not tensors, "
            f"e.g. {not_tensors[:3]})"
        )
    target = unwrap_model(model)
    if prefix:
        target = target.get_submodule(prefix.rstrip("."))
    own = target.state_dict()
    if sd and not any(k in own for k in sd):
        where = f" (into '{prefix}')" if prefix else ""
        hint = (
            "a classification checkpoint (ResNet keys 'conv1.*', 'layer1.*', ...): a detector "
            "takes it as MODEL.BACKBONE.PRETRAINED"
            if "conv1.weight" in sd and any(k.endswith(".conv1.weight") for k in own)
            else "a checkpoint of another architecture? (weights from other projects: "
            "tools/convert_weights.py)"
        )
        raise CheckpointError(
            f"{source}{where}: none of its {len(sd)} tensors has a name the model uses "
            f"(e.g. '{next(iter(sd))}' vs the model's '{next(iter(own), '')}'): {hint}"
        )
    mismatched = [
        f"'{k}': checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    if mismatched:
        where = f" (into '{prefix}')" if prefix else ""
        more = f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""
        raise CheckpointError(
            f"{source}{where}: shape mismatch for {'; '.join(mismatched[:5])}{more}. "
            "Check MODEL.NUM_CLASSES / depth / architecture against the checkpoint's config."
        )
    result = target.load_state_dict(sd, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise CheckpointError(
            f"{source}: keys differ from the model; missing: "
            f"{_summarize_keys(result.missing_keys) or '-'}; unexpected: "
            f"{_summarize_keys(result.unexpected_keys) or '-'}"
        )
    if log:
        where = f" into '{prefix}'" if prefix else ""
        logger.info(
            "loaded %d tensors from %s%s", len(sd) - len(result.unexpected_keys), source, where
        )
        if result.missing_keys:
            logger.warning(
                "keys not in the checkpoint (left as initialised): %s",
                _summarize_keys(result.missing_keys),
            )
        if result.unexpected_keys:
            logger.warning(
                "checkpoint keys the model does not use: %s",
                _summarize_keys(result.unexpected_keys),
            )
    return result


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
