"""Datasets named in a config without Python: one-line "source specs".

An entry of ``DATASETS.TRAIN`` / ``DATASETS.TEST`` is a registered name
(:mod:`resdet.data.catalog`) or a spec: a format word followed by ``key=value`` options::

    coco json=data/ann/train.json images=data/train
    voc  root=data/MyVOC split=trainval classes=data/MyVOC/classes.txt
    voc  root=data/MyVOC split=test classes=plane,ship,tank
    yolo data=data/drones/data.yaml split=val

Options (paths relative to the current directory):

=======  =========================================================================
coco     ``json`` (required), ``images`` (required): the image folder the json's
         ``file_name`` entries are relative to.
voc      ``root`` (required: the folder holding ``Annotations/``, ``JPEGImages/``,
         ``ImageSets/Main/``), ``split`` (required: ``ImageSets/Main/<split>.txt``),
         ``classes``: a ``.txt`` file with one name a line, or names separated by commas
         (default: the 20 PASCAL VOC classes); its order is the label order.
yolo     ``data`` (required: an Ultralytics ``data.yaml``), ``split`` (``train``, ``val`` or
         ``test``; default ``train``).
all      ``name``: a short name for logs, metric prefixes and result folders (default: the
         json's stem, or ``<folder>_<split>``).
=======  =========================================================================

Why ``key=value`` words rather than a positional ``coco:ann.json:images`` string: the options
are optional and named (a VOC class list, a name), a colon cannot be told apart from a Windows
drive letter, and a mistyped key can be named with its closest valid one. A path with spaces or
a ``+`` is quoted (``images='my photos'``); one spec is one YAML string, so it works in a YAML
list and as one ``KEY VALUE`` override (``DATASETS.TRAIN "yolo data=d/data.yaml"``).

:func:`parse_spec` checks the syntax, :func:`check_spec` that the files exist (cheap, before any
data is loaded), :func:`load_spec` loads the records with the format's loader.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from resdet.data.coco import load_coco_json, read_coco_categories
from resdet.data.records import DatasetError, DatasetMeta, DetectionRecord
from resdet.data.voc import VOC_CLASSES, load_voc
from resdet.data.yolo import load_yolo, read_data_yaml

# format → (required keys, optional keys)
FORMATS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "coco": (("json", "images"), ("name",)),
    "voc": (("root", "split"), ("classes", "name")),
    "yolo": (("data",), ("split", "name")),
}

_EXAMPLES = {
    "coco": "coco json=PATH/annotations.json images=PATH/images",
    "voc": "voc root=PATH/VOCdir split=trainval classes=PATH/classes.txt",
    "yolo": "yolo data=PATH/data.yaml split=val",
}


@dataclass(frozen=True)
class SourceSpec:
    """A parsed spec: ``format`` (a key of :data:`FORMATS`), its ``options`` and the ``text``
    as written in the config."""

    text: str
    format: str
    options: Dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Short name: the ``name`` option, else derived from the files (see the module doc)."""
        if "name" in self.options:
            return self.options["name"]
        o = self.options
        if self.format == "coco":
            base = os.path.splitext(os.path.basename(o["json"]))[0]
        elif self.format == "voc":
            base = f"{os.path.basename(os.path.normpath(o['root']))}_{o['split']}"
        else:
            folder = os.path.basename(os.path.dirname(os.path.abspath(o["data"])))
            base = f"{folder}_{o.get('split', 'train')}"
        return re.sub(r"[^\w.-]+", "_", base) or self.format

    def fail(self, problem: str) -> DatasetError:
        return DatasetError(f"dataset {self.text!r}: {problem}")


def looks_like_spec(entry: str) -> bool:
    """True when ``entry`` is meant as a spec (a ``key=value`` word, or a format word followed
    by more words or a colon) rather than a registered name."""
    words = entry.split()
    first = words[0].split(":")[0].lower() if words else ""
    return "=" in entry or (first in FORMATS and (len(words) > 1 or ":" in words[0]))


def parse_spec(entry: str) -> SourceSpec:
    """Parse the text of a spec; checks the syntax only (no file is touched).

    Raises:
        DatasetError: naming the entry: unknown format, a word that is not ``key=value``, an
            unknown key (with the closest valid one), a repeated or missing required key, an
            empty value; the message shows the expected form.
    """
    try:
        words = shlex.split(entry)
    except ValueError as e:  # an unclosed quote
        raise DatasetError(f"dataset {entry!r}: {e}") from e
    fmt = words[0].lower() if words else ""
    if fmt not in FORMATS:
        guess = fmt.split(":")[0].split("=")[0]
        close = difflib.get_close_matches(guess, list(FORMATS), n=1, cutoff=0.5)
        hint = f"; did you mean '{_EXAMPLES[close[0]]}'?" if close else ""
        raise DatasetError(
            f"dataset {entry!r}: not a registered name, and {words[0] if words else ''!r} is "
            f"not a dataset format (coco, voc or yolo followed by key=value options){hint}"
        )
    required, optional = FORMATS[fmt]
    spec = SourceSpec(entry, fmt)
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq:
            raise spec.fail(f"{word!r} is not key=value; expected e.g. '{_EXAMPLES[fmt]}'")
        if key not in required + optional:
            close = difflib.get_close_matches(key, required + optional, n=1, cutoff=0.4)
            hint = f"did you mean '{close[0]}'?" if close else ""
            raise spec.fail(
                f"unknown option {key!r} for {fmt} (options: {', '.join(required + optional)})"
                + (f"; {hint}" if hint else "")
            )
        if key in spec.options:
            raise spec.fail(f"option {key!r} given twice")
        if not value:
            raise spec.fail(f"option {key!r} is empty")
        spec.options[key] = value
    missing = [k for k in required if k not in spec.options]
    if missing:
        raise spec.fail(f"missing {', '.join(missing)}; expected e.g. '{_EXAMPLES[fmt]}'")
    return spec


def split_union(text: str) -> List[str]:
    """``"a+b"`` → ``["a", "b"]``, splitting only at a ``+`` outside quotes (a quoted path may
    contain one); blank parts are dropped."""
    parts, current, quote = [], [], ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "+":
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _voc_classes(spec: SourceSpec) -> List[str]:
    value = spec.options.get("classes")
    if value is None:
        return list(VOC_CLASSES)
    if value.endswith(".txt") or os.sep in value or "/" in value:
        if not os.path.isfile(value):
            raise spec.fail(f"classes file not found: {value}")
        with open(value, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        where = value
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
        where = "classes="
    if not names:
        raise spec.fail(f"{where}: no class names")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise spec.fail(f"{where}: class names repeated: {', '.join(repeated)}")
    return names


def _require(spec: SourceSpec, key: str, kind: str) -> str:
    path = spec.options[key]
    ok = os.path.isdir(path) if kind == "folder" else os.path.isfile(path)
    if not ok:
        raise spec.fail(f"{key}: {kind} not found: {path}")
    return path


def check_spec(spec: SourceSpec) -> None:
    """Check that the files a spec names exist (and, for VOC and YOLO, that its split does),
    without loading any annotation.

    Raises:
        DatasetError: naming the entry, the option and the missing path or split.
    """
    o = spec.options
    if spec.format == "coco":
        _require(spec, "json", "file")
        _require(spec, "images", "folder")
    elif spec.format == "voc":
        root = _require(spec, "root", "folder")
        main = os.path.join(root, "ImageSets", "Main")
        if not os.path.isfile(os.path.join(main, f"{o['split']}.txt")):
            have = sorted(f[:-4] for f in os.listdir(main) if f.endswith(".txt")) if (
                os.path.isdir(main)) else []  # fmt: skip
            raise spec.fail(
                f"split file {os.path.join(main, o['split'] + '.txt')} not found"
                + (f" (splits there: {', '.join(have)})" if have else "")
            )
        for sub in ("Annotations", "JPEGImages"):
            if not os.path.isdir(os.path.join(root, sub)):
                raise spec.fail(f"{sub}/ not found in {root}")
        _voc_classes(spec)
    else:
        _require(spec, "data", "file")
        split = o.get("split", "train")
        try:
            data = read_data_yaml(o["data"])
        except DatasetError as e:
            raise spec.fail(str(e)) from e
        if split not in data.splits:
            raise spec.fail(f"{o['data']} sets no split {split!r} (it sets "
                            f"{', '.join(data.splits) or 'none'})")  # fmt: skip
        for path in data.splits[split]:
            if not os.path.exists(path):
                raise spec.fail(f"{o['data']}: {split} folder or list not found: {path}")


def spec_class_names(spec: SourceSpec) -> Tuple[List[str], Optional[List[int]]]:
    """Class names (label order) and dataset category ids of a spec, read without loading its
    records (COCO: the json's ``categories``)."""
    check_spec(spec)
    if spec.format == "coco":
        ids, names = read_coco_categories(spec.options["json"])
        return names, ids
    if spec.format == "voc":
        return _voc_classes(spec), None
    return read_data_yaml(spec.options["data"]).class_names, None


def load_spec(
    spec: SourceSpec, on_error: str = "raise"
) -> Tuple[List[DetectionRecord], DatasetMeta]:
    """Records and meta of a spec, from the format's loader (``load_coco_json``, ``load_voc``,
    :func:`~resdet.data.yolo.load_yolo`); ``meta.name`` is :attr:`SourceSpec.name`."""
    check_spec(spec)
    o = spec.options
    if spec.format == "coco":
        return load_coco_json(o["json"], o["images"], name=spec.name, on_error=on_error)
    if spec.format == "voc":
        return load_voc(
            o["root"],
            "",
            o["split"],
            name=spec.name,
            on_error=on_error,
            class_names=_voc_classes(spec),
        )
    return load_yolo(o["data"], o.get("split", "train"), name=spec.name, on_error=on_error)
