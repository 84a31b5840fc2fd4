"""Output that cannot be written: a full disk, a read-only folder, a path that is a file.

Checked before training starts where possible; at checkpoint time the previous checkpoints
survive and still load. The full-disk and read-only-mount cases mount a small tmpfs, which
needs root; elsewhere they are skipped with the reason (read-only also runs as chmod 555
when not root, where permissions bind).
"""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest
import torch
from conftest import error_line, run_tool

from resdet.engine.checkpoint import Checkpointer, load_checkpoint
from resdet.modeling.backbone.resnet import ResNet
from resdet.utils.output import OutputError, check_output_dir


@contextlib.contextmanager
def tmpfs(path, size_kb: int, read_only: bool = False):
    """Mount a tmpfs of ``size_kb`` at ``path`` for the block (skips without root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (full-disk / read-only mount case)")
    os.makedirs(path, exist_ok=True)
    opts = f"size={size_kb}k" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_read_only(path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


@contextlib.contextmanager
def read_only_dir(path):
    """A folder nobody may write into: a read-only tmpfs as root, chmod 555 otherwise."""
    if os.geteuid() == 0:
        with tmpfs(path, 64, read_only=True) as p:
            yield p
        return
    os.makedirs(path)
    os.chmod(path, 0o555)
    try:
        yield str(path)
    finally:
        os.chmod(path, 0o755)


def _train(det_config, out, capsys, *extra):
    return run_tool("train_det", ["--config", det_config, "OUTPUT_DIR", str(out), *extra], capsys)


def test_output_dir_is_a_file(tmp_path, det_config, data_env, capsys) -> None:
    out = tmp_path / "out"
    out.write_text("I am a file")
    rc, err = _train(det_config, out, capsys)
    assert rc == 2
    error_line(err, f"OUTPUT_DIR {out}", f"{out} is a file, not a folder")
    assert out.read_text() == "I am a file"


def test_output_dir_below_a_file(tmp_path, cls_config, capsys) -> None:
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "run"
    rc, err = run_tool("train_cls", ["--config", cls_config, "OUTPUT_DIR", str(out)], capsys)
    assert rc == 2
    error_line(err, f"{tmp_path / 'f'} is a file, not a folder")


def test_output_dir_read_only(tmp_path, det_config, data_env, capsys) -> None:
    with read_only_dir(tmp_path / "ro") as ro:
        rc, err = _train(det_config, os.path.join(ro, "run"), capsys)
        assert rc == 2
        line = error_line(err, f"OUTPUT_DIR {ro}/run")
        assert "read-only" in line or "not writable" in line
        assert os.listdir(ro) == []


def test_disk_too_small_for_one_checkpoint(tmp_path, det_config, data_env, capsys) -> None:
    """Refused before the first iteration, with the free space and the size needed."""
    with tmpfs(tmp_path / "small", 256) as small:
        rc, err = _train(det_config, small, capsys)
        assert rc == 2
        error_line(err, "no space left on device for a checkpoint", "MB free", "needs about")
        assert not [f for f in os.listdir(small) if f.endswith(".pth")]


def test_disk_full_at_checkpoint_time(tmp_path, det_config, data_env, capsys) -> None:
    """The disk holds one checkpoint: the second save fails with a plain message, the first
    checkpoint and the last_checkpoint pointer stay intact, and --resume continues from it."""
    rc, err = _train(det_config, tmp_path / "probe", capsys, "SOLVER.MAX_ITER", "1")
    assert rc == 0, err[-2000:]
    size = os.path.getsize(tmp_path / "probe" / "model_final.pth")
    with tmpfs(tmp_path / "full", int(size * 1.5) // 1024 + 256) as full:
        rc, err = _train(det_config, full, capsys, "SOLVER.MAX_ITER", "3")
        assert rc == 2
        error_line(err, f"no space left on device writing {full}/model_0000002.pth")
        files = sorted(os.listdir(full))
        assert "model_0000001.pth" in files and "model_0000002.pth" not in files
        assert not [f for f in files if f.endswith(".tmp")]  # no half-written leftovers
        assert open(os.path.join(full, "last_checkpoint")).read() == "model_0000001.pth"
        ckpt = load_checkpoint(os.path.join(full, "model_0000001.pth"))
        assert ckpt["iteration"] == 1 and "model" in ckpt


def test_checkpointer_keeps_earlier_checkpoints(tmp_path) -> None:
    """Unit level: a folder that turns read-only between two saves."""
    model = torch.nn.Linear(4, 2)
    with tmpfs(tmp_path / "ck", 1024) as folder:
        checkpointer = Checkpointer(folder, max_to_keep=0)
        first = checkpointer.save("model_0000001", model, iteration=1)
        remount_read_only(folder)
        with pytest.raises(OutputError, match=f"{folder} is read-only") as info:
            checkpointer.save("model_0000002", model, iteration=2)
        assert "model_0000002.pth" in str(info.value)
        assert checkpointer.last_checkpoint() == first
        assert torch.equal(load_checkpoint(first)["model"]["weight"], model.weight.detach())


def test_check_output_dir_messages(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_dir(str(tmp_path / "file"))
    check_output_dir(str(tmp_path / "new" / "deep"))  # created, writable
    assert os.path.isdir(tmp_path / "new" / "deep") and os.listdir(tmp_path / "new" / "deep") == []


@pytest.mark.parametrize("tool", ["infer", "coco_eval", "check_dataset", "convert_weights"])
def test_tool_output_path_is_a_file(tool, tmp_path, det_weights, shapes_root, capsys) -> None:
    """Every tool that writes files: an output path through a file is one error line."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    if tool == "convert_weights":  # torchvision-style ImageNet weights to convert
        torch.save(ResNet(18).state_dict(), tmp_path / "resnet18.pth")
    val = os.path.join(shapes_root, "shapes")
    argv = {
        "infer": ["--weights", det_weights, "--input", os.path.join(val, "val"), "--device", "cpu",
                  "--output", str(blocker)],
        "coco_eval": ["--gt", os.path.join(val, "annotations", "instances_val.json"), "--dt",
                      os.path.join(os.path.dirname(__file__), "empty_results.json"), "--output",
                      str(blocker / "metrics")],
        "check_dataset": ["--image-folder", os.path.join(val, "crops", "val"), "--no-progress",
                          "--json", str(blocker / "report.json")],
        "convert_weights": [str(tmp_path / "resnet18.pth"), str(blocker / "converted.pth")],
    }[tool]  # fmt: skip
    rc, err = run_tool(tool, argv, capsys)
    assert rc == 2
    line = error_line(err, str(blocker))
    assert "not a folder" in line or "not as a folder" in line
