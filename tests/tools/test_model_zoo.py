"""tools/make_model_zoo.py: the measured-here rows come from a finished demo's summary.json."""

from __future__ import annotations

import json

import pytest
from tool_loader import load_tool


@pytest.fixture(scope="module")
def zoo():
    return load_tool("make_model_zoo")


def _summary(tmp_path, **extra):
    det = {"AP": 0.353, "AP50": 0.573, "AP75": 0.39, "VOC07_mAP": 0.569}
    summary = {
        "schedule": "default",
        "det_iters": 1300,
        "wall_seconds": 527.0,
        "classifier": {"top1_err": 0.148, "top5_err": 0.01},
        "pretrained": det,
        "scratch": {"AP": 0.06, "AP50": 0.142, "AP75": 0.04, "VOC07_mAP": 0.166},
        **extra,
    }
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    return str(path)


def test_demo_rows_come_from_the_recorded_summary(zoo, tmp_path):
    dest = str(tmp_path / "measured.json")
    assert any("pending" in row for row in zoo.demo_rows(dest))  # nothing recorded yet
    zoo.save_demo_results(_summary(tmp_path), dest)
    rows = "\n".join(zoo.demo_rows(dest))
    assert "pending" not in rows
    # machine, schedule + iterations, classifier error, AP / AP50, TTA, VOC, scratch, scratch TTA
    row = "| a 2-core CPU | `default`, 1300 | 14.8 | 35.3 / 57.3 | - | 56.9 | 6.0 / 14.2 | - |"
    assert row in rows
    # A summary that names its machine (the demo's since it records one) puts it there.
    machine = {"cpu": "AMD EPYC", "isa": ["avx2", "fma"], "cores": 2}
    zoo.save_demo_results(_summary(tmp_path, machine=machine), dest)
    rows = "\n".join(zoo.demo_rows(dest))
    assert "| AMD EPYC (2 cores, flags avx2 fma) | `default`, 1300 |" in rows
    zoo.save_demo_results(_summary(tmp_path, machine={**machine, "device": "cuda:0"}), dest)
    rows = "\n".join(zoo.demo_rows(dest))
    assert "(2 cores, flags avx2 fma), detectors trained on cuda:0 |" in rows
    # With the final evaluation's fused views (TEST.AUG), their AP / AP50 fill the TTA columns.
    tta = {"AP": 0.4, "AP50": 0.6}
    pre = {"AP": 0.353, "AP50": 0.573, "VOC07_mAP": 0.569, "tta": tta}
    zoo.save_demo_results(_summary(tmp_path, machine=machine, pretrained=pre), dest)
    rows = "\n".join(zoo.demo_rows(dest))
    assert "| 35.3 / 57.3 | 40.0 / 60.0 | 56.9 | 6.0 / 14.2 | - |" in rows


def test_one_row_per_kind_of_machine(zoo, tmp_path):
    dest = str(tmp_path / "measured.json")
    epyc = {"cpu": "AMD EPYC", "isa": ["avx2"], "cores": 2}
    zen4 = {"cpu": "AMD EPYC", "isa": ["avx2", "avx512f", "avx512_bf16"], "cores": 2}
    xeon = {"cpu": "Intel Xeon", "isa": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"], "cores": 2}
    for machine, iters in ((xeon, 5500), (zen4, 4600), (epyc, 1500), (epyc, 2900)):
        zoo.save_demo_results(_summary(tmp_path, machine=machine, det_iters=iters), dest)
    rows = [r for r in zoo.demo_rows(dest) if r.startswith("| ") and "`default`" in r]
    # The same CPU name with other flags is another machine; a re-run replaces its own row.
    iters = [r.split(" | ")[1] for r in rows]
    assert iters == ["`default`, 2900", "`default`, 4600", "`default`, 5500"]
    assert "flags avx2)" in rows[0] and "amx_bf16)" in rows[2]  # AVX2 first, AMX last


def test_a_file_of_one_run_is_read_as_that_machines_row(zoo, tmp_path):
    dest = tmp_path / "measured.json"
    zoo.save_demo_results(_summary(tmp_path, machine={"cpu": "X", "isa": ["avx2"], "cores": 2}),
                          str(dest))  # fmt: skip
    single = json.loads(dest.read_text())["runs"]["X | avx2 | cpu"]
    dest.write_text(json.dumps(single))  # the layout before one run was kept per machine
    assert zoo.load_demo_results(str(dest)) == {"X | avx2 | cpu": single}


def test_an_unfinished_summary_is_refused(zoo, tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"schedule": "default", "steps": {}}))
    with pytest.raises(SystemExit, match="not a finished demo summary"):
        zoo.save_demo_results(str(path), str(tmp_path / "measured.json"))


def test_model_zoo_md_is_up_to_date(zoo):
    # MODEL_ZOO.md is generated: a config change must come with `python tools/make_model_zoo.py`.
    assert zoo.main(["--check"]) == 0
