"""The installable package: a wheel carries the configs and the programs, an installed copy
runs the tools from any folder, and the library neither imports the programs nor finds files
by walking up from its own location."""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a wheel is built from: the rest of the checkout (tests, datasets, output) is not needed.
SOURCES = ("setup.py", "pyproject.toml", "README.md", "resdet", "resdet_apps", "configs")


def _python_files(package: str):
    for path in sorted((REPO / package).rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def test_library_does_not_import_the_programs():
    bad = []
    for path, tree in _python_files("resdet"):
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [f"{path.relative_to(REPO)}:{node.lineno}" for n in names
                    if n.split(".")[0] == "resdet_apps"]  # fmt: skip
    assert not bad, f"resdet imports resdet_apps at {bad}"


def test_library_does_not_walk_up_from_its_files():
    users = [
        str(p.relative_to(REPO))
        for p, tree in _python_files("resdet")
        if any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(tree))
    ]
    assert not users, f"{users} locate files from __file__; use resdet.config.packaged"


@pytest.mark.slow
def test_wheel_carries_the_configs_and_runs_installed(tmp_path):
    for mod in ("pip", "setuptools"):  # looked up, not imported (setuptools patches)
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"building the wheel needs {mod}: pip install -e '.[dev]'")
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:  # a clean copy: no stale build/ output can slip into the wheel
        s = REPO / name
        if s.is_dir():
            shutil.copytree(s, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # fmt: skip
        else:
            shutil.copy2(s, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "w"),
                    str(src)], check=True, cwd=src)  # fmt: skip
    (wheel,) = (tmp_path / "w").glob("resdet-*.whl")
    configs = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for c in configs:
            assert f"resdet/{c}" in names, f"{c} is not in {wheel.name}"
            assert z.read(f"resdet/{c}") == (REPO / c).read_bytes()
    assert {"resdet_apps/benchmark.py", "resdet_apps/demo.py"} <= names

    target, elsewhere = tmp_path / "installed", tmp_path / "elsewhere"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    elsewhere.mkdir()
    # Only the installed copy on the path, run from a folder with no configs/ in it.
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (  # light: neither the config loader nor find_spec imports torch
        "import importlib.util, resdet; from resdet.config import load_config; "
        "print(resdet.__file__); print(importlib.util.find_spec('resdet_apps.demo').origin); "
        "a = load_config('configs/coco_r50_fpn.yaml'); b = load_config('coco_r101'); "
        "print(a.MODEL.BACKBONE.DEPTH, b.MODEL.BACKBONE.DEPTH)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, check=True,
                         capture_output=True, text=True).stdout.split("\n")  # fmt: skip
    assert out[0].startswith(str(target)) and out[1].startswith(str(target)), out
    assert out[2].split() == ["50", "101"], out
    for tool, args in (("train_det", ["--config", "configs/coco_r50_fpn.yaml"]), ("infer", [])):
        r = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), *args, "--help"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
