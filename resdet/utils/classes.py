"""Subclasses made at run time, for swapping a module's class in place (same parameters, keys
and optimizer; only its methods change)."""

from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["with_mixin"]

_CLASSES: Dict[Tuple[type, type], type] = {}


def with_mixin(mixin: type, cls: type, prefix: str) -> type:
    """``cls`` with ``mixin`` in front, named ``prefix + cls.__name__``: one class per pair,
    cached; ``cls`` itself when it already has the mixin."""
    if issubclass(cls, mixin):
        return cls
    if (mixin, cls) not in _CLASSES:
        _CLASSES[(mixin, cls)] = type(f"{prefix}{cls.__name__}", (mixin, cls), {})
    return _CLASSES[(mixin, cls)]
