"""OpenVINO export: the model converted from resdet's ONNX export gives the PyTorch model's
detections (fp32 weights and arithmetic) at the traced size and at another size; the export
tool writes it and checks it; a missing openvino is a clear error, and ``--format all`` skips
it saying so."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
from test_export_onnx import ARCHS, COMMON, SIZES, _detector, _eager
from tool_loader import load_tool

from resdet.config import config_to_dict, load_config
from resdet.engine.checkpoint import save_checkpoint
from resdet.export.onnx import compare_detections, example_image, export_onnx
from resdet.export.openvino import compile_openvino, export_openvino, run_openvino

needs_openvino = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("openvino", "onnx")),
    reason="OpenVINO export needs the optional openvino and onnx packages (resdet[openvino])",
)


@needs_openvino
@pytest.mark.parametrize("arch", ["c4", "fpn"])
def test_openvino_matches_pytorch(tmp_path, arch):
    model = _detector(arch)
    path = export_openvino(model, str(tmp_path / "model.xml"), example_image(*SIZES[0]))
    assert os.path.getsize(tmp_path / "model.bin") > 0
    assert not model.training
    compiled = compile_openvino(path, threads=1)
    for i, size in enumerate(SIZES):  # dynamic H, W: the traced size and another one
        image = example_image(*size, seed=10 + i)
        want = _eager(model, image)
        assert len(want[0]) > 10
        match = compare_detections(want, run_openvino(path, image, compiled))
        assert match.ok, f"openvino at {size}: {match}"
        # fp32 weights: OpenVINO's default fp16 compression would move scores by ~1e-3.
        assert match.max_box_diff < 1e-2 and match.max_score_diff < 1e-4, match


@needs_openvino
def test_openvino_from_an_existing_fixed_onnx_export(tmp_path):
    model = _detector("c4")
    onnx_path = str(tmp_path / "fixed.onnx")
    export_onnx(model, onnx_path, example_image(*SIZES[0]), dynamic=False)
    path = export_openvino(
        model, str(tmp_path / "fixed.xml"), example_image(*SIZES[0]), onnx_path=onnx_path
    )
    compiled = compile_openvino(path, threads=1)
    assert list(compiled.inputs[0].get_partial_shape().to_shape()) == [1, 3, *SIZES[0]]
    image = example_image(*SIZES[0], seed=5)
    match = compare_detections(_eager(model, image), run_openvino(path, image, compiled))
    assert match.ok, match
    with pytest.raises(ValueError, match=r"ends in \.xml"):
        export_openvino(model, str(tmp_path / "model.ov"), image, onnx_path=onnx_path)


def _checkpoint(tmp_path) -> str:
    model = _detector("c4")
    cfg = load_config(None, COMMON + ARCHS["c4"])
    weights = str(tmp_path / "det.pth")
    save_checkpoint(weights, {"model": model.state_dict(), "config": config_to_dict(cfg)})
    return weights


@needs_openvino
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_tool_openvino_format(tmp_path, capsys):
    prefix = str(tmp_path / "exp" / "det")
    argv = ["--weights", _checkpoint(tmp_path), "--output", prefix, "--size", "64", "80"]
    assert load_tool("export").main(argv + ["--format", "openvino"]) == 0
    out = capsys.readouterr().out
    assert out.count("openvino at ") == 2 and out.count(": match") == 2, out
    assert os.path.getsize(prefix + ".xml") > 0 and os.path.getsize(prefix + ".bin") > 0
    assert not os.path.exists(prefix + ".onnx")  # the ONNX step went to a temporary folder


def test_missing_openvino_is_a_clear_error(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the export tool's ONNX step runs in onnxruntime")
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    tool = load_tool("export")
    prefix = str(tmp_path / "det")
    argv = ["--weights", _checkpoint(tmp_path), "--output", prefix, "--size", "64", "80"]
    assert tool.main(argv + ["--format", "openvino"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "pip install openvino" in err, err
    # --format all goes on without it, and says so.
    assert tool.main(argv + ["--format", "all", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "skipping the openvino format: openvino is not installed" in out
    assert os.path.exists(prefix + ".onnx") and not os.path.exists(prefix + ".xml")


def test_compile_names_the_missing_file(tmp_path):
    pytest.importorskip("openvino", reason="compiling needs the optional openvino package")
    with pytest.raises(FileNotFoundError, match="nope.xml"):
        compile_openvino(str(tmp_path / "nope.xml"))
