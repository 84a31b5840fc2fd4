"""Reading checkpoints and loading (part of) their weights into a model, with checks.

:func:`load_checkpoint` uses ``torch.load(weights_only=True)``, so a downloaded checkpoint
cannot run code. A file that cannot be loaded or does not fit the model is a
:class:`CheckpointError` naming the file and the reason; a configured path that does not exist
is a ``ConfigError`` naming the option (:func:`require_checkpoint_file`). Writing and resuming
training state is :mod:`resdet.engine.checkpoint`.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.module import _IncompatibleKeys

from resdet.config.load import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_model_weights",
    "require_checkpoint_file",
    "unwrap_model",
]


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint cannot be used: truncated, not a checkpoint, refused by ``weights_only``,
    or made for another architecture. The message names the file and the problem.

    (A ``RuntimeError`` and a ``ValueError``, the two classes these failures raised before.)
    """


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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (or ``model`` itself)."""
    return (
        model.module
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else model
    )


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
