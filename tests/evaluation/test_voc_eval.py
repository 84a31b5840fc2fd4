"""VOC evaluator: hand-worked APs, difficult objects, duplicates, and the devkit loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from resdet.data.records import DatasetError, DatasetMeta, DetectionRecord
from resdet.evaluation.voc import VOCEvaluator, voc_ap


def _det(image_id: int, boxes, scores, labels) -> dict:
    return {
        "image_id": image_id,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, np.float32),
        "labels": np.asarray(labels, np.int64),
    }


def _hand_case(g4_difficult: bool) -> tuple[list[DetectionRecord], list[dict]]:
    """Two images, class 0 ("car"); boxes are 10x10 so IoUs are easy to read off.

    image 0: g1 = [0,0,10,10], g2 = [50,50,60,60]
    image 1: g3 = [0,0,10,10], g4 = [50,50,70,70] (difficult when g4_difficult)
    detections, by score:
      d1 0.90 img0 [0,0,10,8]    IoU(g1) = 80/100 = 0.8  -> TP
      d2 0.80 img1 [0,0,10,3]    IoU(g3) = 0.3           -> FP (below 0.5)
      d5 0.75 img1 [50,50,70,68] IoU(g4) = 360/400 = 0.9 -> ignored if g4 is difficult, else TP
      d4 0.70 img0 [50,50,60,59] IoU(g2) = 0.9           -> TP
      d3 0.60 img0 [0,0,10,9]    IoU(g1) = 0.9           -> FP (duplicate of g1)
    """
    records = [
        DetectionRecord("a.jpg", 0, 100, 100, [[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0]),
        DetectionRecord(
            "b.jpg",
            1,
            100,
            100,
            [[0, 0, 10, 10], [50, 50, 70, 70]],
            [0, 0],
            difficult=[False, g4_difficult],
        ),
    ]
    dets = [
        _det(0, [[0, 0, 10, 8], [50, 50, 60, 59], [0, 0, 10, 9]], [0.9, 0.7, 0.6], [0, 0, 0]),
        _det(1, [[0, 0, 10, 3], [50, 50, 70, 68]], [0.8, 0.75], [0, 0]),
    ]
    return records, dets


def _score_hand_case(g4_difficult: bool) -> dict:
    """The VOC metrics of :func:`_hand_case`, every detection processed in one batch."""
    records, dets = _hand_case(g4_difficult)
    ev = VOCEvaluator(records, DatasetMeta("hand", ["car"], evaluator="voc"))
    ev.process(dets)
    return ev.evaluate()


def test_hand_worked_case_with_difficult() -> None:
    # g4 difficult: npos = 3; d5 counts for nothing.
    #   order   d1  d2  d5  d4  d3
    #   tp      1   1   1   2   2      rec  = 1/3 1/3 1/3 2/3 2/3
    #   fp      0   1   1   1   2      prec = 1   .5  .5  2/3 .5
    # 11-point: t = 0, .1, .2, .3 -> max prec at rec >= t = 1; t = .4, .5, .6 -> 2/3;
    #           t = .7 .. 1 -> 0.  AP07 = (4 * 1 + 3 * 2/3) / 11 = 6/11.
    # area: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3], 0 beyond: 1/3 + 2/9 = 5/9.
    m = _score_hand_case(g4_difficult=True)
    assert m["per_class"]["car"]["ap07"] == pytest.approx(6 / 11)
    assert m["per_class"]["car"]["ap"] == pytest.approx(5 / 9)
    assert m["mAP07"] == pytest.approx(6 / 11) and m["mAP"] == pytest.approx(5 / 9)
    assert m["AP50"] == m["mAP"]


def test_hand_worked_case_without_difficult() -> None:
    # g4 counts: npos = 4 and d5 is a TP.
    #   tp   1   1   2   3   3     rec  = .25 .25 .5  .75 .75
    #   fp   0   1   1   1   2     prec = 1   .5  2/3 .75 .6
    # 11-point: t = 0, .1, .2 -> 1; t = .3 .. .7 -> .75; t >= .8 -> 0: (3 + 5 * .75) / 11.
    # area: .25 * 1 + .5 * .75 = .625.
    m = _score_hand_case(g4_difficult=False)
    assert m["per_class"]["car"]["ap07"] == pytest.approx(6.75 / 11)
    assert m["per_class"]["car"]["ap"] == pytest.approx(0.625)


def test_voc_ap_direct() -> None:
    # Perfect detector: both metrics 1. Half recall at precision 1: area .5, 11-point 6/11
    # (t = 0 .. .5 reach recall .5; np.arange's 0.5 is exact).
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), True) == pytest.approx(1.0)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), False) == pytest.approx(1.0)
    assert voc_ap(np.array([0.5]), np.array([1.0]), False) == pytest.approx(0.5)
    assert voc_ap(np.array([0.5]), np.array([1.0]), True) == pytest.approx(6 / 11)
    assert voc_ap(np.array([]), np.array([]), True) == 0.0


def test_ground_truth_as_detections_and_outputs(tmp_path) -> None:
    rng = np.random.default_rng(0)
    records = []
    for i in range(4):
        xy = rng.uniform(0, 200, (5, 2))
        wh = rng.uniform(5, 80, (5, 2))
        diff = rng.random(5) < 0.2
        boxes = np.concatenate([xy, xy + wh], 1)
        records.append(
            DetectionRecord(f"{i}.jpg", i, 300, 300, boxes, rng.integers(0, 3, 5), difficult=diff)
        )
    meta = DatasetMeta("gt", ["a", "b", "c", "never"], evaluator="voc")
    ev = VOCEvaluator(records, meta, str(tmp_path))
    ev.process(
        [
            {
                "image_id": torch.tensor(r.image_id),
                "boxes": torch.from_numpy(r.boxes),
                "scores": torch.rand(len(r.boxes), generator=torch.Generator().manual_seed(i)),
                "labels": torch.from_numpy(r.labels),
            }
            for i, r in enumerate(records)
        ]
    )
    m = ev.evaluate()
    assert m["mAP07"] == pytest.approx(1.0) and m["mAP"] == pytest.approx(1.0)
    assert math.isnan(m["per_class"]["never"]["ap"])  # no gt: nan, not in the mean
    saved = json.loads((tmp_path / "voc_metrics.json").read_text())
    assert saved["mAP"] == pytest.approx(1.0) and saved["per_class"]["never"]["ap07"] is None
    table = (tmp_path / "voc_per_class.md").read_text()
    assert "| a | 100.00 | 100.00 |" in table and "| never | nan | nan |" in table


def test_empty_detections_and_bad_input() -> None:
    records, _ = _hand_case(g4_difficult=True)
    meta = DatasetMeta("hand", ["car", "bus"], evaluator="voc")
    ev = VOCEvaluator(records, meta)
    ev.process([_det(0, np.zeros((0, 4)), [], []), _det(1, np.zeros((0, 4)), [], [])])
    m = ev.evaluate()
    assert m["per_class"]["car"] == {"ap07": 0.0, "ap": 0.0}
    assert m["mAP"] == 0.0 and math.isnan(m["per_class"]["bus"]["ap"])
    assert VOCEvaluator(records, meta).evaluate()["mAP07"] == 0.0  # nothing processed

    with pytest.raises(DatasetError, match="image id 0: label 5"):
        ev.process([_det(0, [[0, 0, 1, 1]], [0.5], [5])])
    ev.process([_det(42, [[0, 0, 1, 1]], [0.5], [0])])
    with pytest.raises(DatasetError, match="image id 42"):
        ev.evaluate()


def _devkit_reference(records, dets, c):
    """Line-by-line port of py-faster-rcnn's voc_eval loop (continuous IoU, no +1)."""
    gts = {}
    npos = 0
    for r in records:
        m = r.labels == c
        gts[r.image_id] = {
            "bbox": r.boxes[m].astype(float),
            "difficult": r.difficult[m],
            "det": [False] * int(m.sum()),
        }
        npos += int((~r.difficult[m]).sum())
    ids, conf, bb = [], [], []
    for d in dets:
        m = d["labels"] == c
        ids += [d["image_id"]] * int(m.sum())
        conf += d["scores"][m].tolist()
        bb += d["boxes"][m].astype(float).tolist()
    order = np.argsort(-np.array(conf), kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for k, i in enumerate(order):
        R = gts[ids[i]]
        b = np.array(bb[i])
        ovmax = -np.inf
        g = R["bbox"]
        if g.size > 0:
            iw = np.maximum(np.minimum(g[:, 2], b[2]) - np.maximum(g[:, 0], b[0]), 0.0)
            ih = np.maximum(np.minimum(g[:, 3], b[3]) - np.maximum(g[:, 1], b[1]), 0.0)
            inters = iw * ih
            uni = (b[2] - b[0]) * (b[3] - b[1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inters
            ov = inters / uni
            ovmax, jmax = np.max(ov), np.argmax(ov)
        if ovmax > 0.5:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[k] = 1.0
                    R["det"][jmax] = True
                else:
                    fp[k] = 1.0
        else:
            fp[k] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, True), voc_ap(rec, prec, False)


def test_matches_devkit_loop_on_random_data() -> None:
    # Clustered boxes and jittered copies produce duplicates, misses, difficult hits and ties.
    rng = np.random.default_rng(1)
    records, dets = [], []
    for i in range(12):
        n = int(rng.integers(0, 7))
        xy = rng.uniform(0, 60, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(10, 40, (n, 2))], 1)
        labels = rng.integers(0, 2, n)
        records.append(
            DetectionRecord(
                f"{i}.jpg", 100 + i, 128, 128, gt, labels, difficult=rng.random(n) < 0.3
            )
        )
        k = int(rng.integers(0, 10))
        src = rng.integers(0, max(n, 1), k)
        boxes = gt[src] + rng.normal(0, 4, (k, 4)) if n else rng.uniform(0, 100, (k, 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = np.round(rng.random(k), 1)  # coarse scores: many ties
        dets.append(_det(100 + i, boxes, scores, rng.integers(0, 2, k)))
    ev = VOCEvaluator(records, DatasetMeta("rand", ["x", "y"], evaluator="voc"))
    ev.process(dets)
    m = ev.evaluate()
    for c, name in enumerate(["x", "y"]):
        ap07, ap = _devkit_reference(records, dets, c)
        assert m["per_class"][name]["ap07"] == pytest.approx(ap07)
        assert m["per_class"][name]["ap"] == pytest.approx(ap)
        assert 0.0 < ap < 1.0  # the data really exercises partial matches


def _dist_worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    records, dets = _hand_case(g4_difficult=True)
    ev = VOCEvaluator(records, DatasetMeta("hand", ["car"], evaluator="voc"))
    # Rank 1 also repeats image 0, as DistributedSampler's padding does: counted once.
    ev.process([dets[0]] if rank == 0 else [dets[1], dets[0]])
    m = ev.evaluate()
    torch.save(m, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_distributed_gather_to_rank0(tmp_path) -> None:
    out = str(tmp_path / "m")
    # fork: the children need not re-import torch (no CUDA is initialized in tests).
    mp.start_processes(
        _dist_worker, args=(str(tmp_path / "init"), out), nprocs=2, start_method="fork"
    )
    m0 = torch.load(f"{out}.0", weights_only=False)
    assert m0["per_class"]["car"]["ap07"] == pytest.approx(6 / 11)
    assert m0["per_class"]["car"]["ap"] == pytest.approx(5 / 9)
    assert torch.load(f"{out}.1") == {}
