"""Configs: a dataclass schema per section, YAML files with ``_BASE_``, ``KEY VALUE`` overrides."""

from resdet.config.load import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from resdet.config.schema import Config

__all__ = [
    "Config",
    "ConfigError",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]
