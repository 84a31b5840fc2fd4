"""Config loading: _BASE_ chains, KEY VALUE overrides, strict keys with suggestions, types,
and the save -> load round trip."""

from __future__ import annotations

import os

import pytest

from resdet.config import Config, ConfigError, load_config, save_config
from resdet.config.load import config_from_dict, config_to_dict


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def test_defaults_without_file() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.MODEL.BACKBONE.DEPTH == 50 and cfg.SOLVER.BASE_LR == 0.02


def test_base_inheritance_chain_relative_to_child(tmp_path) -> None:
    # grand <- base (in a sub-folder) <- child; each _BASE_ is relative to its own file.
    _write(
        tmp_path / "base" / "grand.yaml",
        "MODEL:\n  BACKBONE:\n    DEPTH: 101\n    FREEZE_AT: 2\nSOLVER:\n  BASE_LR: 0.1\n",
    )
    _write(
        tmp_path / "base" / "base.yaml",
        "_BASE_: grand.yaml\nMODEL:\n  BACKBONE:\n    DEPTH: 34\nSOLVER:\n  MAX_ITER: 500\n",
    )
    child = _write(
        tmp_path / "configs" / "child.yaml",
        "_BASE_: ../base/base.yaml\nSOLVER:\n  BASE_LR: 0.01\nSEED: 7\n",
    )
    # Load from another working directory: paths must not depend on the cwd.
    cwd = os.getcwd()
    os.chdir(tmp_path / "base")
    try:
        cfg = load_config(child)
    finally:
        os.chdir(cwd)
    assert cfg.MODEL.BACKBONE.DEPTH == 34  # base overrides grand
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2  # grand's key survives a sibling override
    assert cfg.SOLVER.BASE_LR == 0.01  # child overrides grand
    assert cfg.SOLVER.MAX_ITER == 500
    assert cfg.SEED == 7
    assert cfg.SOLVER.MOMENTUM == 0.9  # untouched default


def test_base_cycle_is_an_error(tmp_path) -> None:
    a = _write(tmp_path / "a.yaml", "_BASE_: b.yaml\nSEED: 1\n")
    _write(tmp_path / "b.yaml", "_BASE_: a.yaml\nSEED: 2\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)


def test_overrides_parse_types(tmp_path) -> None:
    path = _write(tmp_path / "c.yaml", "SOLVER:\n  BASE_LR: 0.1\n")
    cfg = load_config(
        path,
        [
            "SOLVER.BASE_LR", "0.05",
            "SOLVER.WEIGHT_DECAY", "1e-4",  # YAML reads this as a string: coerced to float
            "INPUT.MIN_SIZE_TRAIN", "[640, 672, 704]",
            "MODEL.ANCHOR.SIZES", "[[32], [64]]",
            "MODEL.BACKBONE.DEPTH", "101",
            "MODEL.BACKBONE.PLAIN", "true",
            "MODEL.BACKBONE.OUT_FEATURES", "res5",  # a scalar where a list is expected
            "SOLVER.MOMENTUM", "1",  # an int widens to float
        ],
    )  # fmt: skip
    assert cfg.SOLVER.BASE_LR == 0.05 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.SOLVER.WEIGHT_DECAY == pytest.approx(1e-4)
    assert isinstance(cfg.SOLVER.WEIGHT_DECAY, float)
    assert cfg.INPUT.MIN_SIZE_TRAIN == [640, 672, 704]
    assert cfg.MODEL.ANCHOR.SIZES == [[32.0], [64.0]]
    assert all(isinstance(v, float) for v in cfg.MODEL.ANCHOR.SIZES[0])
    assert cfg.MODEL.BACKBONE.DEPTH == 101 and cfg.MODEL.BACKBONE.PLAIN is True
    assert cfg.MODEL.BACKBONE.OUT_FEATURES == ["res5"]
    assert cfg.SOLVER.MOMENTUM == 1.0 and isinstance(cfg.SOLVER.MOMENTUM, float)


def test_unknown_key_names_file_key_and_suggestion(tmp_path) -> None:
    path = _write(tmp_path / "typo.yaml", "MODEL:\n  BACKBONE:\n    DEPHT: 101\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert path in msg
    assert "MODEL.BACKBONE.DEPHT" in msg
    assert "did you mean 'DEPTH'" in msg


def test_unknown_section_and_override_key(tmp_path) -> None:
    path = _write(tmp_path / "sec.yaml", "SOLVERR:\n  BASE_LR: 0.1\n")
    with pytest.raises(ConfigError, match="sec.yaml.*'SOLVERR'.*did you mean 'SOLVER'"):
        load_config(path)
    with pytest.raises(
        ConfigError, match=r"command line.*'SOLVER.BASE_LRR'.*did you mean 'BASE_LR'"
    ):
        load_config(None, ["SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(ConfigError, match="'MODEL.BACKBONE' is a section"):
        load_config(None, ["MODEL.BACKBONE", "3"])


def test_wrong_type_is_an_error(tmp_path) -> None:
    path = _write(tmp_path / "t.yaml", "MODEL:\n  BACKBONE:\n    DEPTH: fifty\n")
    with pytest.raises(ConfigError, match=r"t.yaml.*'MODEL.BACKBONE.DEPTH'.*expected int.*'fifty'"):
        load_config(path)
    with pytest.raises(ConfigError, match="expected float"):
        load_config(None, ["SOLVER.BASE_LR", "fast"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(None, ["MODEL.BACKBONE.DEPTH", "true"])  # a bool is not an int
    with pytest.raises(ConfigError, match="is a section; expected a mapping"):
        load_config(_write(tmp_path / "s.yaml", "SOLVER: 3\n"))


def test_odd_number_of_overrides() -> None:
    with pytest.raises(ConfigError, match="KEY VALUE pairs.*'SEED' has no value"):
        load_config(None, ["SOLVER.BASE_LR", "0.1", "SEED"])


def test_missing_file_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path / "bad.yaml", "SOLVER: [1, 2\n"))


def test_save_load_round_trip(tmp_path) -> None:
    cfg = load_config(
        None,
        ["MODEL.BACKBONE.DEPTH", "18", "INPUT.MIN_SIZE_TRAIN", "[480, 512]",
         "MODEL.ANCHOR.SIZES", "[[16], [32], [64]]", "OUTPUT_DIR", "out/x"],
    )  # fmt: skip
    path = str(tmp_path / "run" / "config.yaml")
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_string_key_override_keeps_the_text() -> None:
    cfg = load_config(None, ["OUTPUT_DIR", "2024", "SOLVER.MAX_ITER", "12"])
    assert cfg.OUTPUT_DIR == "2024"
    assert cfg.SOLVER.MAX_ITER == 12
