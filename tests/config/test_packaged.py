"""Config names resolved from the configs shipped in the package, and their _BASE_ chains."""

from __future__ import annotations

import os

import pytest

from resdet.config import ConfigError, load_config
from resdet.config.load import packaged_config_path, resolve_config_path
from resdet.config.packaged import packaged_config, packaged_config_dir, packaged_config_names

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_packaged_configs_are_the_repository_configs():
    names = packaged_config_names()
    on_disk = sorted(
        os.path.relpath(os.path.join(d, f), os.path.join(REPO, "configs")).replace(os.sep, "/")
        for d, _, files in os.walk(os.path.join(REPO, "configs"))
        for f in files
        if f.endswith(".yaml")
    )
    assert names == on_disk and "base/fpn.yaml" in names
    for name in names:
        with open(packaged_config(name), "rb") as a, open(f"{REPO}/configs/{name}", "rb") as b:
            assert a.read() == b.read(), name


@pytest.mark.parametrize(
    "name", ["coco_r101", "coco_r101.yaml", "configs/coco_r101.yaml", "./configs/coco_r101"]
)
def test_names_resolve_from_anywhere(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    expected = os.path.join(packaged_config_dir(), "coco_r101.yaml")
    assert resolve_config_path(name) == expected
    cfg = load_config(name, ["SOLVER.BASE_LR", "0.5"])
    # coco_r101 sets DEPTH itself and takes the rest from base/detection.yaml and base/c4.yaml.
    assert cfg == load_config(
        os.path.join(REPO, "configs", "coco_r101.yaml"), ["SOLVER.BASE_LR", "0.5"]
    )
    assert cfg.MODEL.BACKBONE.DEPTH == 101 and cfg.SOLVER.BASE_LR == 0.5


def test_an_existing_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "coco_r101.yaml").write_text("MODEL:\n  BACKBONE:\n    DEPTH: 34\n")
    assert load_config("configs/coco_r101.yaml").MODEL.BACKBONE.DEPTH == 34
    # ... but programs asking for the packaged file get it whatever the working folder holds.
    assert load_config(packaged_config_path("coco_r101")).MODEL.BACKBONE.DEPTH == 101


def test_user_config_may_name_a_packaged_base(tmp_path, monkeypatch):
    mine = tmp_path / "mine.yaml"
    mine.write_text("_BASE_: coco_r50_fpn.yaml\nSOLVER:\n  MAX_ITER: 7\n")
    # A file of that name in the working folder is not the base: only one beside the file is.
    work = tmp_path / "work"
    work.mkdir()
    (work / "coco_r50_fpn.yaml").write_text("SOLVER:\n  BASE_LR: 0.125\n")
    monkeypatch.chdir(work)
    cfg = load_config(str(mine))
    ref = load_config(os.path.join(REPO, "configs", "coco_r50_fpn.yaml"), ["SOLVER.MAX_ITER", "7"])
    assert cfg == ref
    # A base beside the file still comes first.
    (tmp_path / "coco_r50_fpn.yaml").write_text("SOLVER:\n  BASE_LR: 0.25\n")
    assert load_config(str(mine)).SOLVER.BASE_LR == 0.25


def test_unknown_names_say_what_is_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"config file not found: coco_r50_fpm .*did you mean coco_r50_fpn.yaml"
    ):
        load_config("coco_r50_fpm")
    with pytest.raises(ConfigError, match="no config of that name"):
        packaged_config_path("shapes_r18_fpm.yaml")
    assert packaged_config("../setup.py") is None and packaged_config("configs/../README") is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("_BASE_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'nowhere.yaml'}"):
        load_config(str(bad))
