"""LARS around Nesterov SGD, and the per-step cosine schedule.

LARS scales each weight matrix's step by eta * ||w|| / (||g|| + wd ||w||) so that layers of very
different scale learn at comparable relative speeds with the large effective batches EMP-SSL
uses (B images x n patches). Biases and norm parameters (1-D) skip both the trust ratio and the
weight decay: their scale carries no such meaning and decaying them hurts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from empssl_ray.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum (optionally Nesterov) and layer-wise adaptive rate scaling.

    Args:
        params: parameters or parameter groups; groups may set `lars=False` to opt out.
        lr: learning rate.
        momentum: momentum factor.
        weight_decay: L2 added to the gradient of LARS parameters.
        eta: trust coefficient.
        nesterov: Nesterov momentum.
        clip: clip the trust ratio so the adapted rate never exceeds lr (the "clipped" LARS).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.005,
        nesterov: bool = True,
        clip: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            nesterov=nesterov,
            clip=clip,
            lars=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["lars"] and p.ndim > 1:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    trust = group["eta"] * p_norm / (g_norm + group["weight_decay"] * p_norm)
                    # A zero weight or gradient has no scale to trust: keep the plain rate.
                    trust = torch.where((p_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    if group["clip"] and lr > 0:
                        trust = torch.clamp(trust / lr, max=1.0)
                    d_p = d_p.mul(trust)
                if mu:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.clone()
                    else:
                        buf.mul_(mu).add_(d_p)
                    d_p = d_p.add(buf, alpha=mu) if group["nesterov"] else buf
                p.add_(d_p, alpha=-lr)
        return loss


def param_groups(model: nn.Module) -> list[dict]:
    """Weights get LARS and weight decay; biases and norm parameters (1-D) get neither."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1], "lars": False, "weight_decay": 0.0},
    ]


def cosine_lr(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then cosine from 1 to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[LARS, torch.optim.lr_scheduler.LambdaLR]:
    """LARS-wrapped Nesterov SGD and its cosine schedule (call scheduler.step() every step)."""
    opt = LARS(
        param_groups(model),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        eta=cfg.lars_eta,
        nesterov=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, total_steps, cfg.warmup_steps)
    )
    return opt, sched


def run_steps(cfg: OptimConfig, steps_per_epoch: int) -> int:
    """Steps the run trains: `max_steps` when set (a sweep's equal budget), else `epochs`
    epochs of `steps_per_epoch`."""
    return cfg.max_steps or cfg.epochs * steps_per_epoch


def run_epochs(cfg: OptimConfig, steps_per_epoch: int) -> int:
    """Epochs the run begins: `run_steps` in epochs, the last one possibly cut short."""
    return -(-run_steps(cfg, steps_per_epoch) // steps_per_epoch)


def schedule_steps(cfg: OptimConfig, steps_per_epoch: int) -> int:
    """Steps the cosine spans: `schedule_epochs` epochs of `steps_per_epoch` when set, else the
    run's own steps (`run_steps`)."""
    if cfg.schedule_epochs:
        return cfg.schedule_epochs * steps_per_epoch
    return run_steps(cfg, steps_per_epoch)
