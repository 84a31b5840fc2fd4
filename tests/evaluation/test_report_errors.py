"""TIDE error breakdown: the known set's error types, and each dAP equal to pycocotools run
on a detection (or ground-truth) set fixed by hand."""

from __future__ import annotations

import contextlib
import io

import pytest
from report_cases import (
    CAT_IDS,
    coco_index,
    make_gt,
    make_results,
    reference_cocoeval,
    write_known_set,
)

from resdet.evaluation.report_data import build_report_data, load_report_data
from resdet.evaluation.report_errors import classify_errors, error_breakdown, plot_errors


def _ap50(gt: dict, results: list) -> float:
    e = reference_cocoeval(gt, results)
    with contextlib.redirect_stdout(io.StringIO()):
        e.summarize()
    return float(e.stats[1])


def test_known_errors_get_their_types(tmp_path) -> None:
    known = write_known_set(tmp_path)
    data = load_report_data(known.gt_json, known.dt_json)
    errors = classify_errors(data)
    assert errors.counts == {"Cls": 1, "Loc": 1, "Both": 0, "Dupe": 1, "Bkg": 1, "Miss": 1}
    by_score = {data.score_of(d): t for d, t in errors.dt_type.items()}
    assert by_score == {0.85: "Cls", 0.70: "Loc", 0.60: "Dupe", 0.82: "Bkg"}
    # The Cls and Loc errors point at objects 3 and 5 (so those are not "missed"); object 7 is.
    assert sorted(errors.dt_target.values()) == [3, 5]
    assert errors.missed == [7]


def test_each_dap_is_the_ap50_of_the_set_fixed_by_hand(tmp_path) -> None:
    known = write_known_set(tmp_path)
    gt, results = known.gt, known.results
    errors = error_breakdown(load_report_data(known.gt_json, known.dt_json))
    base = _ap50(gt, results)
    assert errors.ap50 == pytest.approx(base, abs=1e-12)

    def without(score: float) -> list:
        return [r for r in results if r["score"] != score]

    cls_fixed = [dict(r, category_id=CAT_IDS[0]) if r["score"] == 0.85 else r for r in results]
    loc_fixed = [dict(r, bbox=[10, 10, 40, 40]) if r["score"] == 0.70 else r for r in results]
    gt_no_miss = dict(gt, annotations=[a for a in gt["annotations"] if a["id"] != 7])
    expected = {
        "Cls": _ap50(gt, cls_fixed),
        "Loc": _ap50(gt, loc_fixed),
        "Both": base,  # nothing to fix
        "Dupe": _ap50(gt, without(0.60)),
        "Bkg": _ap50(gt, without(0.82)),
        "Miss": _ap50(gt_no_miss, results),
        "FalsePos": _ap50(gt, [r for r in results if r["score"] not in (0.85, 0.7, 0.6, 0.82)]),
        "FalseNeg": _ap50(
            dict(gt, annotations=[a for a in gt["annotations"] if a["id"] not in (3, 5, 7)]),
            results,
        ),
    }
    for kind, ap in expected.items():
        assert errors.dap[kind] == pytest.approx(ap - base, abs=1e-12), kind
    # The known errors all cost AP except the lowest-scoring duplicate: it comes after every
    # true positive of its class, where COCO's interpolated precision no longer counts.
    assert all(errors.dap[k] > 0 for k in ("Cls", "Loc", "Bkg", "Miss", "FalsePos", "FalseNeg"))
    assert errors.dap["Dupe"] == 0 and errors.dap["Both"] == 0


def test_two_errors_on_one_object_fix_only_the_higher_scoring() -> None:
    # One "a" object, two poorly placed "a" detections: both Loc; fixing makes the 0.9 one a
    # true positive and removes the 0.5 one (TIDE: one fix per object), so AP50 becomes 1.
    gt = make_gt([(1, 0, [0, 0, 40, 40])], num_images=1)
    dets = [(1, 0, [20, 0, 60, 40], 0.9), (1, 0, [0, 20, 40, 60], 0.5)]
    errors = error_breakdown(build_report_data(coco_index(gt), make_results(dets)))
    assert errors.counts["Loc"] == 2 and errors.counts["Miss"] == 0
    assert errors.ap50 == 0 and errors.ap50 + errors.dap["Loc"] == pytest.approx(1.0)


def test_wrong_class_and_place_is_both_and_empty_image_is_background() -> None:
    gt = make_gt([(1, 0, [0, 0, 40, 40])], num_images=2)
    dets = [(1, 1, [20, 0, 60, 40], 0.9), (2, 0, [0, 0, 40, 40], 0.8)]
    errors = classify_errors(build_report_data(coco_index(gt), make_results(dets)))
    assert errors.counts == {"Cls": 0, "Loc": 0, "Both": 1, "Dupe": 0, "Bkg": 1, "Miss": 1}


def test_plot(tmp_path) -> None:
    known = write_known_set(tmp_path)
    errors = error_breakdown(load_report_data(known.gt_json, known.dt_json))
    with open(plot_errors(errors, str(tmp_path / "e.png")), "rb") as f:
        assert f.read(4) == b"\x89PNG"
