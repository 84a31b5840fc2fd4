"""Named detection datasets: ``name → loader() → (records, meta)``.

Configs name datasets (``DATASETS.TRAIN: "voc_2007_trainval+voc_2012_trainval"``); this
registry turns a name into records. Loaders are called lazily, so registering the standard
names costs nothing and paths are resolved against :func:`datasets_root` at load time
(``RESDET_DATASETS`` may be set after import).

Standard names (layout in ``datasets/README.md``)::

    coco_2017_train  coco_2017_val  coco_2014_train  coco_2014_val  coco_2014_minival
    voc_2007_trainval  voc_2007_train  voc_2007_val  voc_2007_test
    voc_2012_trainval  voc_2012_train  voc_2012_val
    shapes_train  shapes_val  shapes_voc_train  shapes_voc_val   (generated, <root>/shapes)

A new dataset is one call: :func:`register_coco_instances` for COCO-format json, or
:func:`register_dataset` with any function returning ``(records, meta)``. Without Python, a
name may also be a source spec (:mod:`resdet.data.sources`), e.g.
``"yolo data=my/data.yaml split=val"``: anything that is not a registered name and looks like
``<format> key=value ...`` is loaded by the format's loader. Registered names take precedence.

Bad annotations: ``get_dataset(names, on_error=...)`` (``DATASETS.ON_ERROR`` in configs) is
handed to every loader that takes an ``on_error`` keyword: ``"raise"`` stops at the first bad
record, ``"skip"`` drops bad records and lists them in one warning. The standard COCO splits
always load with ``"skip"``: the official ``instances_train2017.json`` has two zero-height
boxes (cocodataset/cocoapi#355) that would otherwise make the stock dataset unusable.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from resdet.data.coco import load_coco_json
from resdet.data.records import DatasetError, DatasetMeta, DetectionRecord
from resdet.data.sources import (
    check_spec,
    load_spec,
    looks_like_spec,
    parse_spec,
    spec_class_names,
    split_union,
)
from resdet.data.voc import VOC_CLASSES, load_voc

logger = logging.getLogger(__name__)

# ``loader()`` or ``loader(on_error="raise" | "skip")`` -> (records, meta).
Loader = Callable[..., Tuple[List[DetectionRecord], DatasetMeta]]

_REGISTRY: Dict[str, Loader] = {}
# Standard names whose classes are known without reading their files (dataset_class_names).
_BUILTIN_CLASSES: Dict[str, Callable[[], List[str]]] = {}

_README_HINT = "see datasets/README.md for the expected layout; RESDET_DATASETS sets the root"


def datasets_root() -> str:
    """Root directory of the standard datasets: ``$RESDET_DATASETS``, default ``./datasets``."""
    return os.environ.get("RESDET_DATASETS", "datasets")


def register_dataset(name: str, loader_fn: Loader, overwrite: bool = False) -> None:
    """Register ``loader_fn() -> (records, meta)`` under ``name``.

    A loader that accepts an ``on_error`` keyword receives :func:`get_dataset`'s ``on_error``
    (``DATASETS.ON_ERROR``); one that does not is called without it.

    Raises:
        ValueError: ``name`` is empty, contains ``"+"`` (reserved for unions), or is already
            registered and ``overwrite`` is false.
    """
    if not name or "+" in name:
        raise ValueError(f"dataset name must be non-empty and must not contain '+': {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"dataset {name!r} is already registered (pass overwrite=True)")
    _REGISTRY[name] = loader_fn
    _BUILTIN_CLASSES.pop(name, None)


def register_coco_instances(
    name: str, json_file: str, image_root: str, on_error: str = "raise", overwrite: bool = False
) -> None:
    """Register a custom COCO-format dataset (json + image directory) under ``name``.

    ``on_error`` is the default; an explicit ``get_dataset(..., on_error=...)`` overrides it.
    """

    default_on_error = on_error

    def load(on_error: Optional[str] = None) -> Tuple[List[DetectionRecord], DatasetMeta]:
        policy = on_error or default_on_error
        return load_coco_json(json_file, image_root, name=name, on_error=policy)

    register_dataset(name, load, overwrite=overwrite)


def list_datasets() -> List[str]:
    """All registered names, sorted."""
    return sorted(_REGISTRY)


def _accepts_on_error(fn: Loader) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins / C callables: call them plainly
        return False
    return "on_error" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _unknown(name: str) -> DatasetError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return DatasetError(
        f"unknown dataset {name!r}{hint} (registered: {len(_REGISTRY)}, "
        "see resdet.data.catalog.list_datasets(); or name files directly, e.g. "
        "'yolo data=PATH/data.yaml split=val', see resdet.data.sources)"
    )


def _load_one(
    name: str, on_error: Optional[str] = None
) -> Tuple[List[DetectionRecord], DatasetMeta]:
    if name not in _REGISTRY:
        if looks_like_spec(name):
            return load_spec(parse_spec(name), on_error or "raise")
        raise _unknown(name)
    loader = _REGISTRY[name]
    if on_error is not None and _accepts_on_error(loader):
        records, meta = loader(on_error=on_error)
    else:
        records, meta = loader()
    if not meta.name:
        meta.name = name
    return records, meta


def check_dataset_entries(entries: Sequence[str], key: str) -> None:
    """Check config entries (``DATASETS.TRAIN``) before any data is loaded: every ``+`` part
    is a registered name or a source spec whose files and split exist.

    Raises:
        DatasetError: ``"<key>[i]: ..."`` naming the entry and the problem.
    """
    for i, entry in enumerate(entries):
        try:
            parts = split_union(entry)
            if not parts:
                raise DatasetError(f"empty dataset name {entry!r}")
            for part in parts:
                if part in _REGISTRY:
                    continue
                if not looks_like_spec(part):
                    raise _unknown(part)
                check_spec(parse_spec(part))
        except DatasetError as e:
            raise DatasetError(f"{key}[{i}]: {e}") from e


def display_name(entry: str) -> str:
    """A short name for an entry: a registered name itself, a spec's :attr:`name` (parts of
    a union joined by ``+``). Used for metric prefixes and result folders."""
    parts = split_union(entry)
    return "+".join(p if p in _REGISTRY or not looks_like_spec(p) else parse_spec(p).name
                    for p in parts)  # fmt: skip


def dataset_class_names(entry: str) -> Tuple[List[str], Optional[List[int]]]:
    """Class names (label order) and category ids (None: ``1..K``) of a config entry (its
    first ``+`` part), loading as little as possible: built-in VOC and shapes names and YOLO /
    VOC specs read no annotation, COCO specs only the json; other registered names are loaded.

    Raises:
        DatasetError: unknown name, bad spec, missing files.
    """
    parts = split_union(entry)
    if not parts:
        raise DatasetError(f"empty dataset name {entry!r}")
    first = parts[0]
    if first not in _REGISTRY:
        if looks_like_spec(first):
            return spec_class_names(parse_spec(first))
        raise _unknown(first)
    if first in _BUILTIN_CLASSES:
        return _BUILTIN_CLASSES[first](), None
    _, meta = _load_one(first)
    return list(meta.class_names), list(meta.category_ids or []) or None


def get_dataset(
    names: Union[str, List[str]], on_error: Optional[str] = None
) -> Tuple[List[DetectionRecord], DatasetMeta]:
    """Load one dataset, or the concatenation of several.

    Args:
        names: a registered name, a ``"+"``-joined union (``"voc_2007_trainval+voc_2012_trainval"``)
            or a list of names.
        on_error: ``"raise"`` or ``"skip"`` for bad annotations (``DATASETS.ON_ERROR``), passed
            to every loader that accepts it; None keeps each loader's own default.

    Returns:
        ``(records, meta)``. For a union the records are concatenated in order; the meta is the
        first dataset's with ``name`` set to the ``"+"``-joined names and ``json_file=None``
        (no single json describes a union). Image ids are the datasets' own and may repeat
        across the parts of a union.

    Raises:
        DatasetError: unknown name (the message lists the closest registered names), missing
            files, bad records (with ``on_error="raise"``), or a union whose parts disagree on
            class names, category ids or evaluator.
        ValueError: ``on_error`` is neither "raise" nor "skip".
    """
    if on_error is not None and on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    parts = [names] if isinstance(names, str) else list(names)
    parts = [p for item in parts for p in split_union(item)]
    if not parts:
        raise DatasetError(f"no dataset name given: {names!r}")
    loaded = [_load_one(p, on_error) for p in parts]
    if len(loaded) == 1:
        return loaded[0]
    first_name, (_, first_meta) = parts[0], loaded[0]
    records: List[DetectionRecord] = []
    for part, (recs, meta) in zip(parts, loaded):
        for attr in ("class_names", "category_ids", "evaluator"):
            if getattr(meta, attr) != getattr(first_meta, attr):
                raise DatasetError(
                    f"cannot join datasets {first_name!r} and {part!r}: {attr} differ "
                    f"({getattr(first_meta, attr)!r} vs {getattr(meta, attr)!r})"
                )
        records.extend(recs)
    meta = DatasetMeta(
        name="+".join(display_name(p) for p in parts),
        class_names=list(first_meta.class_names),
        category_ids=list(first_meta.category_ids or []),
        evaluator=first_meta.evaluator,
        json_file=None,
    )
    logger.info("dataset union %s: %d images", meta.name, len(records))
    return records, meta


def _require(path: str, name: str, what: str) -> None:
    if not os.path.exists(path):
        raise DatasetError(f"dataset {name!r}: {what} not found at {path} ({_README_HINT})")


def _standard_coco(name: str, json_rel: str, image_rel: str) -> Loader:
    # Takes no on_error: always "skip" (see the module docstring), every dropped item logged.
    def load() -> Tuple[List[DetectionRecord], DatasetMeta]:
        json_file = os.path.join(datasets_root(), "coco", "annotations", json_rel)
        image_root = os.path.join(datasets_root(), "coco", image_rel)
        _require(json_file, name, "annotation file")
        _require(image_root, name, "image directory")
        # The official train2017 json has two zero-height boxes (cocoapi#355): drop and log them
        # rather than refusing the standard dataset.
        return load_coco_json(json_file, image_root, name=name, on_error="skip")

    return load


def _standard_voc(name: str, year: str, split: str) -> Loader:
    def load(on_error: str = "raise") -> Tuple[List[DetectionRecord], DatasetMeta]:
        root = os.path.join(datasets_root(), "VOCdevkit", f"VOC{year}")
        _require(root, name, "VOC directory")
        _require(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), name, "split file")
        return load_voc(root, year, split, name=name, on_error=on_error)

    return load


def _register_standard() -> None:
    for split, json_rel, image_rel in (
        ("2017_train", "instances_train2017.json", "train2017"),
        ("2017_val", "instances_val2017.json", "val2017"),
        ("2014_train", "instances_train2014.json", "train2014"),
        ("2014_val", "instances_val2014.json", "val2014"),
        # Detectron's 5k minival of the 2014 val images (instances_minival2014.json).
        ("2014_minival", "instances_minival2014.json", "val2014"),
    ):
        name = f"coco_{split}"
        register_dataset(name, _standard_coco(name, json_rel, image_rel))
    for year, splits in (
        ("2007", ("trainval", "train", "val", "test")),
        ("2012", ("trainval", "train", "val")),
    ):
        for split in splits:
            name = f"voc_{year}_{split}"
            register_dataset(name, _standard_voc(name, year, split))
            _BUILTIN_CLASSES[name] = lambda: list(VOC_CLASSES)
    for split in ("train", "val"):
        register_dataset(f"shapes_{split}", _shapes(f"shapes_{split}", split, voc=False))
        register_dataset(f"shapes_voc_{split}", _shapes(f"shapes_voc_{split}", split, voc=True))
        for name in (f"shapes_{split}", f"shapes_voc_{split}"):
            _BUILTIN_CLASSES[name] = _shapes_classes


def _shapes_classes() -> List[str]:
    from resdet.data.shapes import SHAPES_CLASSES

    return list(SHAPES_CLASSES)


def _shapes(name: str, split: str, voc: bool) -> Loader:
    """The embedded synthetic dataset under ``<root>/shapes`` (``resdet.data.shapes``), as COCO
    json (COCO evaluator) or as VOC xml (VOC evaluator)."""

    def load(on_error: str = "raise") -> Tuple[List[DetectionRecord], DatasetMeta]:
        from resdet.data.shapes import SHAPES_CLASSES, shapes_paths

        root = os.path.join(datasets_root(), "shapes")
        paths = shapes_paths(root)
        if voc:
            split_file = os.path.join(paths["voc_root"], "ImageSets", "Main", f"{split}.txt")
            _require(split_file, name, "split file (generate it with resdet.data.shapes)")
            return load_voc(
                paths["voc_root"],
                "shapes",
                split,
                name=name,
                on_error=on_error,
                class_names=SHAPES_CLASSES,
            )
        json_file = paths[f"{split}_json"]
        _require(json_file, name, "annotation file (generate it with resdet.data.shapes)")
        return load_coco_json(json_file, paths[f"{split}_images"], name=name, on_error=on_error)

    return load


_register_standard()
