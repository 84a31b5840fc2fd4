"""resdet.engine.dist helpers across two real (gloo, forked) processes."""

from __future__ import annotations

import json

import torch.distributed as dist
import torch.multiprocessing as mp

from resdet.engine.dist import check_same_on_all_ranks


def _worker(rank: int, init_file: str, out_dir: str, values) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        check_same_on_all_ranks(values[rank], "the iteration to start from")
        outcome = "ok"
    except RuntimeError as e:
        outcome = str(e)
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(outcome, f)
    dist.destroy_process_group()


def _run(tmp_path, values):
    mp.start_processes(
        _worker, args=(str(tmp_path / "init"), str(tmp_path), values), nprocs=2,
        start_method="fork",
    )  # fmt: skip
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_ranks_that_agree_pass(tmp_path) -> None:
    assert _run(tmp_path, [40, 40]) == ["ok", "ok"]


def test_ranks_that_disagree_fail_on_every_rank(tmp_path) -> None:
    # e.g. one node resumed from iteration 40 and the other saw no checkpoint
    outcomes = _run(tmp_path, [40, 0])
    for msg in outcomes:
        assert "ranks disagree on the iteration to start from: [40, 0]" in msg
        assert "OUTPUT_DIR" in msg


def test_single_process_is_a_no_op() -> None:
    check_same_on_all_ranks(7, "anything")
