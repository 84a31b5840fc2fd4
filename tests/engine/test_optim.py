"""Parameter groups and per-iteration LR schedules (warm-up, steps, cosine, plateau, ResNet-110)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn as nn

from resdet.config import load_config
from resdet.engine.optim import (
    PlateauLR,
    WarmupUntilTrainError,
    build_lr_scheduler,
    build_optimizer,
)


def _cfg(**solver):
    opts = []
    for k, v in solver.items():
        opts += [f"SOLVER.{k}", str(v)]
    return load_config(None, opts)


def _lrs(scheduler, optimizer, n):
    """The lr used by iterations 0..n-1 (read before each step, as the loop does)."""
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_exempt_norm_and_bias_and_skip_frozen():
    torch.manual_seed(0)
    net = _Net()
    cfg = _cfg(
        WEIGHT_DECAY=0.1, WEIGHT_DECAY_NORM=0.0, WEIGHT_DECAY_BIAS=0.0, MOMENTUM=0.0, BASE_LR=1.0
    )
    opt = build_optimizer(cfg, net)
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert by_id[id(net.conv.weight)] == 0.1 and by_id[id(net.fc.weight)] == 0.1
    assert by_id[id(net.bn.weight)] == 0.0 and by_id[id(net.bn.bias)] == 0.0
    assert by_id[id(net.fc.bias)] == 0.0
    assert id(net.frozen.weight) not in by_id and id(net.frozen.bias) not in by_id

    # With zero gradients only weight decay moves parameters: decayed ones shrink by lr*wd.
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(net.conv.weight, before["conv.weight"] * 0.9)
    assert torch.equal(net.bn.weight, before["bn.weight"])
    assert torch.equal(net.fc.bias, before["fc.bias"])


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_optimizers_take_the_fused_step_and_match_the_reference(name):
    # build_optimizer asks for torch's fused kernel on CPU (one pass per step); its updates are
    # the reference (per-parameter) implementation's within float rounding, NESTEROV included.
    torch.manual_seed(0)
    net = _Net()
    cfg = _cfg(OPTIMIZER=name, BASE_LR=0.01, WEIGHT_DECAY=0.1, NESTEROV=name == "SGD")
    opt = build_optimizer(cfg, net)
    assert all(g["fused"] for g in opt.param_groups)
    ref_net = copy.deepcopy(net)
    ref = type(opt)([dict(g, params=[dict(ref_net.named_parameters())[n] for n in names])
                     for g, names in zip(opt.param_groups, _group_names(net, opt))],
                    fused=False, foreach=False)  # fmt: skip
    start = [p.detach().clone() for p in net.parameters()]
    for step in range(3):
        for p, q in zip(net.parameters(), ref_net.parameters()):
            p.grad = torch.full_like(p, 0.1 * (step + 1)) + p.detach() * 0.01
            q.grad = torch.full_like(q, 0.1 * (step + 1)) + q.detach() * 0.01
        opt.step()
        ref.step()
    for (n, p), q, p0 in zip(net.named_parameters(), ref_net.parameters(), start):
        torch.testing.assert_close(p, q, msg=n)
        assert p.requires_grad != torch.equal(p, p0), n  # trained ones moved, frozen ones not


def _group_names(net, opt):
    names = {id(p): n for n, p in net.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in opt.param_groups]


def test_norm_weight_decay_gets_its_own_value():
    cfg = _cfg(WEIGHT_DECAY=1e-4, WEIGHT_DECAY_NORM=1e-5, WEIGHT_DECAY_BIAS=1e-3)
    net = _Net()
    opt = build_optimizer(cfg, net)
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert by_id[id(net.bn.weight)] == 1e-5
    assert by_id[id(net.fc.bias)] == 1e-3
    assert isinstance(opt, torch.optim.SGD)
    assert isinstance(build_optimizer(_cfg(OPTIMIZER="AdamW"), net), torch.optim.AdamW)


def test_warmup_then_multistep_values():
    cfg = _cfg(BASE_LR=0.1, WARMUP_ITERS=10, WARMUP_FACTOR=0.001, STEPS="[20, 30]", GAMMA=0.1)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    lrs = _lrs(build_lr_scheduler(cfg, opt, 40), opt, 40)
    assert lrs[0] == pytest.approx(0.1 * 0.001)
    assert lrs[5] == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))
    assert lrs[10] == pytest.approx(0.1) and lrs[19] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.01) and lrs[29] == pytest.approx(0.01)
    assert lrs[30] == pytest.approx(0.001) and lrs[39] == pytest.approx(0.001)


def test_cosine_values():
    cfg = _cfg(BASE_LR=0.2, WARMUP_ITERS=0, LR_SCHEDULER="cosine")
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    lrs = _lrs(build_lr_scheduler(cfg, opt, 100), opt, 100)
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[50] == pytest.approx(0.1)
    assert lrs[25] == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_linear_values_with_warmup():
    cfg = _cfg(BASE_LR=0.2, WARMUP_ITERS=10, WARMUP_FACTOR=0.1, LR_SCHEDULER="linear")
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    lrs = _lrs(build_lr_scheduler(cfg, opt, 100), opt, 100)
    assert lrs[0] == pytest.approx(0.2 * 0.1)  # warm-up times the line's 1.0
    assert lrs[5] == pytest.approx(0.2 * (0.1 * 0.5 + 0.5) * 0.95)
    assert lrs[50] == pytest.approx(0.1) and lrs[75] == pytest.approx(0.05)
    assert lrs[99] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))  # after warm-up: falls every step


def test_unknown_schedule_names_the_choices():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="'multistep', 'cosine', 'linear' or 'plateau'"):
        build_lr_scheduler(_cfg(LR_SCHEDULER="triangle"), opt, 10)


def test_scheduler_state_loads_with_weights_only_and_continues():
    cfg = _cfg(BASE_LR=0.1, WARMUP_ITERS=0, STEPS="[5]")
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_lr_scheduler(cfg, opt, 10)
    _lrs(sched, opt, 4)
    buf = io.BytesIO()
    torch.save({"s": sched.state_dict(), "o": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = build_lr_scheduler(cfg, opt2, 10)
    opt2.load_state_dict(state["o"])
    sched2.load_state_dict(state["s"])
    assert _lrs(sched2, opt2, 3) == pytest.approx([0.1, 0.01, 0.01])


def test_plateau_divides_after_patience_bad_evaluations():
    cfg = _cfg(BASE_LR=0.1, WARMUP_ITERS=0, LR_SCHEDULER="plateau", PLATEAU_PATIENCE=3)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_lr_scheduler(cfg, opt, 1000)
    assert isinstance(sched, PlateauLR)
    for err in (0.5, 0.4, 0.45, 0.41):  # best 0.4, then two bad evaluations
        sched.step()
        sched.report(err)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    sched.report(0.40)  # equal is not better: third bad evaluation
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    sched.step()  # steps keep the reduced lr
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)

    state = sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = build_lr_scheduler(cfg, opt2, 1000)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)
    for err in (0.39, 0.5, 0.5, 0.5):  # improvement resets the count; 3 bad -> 0.001
        sched2.report(err)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.001)


def test_warmup_until_train_error_uses_small_lr_until_running_error_drops():
    cfg = _cfg(
        BASE_LR=0.1,
        WARMUP_ITERS=0,
        STEPS="[1000]",
        WARMUP_UNTIL_TRAIN_ERR=0.8,
        WARMUP_UNTIL_ERR_FACTOR=0.1,
    )
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_lr_scheduler(cfg, opt, 2000)
    assert isinstance(sched, WarmupUntilTrainError)
    window = sched.window
    for _ in range(3 * window):  # error stays at 0.9: still warming up
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
        opt.step()
        sched.step()
        sched.report_train_error(0.9)
    for i in range(window):  # the running mean crosses 0.8 only once the window is mostly low
        sched.report_train_error(0.5)
        running = (0.5 * (i + 1) + 0.9 * (window - i - 1)) / window
        expected = 0.1 if running < 0.8 else 0.01
        assert opt.param_groups[0]["lr"] == pytest.approx(expected), i
    assert sched.reached
    sched.report_train_error(0.99)  # latched: later errors do not bring the warm-up back
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)

    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = build_lr_scheduler(cfg, opt2, 2000)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)


def test_unknown_names_are_clear_errors():
    net = _Net()
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="Adagrad"), net)
    opt = torch.optim.SGD(net.fc.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="LR_SCHEDULER"):
        build_lr_scheduler(_cfg(LR_SCHEDULER="poly"), opt, 10)
