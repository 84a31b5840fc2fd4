"""Loading configs: YAML with ``_BASE_`` inheritance, ``KEY VALUE`` overrides, strict keys.

    cfg = load_config("configs/imagenet_r50.yaml", ["SOLVER.BASE_LR", "0.05"])

A path that does not exist is looked up by name among the configs shipped in the package
(``coco_r50_fpn``, ``configs/coco_r50_fpn.yaml``: :mod:`resdet.config.packaged`), so a tool run
from any folder after ``pip install .`` finds them. A file may name a ``_BASE_`` (a path
relative to itself, or a list of them; else a packaged config's name); the base is loaded
first and the file's keys are merged over it, section by section. Every key is then checked
against the dataclass schema in ``resdet.config.schema``: an unknown key is an error naming
the file, the key and the closest valid key; a value of the wrong type is an error naming the
key, the expected type and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any, Dict, List, Optional, Sequence

import yaml

from resdet.config.packaged import close_packaged_names, packaged_config, packaged_config_dir
from resdet.config.schema import Config

BASE_KEY = "_BASE_"


class ConfigError(ValueError):
    """A config file or override is wrong; the message says where and how to fix it."""


def resolve_config_path(path: str) -> str:
    """``path`` when that file exists, else the packaged config of that name.

    Raises:
        ConfigError: neither exists; the message names the closest packaged configs.
    """
    if os.path.isfile(path):
        return path
    found = packaged_config(path)
    if found is not None:
        return found
    where = packaged_config_dir()
    close = close_packaged_names(path)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"config file not found: {path} (nor a config of that name in {where or 'the package'})"
        + hint
    )


def packaged_config_path(name: str) -> str:
    """Path of the packaged config ``name`` (``coco_r50_fpn``, ``configs/coco_r50_fpn.yaml``),
    whatever the working folder holds: what programs use for their own configs.

    Raises:
        ConfigError: the package ships no config of that name.
    """
    found = packaged_config(name)
    if found is None:
        close = close_packaged_names(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = packaged_config_dir() or "the package (it ships no configs)"
        raise ConfigError(f"{name}: no config of that name in {where}{hint}")
    return found


def _read_yaml(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data)}")
    return data


def _merge(base: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_with_bases(path: str, seen: Sequence[str] = ()) -> Dict[str, Any]:
    path = os.path.abspath(resolve_config_path(path))
    if path in seen:
        raise ConfigError(f"{path}: _BASE_ cycle through {' -> '.join(seen)}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    merged: Dict[str, Any] = {}
    for base in bases:
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base_path):  # not beside the file: a packaged config of that name?
            base_path = packaged_config(base) or base_path
        merged = _merge(merged, _load_with_bases(base_path, [*seen, path]))
    return _merge(merged, data)


def _closest(key: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.4)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(options)}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints widen to floats, lists are checked."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]: None (YAML null) or an X
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner, where)
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            # A single scalar where a list is expected is a common slip: accept it as [value].
            value = [value]
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(
            f"{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})"
        )
    return value


def _build(cls: type, data: Dict[str, Any], where: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"{source}: unknown config key '{name}'{_closest(key, list(fields))}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{name}' is a section; expected a mapping")
            kwargs[key] = _build(tp, value, name, source)
        else:
            kwargs[key] = _coerce(value, tp, f"{source}: '{name}'")
    return cls(**kwargs)


def _apply_override(data: Dict[str, Any], dotted: str, raw: str) -> None:
    node: Any = Config()
    parts = dotted.split(".")
    cursor = data
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
        if part not in names:
            where = ".".join(parts[:i]) or "top level"
            raise ConfigError(
                f"command line: unknown config key '{dotted}' (no '{part}' in {where})"
                f"{_closest(part, names)}"
            )
        node = getattr(node, part)
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"command line: '{'.'.join(parts[: i + 1])}' is not a section")
            cursor = cursor.setdefault(part, {})
        else:
            if dataclasses.is_dataclass(node):
                raise ConfigError(f"command line: '{dotted}' is a section; set one of its keys")
            # A string key keeps the text as typed ("OUTPUT_DIR 2024" is a folder name, not
            # an int); everything else is parsed as YAML ("0.05", "[600, 800]", "true").
            cursor[part] = raw if isinstance(node, str) else yaml.safe_load(raw)


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Load a config file (or the defaults when ``path`` is None) and apply overrides.

    Args:
        path: YAML file, or the name of a packaged config (``coco_r50_fpn``); its ``_BASE_``
            chain is followed.
        overrides: a flat ``[KEY, VALUE, KEY, VALUE, ...]`` list, e.g.
            ``["SOLVER.BASE_LR", "0.05", "MODEL.BACKBONE.DEPTH", "101"]``; values are parsed as
            YAML scalars/lists (``"[600, 800]"`` is a list).

    Raises:
        ConfigError: missing file, bad YAML, unknown key, wrong type, odd number of overrides.
    """
    data = _load_with_bases(path) if path else {}
    source = path or "defaults"
    overrides = list(overrides)
    if len(overrides) % 2:
        raise ConfigError(
            f"command line: overrides come in KEY VALUE pairs; '{overrides[-1]}' has no value"
        )
    for key, value in zip(overrides[::2], overrides[1::2]):
        _apply_override(data, key, value)
    if overrides:
        source = f"{source} (with command-line overrides)"
    return _build(Config, data, "", source)


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: Dict[str, Any], source: str = "checkpoint") -> Config:
    """Rebuild a Config from ``config_to_dict`` output (e.g. stored inside a checkpoint)."""
    return _build(Config, data, "", source)


def save_config(cfg: Config, path: str) -> None:
    """Write the fully resolved config (every key, defaults included) as YAML."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
