"""The configs shipped inside the package, and config names resolved against them.

The repository's ``configs/`` folder ships as package data (``resdet/configs`` is a link to it
in a checkout, real files in a wheel), so ``pip install .`` (not editable) followed by a tool
run from any folder still finds ``configs/coco_r50_fpn.yaml``. A config path that exists is
used as it is; one that does not is looked up by name in the package:

    coco_r50_fpn   coco_r50_fpn.yaml   configs/coco_r50_fpn.yaml   base/fpn.yaml

all name a packaged file. ``_BASE_`` chains inside the package resolve there too (a base is a
path relative to the file naming it), and a user config outside the package may name a
packaged base by name (``_BASE_: coco_r50_fpn.yaml``).
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
from typing import List, Optional

__all__ = [
    "close_packaged_names",
    "packaged_config",
    "packaged_config_dir",
    "packaged_config_names",
]

SUFFIXES = (".yaml", ".yml")
PREFIX = "configs/"


def packaged_config_dir() -> Optional[str]:
    """The folder of the packaged configs, or None when the package has none."""
    root = importlib.resources.files("resdet") / "configs"
    # A package imported from a zip has no folder on disk: no packaged configs then.
    path = os.fspath(root) if isinstance(root, os.PathLike) else None
    return path if path and os.path.isdir(path) else None


def packaged_config_names() -> List[str]:
    """Names of the packaged configs relative to their folder (``base/fpn.yaml`` ...), sorted."""
    root = packaged_config_dir()
    if root is None:
        return []
    names = []
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(SUFFIXES):
                names.append(os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/"))
    return sorted(names)


def packaged_config(name: str) -> Optional[str]:
    """Path of the packaged config ``name`` names, or None.

    ``name`` is relative to the configs folder, with or without a leading ``configs/`` and with
    or without ``.yaml``: ``coco_r50_fpn``, ``coco_r50_fpn.yaml``, ``configs/coco_r50_fpn.yaml``.
    """
    root = packaged_config_dir()
    rel = name.replace("\\", "/")
    while rel.startswith("./"):
        rel = rel[2:]
    if root is None or os.path.isabs(name) or not rel:
        return None
    rel = rel[len(PREFIX) :] if rel.startswith(PREFIX) else rel
    if ".." in rel.split("/"):
        return None  # only files inside the package
    candidates = [rel] if rel.endswith(SUFFIXES) else [rel + s for s in SUFFIXES]
    for c in candidates:
        path = os.path.join(root, *c.split("/"))
        if os.path.isfile(path):
            return path
    return None


def close_packaged_names(name: str, n: int = 3) -> List[str]:
    """Packaged config names closest to ``name`` (for a 'did you mean' hint)."""
    by_stem = {}
    for rel in packaged_config_names():  # compare file names without folder and suffix
        by_stem[os.path.splitext(os.path.basename(rel))[0]] = rel
    stem = os.path.splitext(os.path.basename(name))[0]
    return [by_stem[m] for m in difflib.get_close_matches(stem, list(by_stem), n=n)]
