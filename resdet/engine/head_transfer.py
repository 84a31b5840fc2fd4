"""Starting a detector from one trained on other classes: the class-aware head transfer.

A Faster R-CNN's only class-specific tensors are its box predictor's: the classification
logits ``cls_score`` (``[K+1, D]``, background last) and the class-specific box deltas
``bbox_pred`` (``[4K, D]``). When ``MODEL.WEIGHTS`` names a detector of other classes, every
other tensor loads as it is, and these are rebuilt for the new classes:

- a new class whose name matches a source class (case, spaces, underscores and hyphens
  ignored, plus :data:`SYNONYMS`) gets that class's logit row and its 4 delta rows, so a COCO
  detector loaded for the 20 VOC classes detects them before any fine-tuning;
- the background row is copied;
- unmatched classes keep the fresh initialisation, and a warning names each rebuilt tensor and
  lists the unmatched classes.

Without class names on either side, a predictor of another class count is re-initialised
(with the same warning). The softmax then runs over the new classes only, so probabilities
renormalise; the copied logits and deltas are the source's exactly.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["SYNONYMS", "canonical_class_name", "match_classes", "transfer_box_predictor"]

# Same object, two datasets' names (normalised spellings): VOC's on the left, COCO's right.
SYNONYMS: Dict[str, str] = {
    "aeroplane": "airplane",
    "motorbike": "motorcycle",
    "sofa": "couch",
    "tvmonitor": "tv",
    # "diningtable" / "dining table" and "pottedplant" / "potted plant" match once spaces
    # are ignored.
}

CLS_W, CLS_B = "roi_heads.predictor.cls_score.weight", "roi_heads.predictor.cls_score.bias"
BOX_W, BOX_B = "roi_heads.predictor.bbox_pred.weight", "roi_heads.predictor.bbox_pred.bias"
CLASS_SPECIFIC = (CLS_W, CLS_B, BOX_W, BOX_B)


def canonical_class_name(name: str) -> str:
    """Lower case without spaces, underscores and hyphens, synonyms mapped to one spelling."""
    key = re.sub(r"[\s_\-]+", "", str(name).lower())
    return SYNONYMS.get(key, key)


def match_classes(source: Sequence[str], target: Sequence[str]) -> List[Optional[int]]:
    """For each target class, the index of the source class of the same name (or None)."""
    index: Dict[str, int] = {}
    for i, name in enumerate(source):
        index.setdefault(canonical_class_name(name), i)
    return [index.get(canonical_class_name(name)) for name in target]


def transfer_box_predictor(
    state_dict: Mapping[str, Any],
    model_state: Mapping[str, torch.Tensor],
    source_names: Optional[Sequence[str]],
    target_names: Optional[Sequence[str]],
    source: str = "MODEL.WEIGHTS",
) -> Dict[str, Any]:
    """``state_dict`` with its box predictor rebuilt for the model's classes (see module doc).

    Args:
        state_dict: the checkpoint's tensors (resdet names).
        model_state: the model's own ``state_dict()``: shapes, and the fresh initialisation
            that unmatched classes keep.
        source_names / target_names: the checkpoint's and the model's class names, if known.
        source: what to name in the warnings (the file).

    Returns:
        A new dict; unchanged when the classes are the same (same names, or same count with
        names unknown) or the checkpoint has no box predictor.
    """
    if CLS_W not in state_dict or CLS_W not in model_state:
        return dict(state_dict)
    k_src = int(state_dict[CLS_W].shape[0]) - 1
    k_tgt = int(model_state[CLS_W].shape[0]) - 1
    if source_names is not None and len(source_names) != k_src:
        logger.warning("%s: %d class names for a %d-class predictor: names ignored",
                       source, len(source_names), k_src)  # fmt: skip
        source_names = None
    known = source_names is not None and target_names is not None
    if known:
        canon_src = [canonical_class_name(n) for n in source_names]  # type: ignore[union-attr]
        if canon_src == [canonical_class_name(n) for n in target_names]:  # type: ignore[union-attr]
            return dict(state_dict)
    elif k_src == k_tgt:
        return dict(state_dict)

    out = dict(state_dict)
    new = {k: model_state[k].detach().clone() for k in CLASS_SPECIFIC}
    old = {k: torch.as_tensor(state_dict[k]) for k in CLASS_SPECIFIC}
    mapping = match_classes(source_names, target_names) if known else [None] * k_tgt
    for j, i in enumerate(mapping):
        if i is None:
            continue
        new[CLS_W][j], new[CLS_B][j] = old[CLS_W][i], old[CLS_B][i]
        new[BOX_W][4 * j : 4 * j + 4] = old[BOX_W][4 * i : 4 * i + 4]
        new[BOX_B][4 * j : 4 * j + 4] = old[BOX_B][4 * i : 4 * i + 4]
    copied = [j for j, i in enumerate(mapping) if i is not None]
    if known:  # background is the last row on both sides
        new[CLS_W][k_tgt], new[CLS_B][k_tgt] = old[CLS_W][k_src], old[CLS_B][k_src]
    out.update(new)

    for k in CLASS_SPECIFIC:
        logger.warning("%s: %s %s -> %s: class-specific, rebuilt for the %d new classes",
                       source, k, tuple(old[k].shape), tuple(new[k].shape), k_tgt)  # fmt: skip
    if not known:
        logger.warning("%s: no class names to match (checkpoint or dataset): all %d classes "
                       "start from a fresh initialisation", source, k_tgt)  # fmt: skip
        return out
    names_t, names_s = list(target_names or []), list(source_names or [])
    pairs = [f"{names_t[j]}<-{names_s[mapping[j]]}" for j in copied]  # type: ignore[index]
    missing = [names_t[j] for j, i in enumerate(mapping) if i is None]
    logger.warning("%s: %d of %d classes copied by name (%s) with the background row; "
                   "%d start fresh: %s", source, len(copied), k_tgt, ", ".join(pairs) or "-",
                   len(missing), ", ".join(missing) or "-")  # fmt: skip
    return out
