"""A tiny random detector saved as a checkpoint, for the tests of what reads one (the
``Predictor``, ``tools/infer.py``). ``tests/`` is on ``sys.path`` during the test session, so
any test can ``from tiny_detector import save_tiny_detector``."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from resdet.config import Config, config_to_dict, load_config
from resdet.engine.checkpoint import save_checkpoint
from resdet.modeling.detection.build import build_detector


def save_tiny_detector(
    path: str, opts: List[str], extra: Optional[Dict[str, Any]] = None
) -> Config:
    """Build the detector ``opts`` (config overrides) describe, seeded, and save it to ``path``
    with its config (and ``extra``, e.g. class names); returns the config."""
    torch.manual_seed(0)
    cfg = load_config(None, opts)
    model = build_detector(cfg)
    # Spread the class scores (the default init makes all K+1 almost equal).
    torch.nn.init.normal_(model.roi_heads.predictor.cls_score.weight, std=0.1)
    state: Dict[str, Any] = {"model": model.state_dict(), "config": config_to_dict(cfg)}
    if extra is not None:
        state["extra"] = extra
    save_checkpoint(path, state)
    return cfg
