"""Top-k errors and the accumulating meter, including the cross-rank sum."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from resdet.evaluation.classification import ClassificationMeter, topk_errors

# Four samples, six classes. Class ranking per row (best first):
#   row 0: 2 5 1 0 4 3   target 2 -> top-1 hit
#   row 1: 0 1 2 3 4 5   target 4 -> rank 5: top-5 hit, top-1 miss
#   row 2: 5 4 3 2 1 0   target 0 -> rank 6: miss for both
#   row 3: 3 0 1 2 4 5   target 1 -> rank 3: top-5 hit
LOGITS = torch.tensor(
    [
        [0.3, 0.4, 0.9, 0.0, 0.2, 0.5],
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [0.8, 0.7, 0.6, 0.9, -1.0, -2.0],
    ]
)
TARGETS = torch.tensor([2, 4, 0, 1])


def test_topk_errors_hand_case() -> None:
    err = topk_errors(LOGITS, TARGETS)
    assert err == pytest.approx({"top1_err": 3 / 4, "top5_err": 1 / 4})
    assert topk_errors(LOGITS, TARGETS, ks=(2, 3)) == pytest.approx(
        {"top2_err": 3 / 4, "top3_err": 2 / 4}
    )


def test_topk_clamps_to_number_of_classes() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    err = topk_errors(logits, torch.tensor([2, 0]))
    assert err == pytest.approx({"top1_err": 0.5, "top5_err": 0.0})


def test_bad_shapes_and_targets_raise() -> None:
    with pytest.raises(ValueError, match=r"targets must lie in 0..5"):
        topk_errors(LOGITS, torch.tensor([0, 1, 2, 6]))
    with pytest.raises(ValueError, match="shape"):
        topk_errors(LOGITS, TARGETS[:3])


def test_meter_sums_counts_not_batch_means() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(37, 10), torch.randint(0, 10, (37,))
    meter = ClassificationMeter()
    # Uneven batches: averaging per-batch errors would be wrong, summing counts is exact.
    for sl in (slice(0, 32), slice(32, 37)):
        meter.update(logits[sl], targets[sl])
    assert meter.compute() == pytest.approx(topk_errors(logits, targets))
    assert meter.compute() == pytest.approx(topk_errors(logits, targets))  # idempotent
    meter.reset()
    meter.update(LOGITS, TARGETS)
    assert meter.compute() == pytest.approx({"top1_err": 3 / 4, "top5_err": 1 / 4})


def _worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    meter = ClassificationMeter()
    meter.update(LOGITS[rank * 2 : rank * 2 + 2], TARGETS[rank * 2 : rank * 2 + 2])
    result = meter.compute()
    if rank == 0:
        torch.save(result, out_file)
    dist.destroy_process_group()


def test_meter_all_reduce_across_two_ranks(tmp_path) -> None:
    # Rank 0 sees rows 0-1 (top-1 err 1/2), rank 1 rows 2-3 (top-1 err 1): the global
    # answer must be the full hand case, not either rank's own.
    out = tmp_path / "result.pt"
    # fork, not spawn: children skip re-importing torch (seconds each on 2 cores); no CUDA here.
    mp.start_processes(
        _worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, start_method="fork"
    )
    assert torch.load(out) == pytest.approx({"top1_err": 3 / 4, "top5_err": 1 / 4})
