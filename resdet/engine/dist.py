"""Distributed helpers for ``torchrun``: every function is a cheap no-op in a single process.

``torchrun --nproc_per_node=8 tools/train_cls.py ...`` starts one process per GPU and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the process group (NCCL on CUDA, gloo on CPU).
Without those variables (``python tools/train_cls.py ...``) nothing is initialised and the
helpers below behave as for a world of one.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn

from resdet.config.load import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "all_gather_object",
    "all_reduce_dict",
    "barrier",
    "check_sync_bn",
    "destroy_distributed",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "synchronize",
]


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK`` from torchrun, else 0)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0: the only process that writes files (checkpoints, logs, metrics)."""
    return get_rank() == 0


def init_distributed(backend: str | None = None) -> Tuple[int, int, int]:
    """Join the process group described by torchrun's environment variables.

    Args:
        backend: "nccl" or "gloo"; default NCCL when CUDA is available, else gloo.

    Returns:
        ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` when not launched by torchrun
        (``WORLD_SIZE`` unset or 1), in which case no process group is created.

    On CUDA the current device is set to ``LOCAL_RANK`` before the group is created, so NCCL
    and every later ``.cuda()`` use this process's GPU.
    """
    if dist.is_available() and dist.is_initialized():
        return get_rank(), get_world_size(), get_local_rank()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch with torchrun "
            "(e.g. `torchrun --nproc_per_node=8 tools/train_cls.py ...`)"
        )
    rank = int(os.environ["RANK"])
    local_rank = get_local_rank()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    logger.info(
        "joined process group: rank %d/%d (local %d, %s)", rank, world_size, local_rank, backend
    )
    return rank, world_size, local_rank


def destroy_distributed() -> None:
    """Leave the process group (call once at the end of a torchrun script); no-op otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_sync_bn(model: nn.Module, device: torch.device, world_size: int) -> None:
    """Refuse SyncBN where torch cannot run it: several processes on CPU.

    ``nn.SyncBatchNorm`` only synchronises CUDA (and a few accelerator) tensors; on CPU with
    gloo its forward raises deep inside the first step. A single process is plain BN and fine.

    Raises:
        ConfigError: naming ``MODEL.BACKBONE.NORM`` and the alternatives.
    """
    uses_sync = any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    if uses_sync and world_size > 1 and device.type == "cpu":
        raise ConfigError(
            f"MODEL.BACKBONE.NORM SyncBN needs GPUs (torch's SyncBatchNorm does not run on CPU); "
            f"with {world_size} CPU processes use BN (per-process statistics) or FrozenBN"
        )


def _collective_device() -> torch.device:
    # NCCL only reduces CUDA tensors; gloo reduces CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def synchronize() -> None:
    """Finish queued CUDA work on this process, then :func:`barrier` (detectron2's name)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    barrier()


def all_reduce_dict(
    values: Mapping[str, Union[float, int, torch.Tensor]], average: bool = True
) -> Dict[str, float]:
    """Sum (or average) a dict of scalars over all ranks; every rank must call it.

    Args:
        values: name -> Python number or 0-dim tensor; every rank must pass the same keys.
        average: divide the sums by the world size.

    Returns:
        name -> float, identical on every rank.
    """
    keys = sorted(values)
    if not is_distributed():
        return {k: float(values[k]) for k in keys}
    device = _collective_device()
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if average:
        flat /= get_world_size()
    return dict(zip(keys, flat.tolist()))


def all_gather_object(obj: Any) -> List[Any]:
    """Gather any picklable object from every rank: ``[obj_rank0, obj_rank1, ...]``."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same_on_all_ranks(value: Any, what: str) -> None:
    """Raise on every rank when ranks disagree on ``value`` (e.g. the resumed iteration when
    one node cannot see ``OUTPUT_DIR``), instead of letting them train out of step."""
    values = all_gather_object(value)
    if any(v != values[0] for v in values):
        raise RuntimeError(
            f"ranks disagree on {what}: {values} (is OUTPUT_DIR on a filesystem every node sees?)"
        )
