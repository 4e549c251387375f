"""LARS trust ratios, exclusions, and the cosine schedule."""

import math

import pytest
import torch
from torch import nn

from empssl_ray.config import OptimConfig
from empssl_ray.method.optim import (
    LARS,
    build_optimizer,
    cosine_lr,
    param_groups,
    run_epochs,
    run_steps,
    schedule_steps,
)


def test_lars_scales_weight_step_by_trust_ratio_and_skips_bias() -> None:
    layer = nn.Linear(4, 3)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    layer.weight.grad = torch.full_like(layer.weight, 0.5)
    layer.bias.grad = torch.full_like(layer.bias, 0.5)
    lr, eta, wd = 0.1, 0.02, 1e-3
    opt = LARS(param_groups(layer), lr=lr, momentum=0.0, weight_decay=wd, eta=eta)
    opt.step()
    g = layer.weight.grad
    trust = eta * w0.norm() / (g.norm() + wd * w0.norm())
    trust = min(trust.item() / lr, 1.0)
    torch.testing.assert_close(layer.weight, w0 - lr * trust * (g + wd * w0))
    torch.testing.assert_close(layer.bias, b0 - lr * 0.5)  # plain SGD: no trust ratio, no decay


def test_clip_keeps_adapted_rate_at_most_lr() -> None:
    """A tiny gradient's raw trust ratio (eta ||w|| / ||g||, about 100 here) is clipped to 1: the
    step is exactly lr x g. Compared as the step itself in float64, so that no step, a reversed
    step or an unclipped one (100x) cannot pass within the tolerance."""
    layer = nn.Linear(4, 3, bias=False).double()
    w0 = layer.weight.detach().clone()
    layer.weight.grad = torch.full_like(layer.weight, 1e-3)  # tiny gradient: huge raw trust ratio
    assert 1.0 * w0.norm() / layer.weight.grad.norm() > 50  # the ratio the clip must cap
    LARS(layer.parameters(), lr=0.1, momentum=0.0, eta=1.0).step()
    step = w0 - layer.weight.detach()
    torch.testing.assert_close(step, torch.full_like(step, 1e-4), rtol=1e-9, atol=0.0)


def test_nesterov_momentum_accumulates() -> None:
    p = nn.Parameter(torch.zeros(3))  # 1-D: plain SGD path
    opt = LARS([{"params": [p], "lars": False}], lr=1.0, momentum=0.9)
    for _ in range(2):
        p.grad = torch.ones(3)
        opt.step()
    # step 1: buf = 1, d = 1 + 0.9 = 1.9; step 2: buf = 1.9, d = 1 + 0.9 * 1.9 = 2.71
    torch.testing.assert_close(p.detach(), torch.full((3,), -(1.9 + 2.71)))


def test_cosine_schedule_per_step() -> None:
    assert cosine_lr(0, 100) == 1.0 and cosine_lr(100, 100) == pytest.approx(0.0)
    assert cosine_lr(50, 100) == pytest.approx(0.5)
    assert cosine_lr(0, 100, warmup_steps=10) == pytest.approx(0.1)
    model = nn.Linear(2, 2)
    opt, sched = build_optimizer(model, OptimConfig(lr=0.3), total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.3 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])


def test_a_run_of_max_steps_cuts_its_last_epoch_and_its_schedule_ends_there() -> None:
    """A sweep's equal budget: 20 steps of 8-step epochs is 3 epochs, the third cut at step 20,
    and the cosine spans the 20 steps (schedule_epochs, when set, still wins)."""
    assert (run_steps(OptimConfig(epochs=2), 8), run_epochs(OptimConfig(epochs=2), 8)) == (16, 2)
    cut = OptimConfig(epochs=2, max_steps=20)
    assert (run_steps(cut, 8), run_epochs(cut, 8), schedule_steps(cut, 8)) == (20, 3, 20)
    assert schedule_steps(OptimConfig(epochs=2, max_steps=20, schedule_epochs=30), 8) == 240
    assert cosine_lr(20, schedule_steps(cut, 8)) == 0.0  # the last step's lr reaches zero
