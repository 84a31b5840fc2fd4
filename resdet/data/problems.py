"""Bad items of a dataset, raised or skipped and counted, and collected for the checker.

Every loader (COCO json, VOC xml, YOLO labels, box bounds) reports a bad record through a
:class:`ProblemLog`: ``DATASETS.ON_ERROR raise`` stops at the first with the file, the record
and the problem; ``skip`` drops it, lists every skipped item in one warning and hands it to
the :func:`collect_problems` blocks open at the time (``tools/check_dataset.py`` uses one to
report every problem of a dataset).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, List, Tuple

from resdet.data.records import DatasetError

logger = logging.getLogger(__name__)

__all__ = ["ProblemLog", "collect_problems", "note_problem"]

_ON_ERROR = ("raise", "skip")

# Lists opened by collect_problems(); every item skipped in "skip" mode is appended to each.
_COLLECTORS: List[List[Tuple[str, str]]] = []


@contextlib.contextmanager
def collect_problems() -> Iterator[List[Tuple[str, str]]]:
    """Collect ``(source file, "where: problem")`` for every item a loader skips in "skip" mode.

    Used by ``resdet.data.check`` to report every annotation problem of a dataset (the loaders
    themselves only log them)::

        with collect_problems() as found:
            load_coco_json(json_file, image_root, on_error="skip")
    """
    found: List[Tuple[str, str]] = []
    _COLLECTORS.append(found)
    try:
        yield found
    finally:
        _COLLECTORS.remove(found)


def note_problem(source: str, message: str) -> None:
    """Hand a skipped item to the active :func:`collect_problems` blocks (if any)."""
    for found in _COLLECTORS:
        found.append((source, message))


class ProblemLog:
    """Collects bad items of one source file (shared by the COCO and VOC loaders).

    ``report`` raises :class:`DatasetError` at once in "raise" mode and remembers the problem in
    "skip" mode; ``log`` then lists every skipped item in one warning.
    """

    def __init__(self, source: str, on_error: str) -> None:
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
        self.source = source
        self.on_error = on_error
        self.skipped: List[str] = []

    def report(self, where: str, problem: str) -> None:
        message = f"{self.source}: {where}: {problem}"
        if self.on_error == "raise":
            raise DatasetError(message)
        self.skipped.append(f"{where}: {problem}")
        note_problem(self.source, f"{where}: {problem}")

    def log(self, what: str) -> None:
        if self.skipped:
            logger.warning(
                "%s: skipped %d bad %s (on_error='skip'):\n  %s",
                self.source,
                len(self.skipped),
                what,
                "\n  ".join(self.skipped),
            )
