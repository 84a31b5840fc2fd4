"""What the machine is: CPU model and instruction-set flags, cores, torch version and threads.

The one place that reads ``/proc/cpuinfo``. Which fast path pays depends on the CPU (bf16
autocast is many times slower than float32 without AVX-512 BF16 or AMX; Winograd pays on
AVX2-only CPUs), and every timing or accuracy report names the machine it ran on. On systems
without ``/proc/cpuinfo`` (not Linux) the flags are unknown (``None``) and the model name is
``platform``'s answer.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Any, Dict, FrozenSet, Iterable, Optional

import torch

__all__ = [
    "REPORTED_FLAGS",
    "cpu_flags",
    "cpu_has_flag",
    "CPU_KINDS",
    "cpu_has_native_bf16",
    "cpu_kind",
    "cpu_model",
    "cpu_vendor",
    "machine_info",
    "usable_cores",
]

CPUINFO = "/proc/cpuinfo"
# The flags the reports list: what decides the fast paths (AVX2 / AVX-512 kernels, native bf16).
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@functools.cache
def _read_cpuinfo() -> Optional[str]:
    """The text of ``/proc/cpuinfo`` (read once per process), or None where it does not exist."""
    try:
        with open(CPUINFO, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _field(name: str) -> Optional[str]:
    """The value of the first ``name : value`` line of ``/proc/cpuinfo``, or None."""
    text = _read_cpuinfo()
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def cpu_model() -> str:
    """The CPU's model name (``model name`` of ``/proc/cpuinfo``; elsewhere ``platform``'s)."""
    return _field("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> Optional[FrozenSet[str]]:
    """The instruction-set flags of the first CPU (e.g. ``avx2``, ``avx512f``, ``amx_tile``).

    None when they cannot be read (no ``/proc/cpuinfo``): callers decide what unknown means.
    """
    flags = _field("flags")
    return None if flags is None else frozenset(flags.split())


def cpu_has_flag(flag: str) -> bool:
    """True when the CPU lists ``flag`` (a whole word of the flags line); False when unknown."""
    flags = cpu_flags()
    return flags is not None and flag in flags


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX).

    Without it (e.g. an AVX2-only CPU) oneDNN emulates bf16 and autocast is several times
    *slower* than float32 (measured 10-25x on an AVX2 EPYC), so resdet warns about it. Where the
    flags are unknown (not Linux) this assumes a modern CPU rather than warn wrongly.
    """
    if cpu_flags() is None:
        return True
    return cpu_has_flag("avx512_bf16") or cpu_has_flag("amx_bf16")


# The kinds of CPU the fast paths differ on (BENCHMARKS.md has one table per kind): the key
# names it in markers and file names, the value in text.
CPU_KINDS = {
    "amx": "AVX-512 + AMX",
    "avx512_bf16": "AVX-512-BF16 without AMX",
    "avx512": "AVX-512",
    "avx2": "AVX2 only",
    "other": "other",
}


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity where the system tells it (a container
    or ``taskset`` may allow fewer than the machine has), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_kind(flags: Optional[Iterable[str]] = None) -> str:
    """The key of :data:`CPU_KINDS` for ``flags`` (default: this CPU's): ``"amx"`` with AMX,
    ``"avx512_bf16"`` with AVX-512 BF16 but no AMX, ``"avx512"``, ``"avx2"``, else
    ``"other"``."""
    have = set(cpu_flags() or ()) if flags is None else set(flags)
    if have & {"amx_bf16", "amx_tile"}:
        return "amx"
    if "avx512_bf16" in have:
        return "avx512_bf16"
    if "avx512f" in have:
        return "avx512"
    return "avx2" if "avx2" in have else "other"


def cpu_vendor(name: Optional[str] = None) -> str:
    """``"amd"``, ``"intel"`` or ``""``: of this CPU (``vendor_id`` of ``/proc/cpuinfo``, else
    its model name), or of a CPU model ``name``.

    Flags alone do not tell machines apart that the fast paths treat differently: an AMD EPYC
    and an Intel Xeon both list ``avx512_bf16`` without AMX, and bf16 training measured 1.8x
    faster than fp32 on the first and 0.79x on the second.
    """
    if name is None:
        vendor = _field("vendor_id") or ""
        name = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(vendor, cpu_model())
    low = name.lower()
    return "amd" if "amd" in low else "intel" if "intel" in low else ""


def machine_info(threads: Optional[int] = None) -> Dict[str, Any]:
    """What timings and accuracies depend on, for a report.

    Keys: ``cpu`` (model name), ``vendor`` (:func:`cpu_vendor`), ``isa`` (those of
    :data:`REPORTED_FLAGS` the CPU has),
    ``cores`` (logical CPUs), ``threads`` (``threads``, default torch's intra-op threads),
    ``torch``, ``python``, ``cuda`` (a CUDA device is available) and ``loadavg`` (1, 5 and 15
    minute load averages now; empty where the system has none).
    """
    try:
        load = list(os.getloadavg())
    except OSError:  # not available on this system
        load = []
    return {
        "cpu": cpu_model(),
        "vendor": cpu_vendor(),
        "isa": [f for f in REPORTED_FLAGS if cpu_has_flag(f)],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads() if threads is None else threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
        "loadavg": load,
    }
