"""A small name -> builder registry, used only where a YAML file names a choice."""

from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: Dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._builders[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._builders:
            close = difflib.get_close_matches(name, list(self._builders), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            known = ", ".join(sorted(self._builders))
            raise KeyError(f"unknown {self.kind} '{name}'{hint} (registered: {known})")
        return self._builders[name]

    def names(self):
        return sorted(self._builders)
