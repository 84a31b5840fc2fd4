"""Checking a COCO results file before pycocotools sees it.

pycocotools scores whatever it is given: a NaN box or score is ranked and matched as if it
were a number, a result whose ``category_id`` is not in the ground truth is silently ignored
(exactly what an off-by-one label mapping produces), and a ``bbox`` given as a string ends in
a traceback deep inside ``loadRes``. :func:`check_coco_results` validates every entry --
types, four finite numbers with non-negative width and height, a finite score, known image
and category ids -- and names ``results[i]`` and the problem.
"""

from __future__ import annotations

import logging
import math
from numbers import Real
from typing import Any, Collection, Dict, List, Sequence

from resdet.data.records import DatasetError

logger = logging.getLogger(__name__)

__all__ = ["ResultsError", "check_coco_results"]

_KEYS = ("image_id", "category_id", "bbox", "score")
_SHOWN = 5  # problems spelled out in one message; the rest are counted


class ResultsError(DatasetError):
    """A results file holds entries that cannot be scored; the message names them."""


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _is_id(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v) and float(v).is_integer()


def _entry_problem(r: Any, image_ids: Collection[int]) -> str:
    """Why one result cannot be scored ("" when it can); category ids are checked apart."""
    if not isinstance(r, dict):
        return f"must be an object, got {type(r).__name__} {r!r:.60}"
    missing = [k for k in _KEYS if k not in r]
    if missing:
        return f"is missing {missing}"
    if not _is_id(r["image_id"]):
        return f"image_id must be an integer, got {r['image_id']!r:.60}"
    if int(r["image_id"]) not in image_ids:
        return f"image_id {r['image_id']} is not in the ground truth"
    if not _is_id(r["category_id"]):
        return f"category_id must be an integer, got {r['category_id']!r:.60}"
    box = r["bbox"]
    if not isinstance(box, (list, tuple)):
        return f"bbox must be a list [x, y, w, h], got {type(box).__name__} {box!r:.60}"
    if len(box) != 4:
        return f"bbox must have 4 numbers [x, y, w, h], got {len(box)}: {box!r:.80}"
    if not all(_is_number(v) for v in box):
        return f"bbox values must be numbers, got {box!r:.80}"
    if not all(math.isfinite(v) for v in box):
        return f"bbox has non-finite values {box!r:.80}"
    if box[2] < 0 or box[3] < 0:
        return f"bbox width and height must be >= 0, got {box!r:.80}"
    score = r["score"]
    if not _is_number(score):
        return f"score must be a number, got {score!r:.60}"
    if not math.isfinite(score):
        return f"score is not finite: {score!r}"
    return ""


def check_coco_results(
    results: Any,
    source: str,
    image_ids: Collection[int],
    category_ids: Collection[int],
    allow_unknown_categories: bool = False,
) -> List[Dict[str, Any]]:
    """Validate a parsed COCO results list against the ground truth's ids.

    Args:
        results: the parsed json (must be a list of ``{"image_id", "category_id",
            "bbox": [x, y, w, h], "score"}``).
        source: the file name, for messages.
        image_ids, category_ids: the ground truth's ids.
        allow_unknown_categories: results whose ``category_id`` is not a ground-truth
            category are dropped with one warning giving their count, instead of an error.

    Returns:
        the results to score (all of them, or those with known category ids).

    Raises:
        ResultsError: naming ``results[i]`` and the problem of the first few bad entries and
            how many there are in all.
    """
    if not isinstance(results, list):
        raise ResultsError(
            f"{source}: COCO results must be a JSON list of detections, got "
            f"{type(results).__name__}"
        )
    image_ids, category_ids = set(image_ids), set(category_ids)
    problems = []
    for i, r in enumerate(results):
        problem = _entry_problem(r, image_ids)
        if problem:
            problems.append(f"results[{i}] {problem}")
    if problems:
        _raise(source, problems, "bad entry" if len(problems) == 1 else "bad entries")
    unknown = [i for i, r in enumerate(results) if int(r["category_id"]) not in category_ids]
    if not unknown:
        return list(results)
    span = _short(sorted(category_ids))
    ids = sorted({int(results[i]["category_id"]) for i in unknown})
    if allow_unknown_categories:
        logger.warning(
            "%s: %d of %d results have category ids absent from the ground truth (%s; the "
            "ground truth's are %s); they are left out of the score",
            source, len(unknown), len(results), _short(ids), span,
        )  # fmt: skip
        dropped = set(unknown)
        return [r for i, r in enumerate(results) if i not in dropped]
    lines = [
        f"results[{i}] category_id {results[i]['category_id']} is not a ground-truth category"
        for i in unknown
    ]
    _raise(
        source,
        lines,
        f"results with unknown category ids {_short(ids)} (the ground truth's are {span}: an "
        "off-by-one label mapping?; --allow-unknown-categories drops them with a warning)",
    )
    return []  # unreachable


def _short(values: Sequence[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOWN])
    return f"[{shown}{', ...' if len(values) > _SHOWN else ''}]"


def _raise(source: str, problems: List[str], what: str) -> None:
    more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    raise ResultsError(f"{source}: {len(problems)} {what}: " + "; ".join(problems[:_SHOWN]) + more)
