"""resdet.engine.launch.tool_main: flags anywhere among the KEY VALUE overrides."""

from __future__ import annotations

import pytest

from resdet.config import ConfigError
from resdet.engine.launch import tool_main


def _calls(argv, eval_only=False):
    calls = []

    def run(cfg, resume, eval_only, weights):
        calls.append((cfg, resume, eval_only, weights))
        return {}

    assert tool_main("doc", run, argv, eval_only=eval_only) == 0
    return calls[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{c}", "OUTPUT_DIR", "out/x", "--resume", "SOLVER.BASE_LR", "0.5"],
        ["--resume", "OUTPUT_DIR", "out/x", "--config", "{c}", "SOLVER.BASE_LR", "0.5"],
        ["--config", "{c}", "OUTPUT_DIR", "out/x", "SOLVER.BASE_LR", "0.5", "--resume"],
    ],
)
def test_flags_anywhere(tmp_path, argv) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("SOLVER: {MAX_ITER: 7}\n")
    cfg, resume, eval_only, weights = _calls([a.replace("{c}", str(cfg_file)) for a in argv])
    assert resume and not eval_only and weights == ""
    assert cfg.OUTPUT_DIR == "out/x" and cfg.SOLVER.BASE_LR == 0.5 and cfg.SOLVER.MAX_ITER == 7


def test_eval_tool_and_negative_values(tmp_path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("{}\n")
    argv = ["--config", str(cfg_file), "MODEL.PIXEL_MEAN", "[-1, 0, 1]", "--weights", "w.pth",
            "SEED", "-3"]  # fmt: skip
    cfg, resume, eval_only, weights = _calls(argv, eval_only=True)
    assert eval_only and weights == "w.pth" and cfg.SEED == -3
    assert cfg.MODEL.PIXEL_MEAN == [-1.0, 0.0, 1.0]


def test_odd_overrides_still_an_error(tmp_path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("{}\n")
    with pytest.raises(ConfigError, match="'SEED' has no value"):
        _calls(["--config", str(cfg_file), "--resume", "SEED"])
