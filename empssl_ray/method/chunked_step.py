"""A training step over more patches than fit in memory at once (the gradient-cache technique).

The TCR term needs the embeddings of all n x B patches together, so a step cannot simply
accumulate gradients chunk by chunk. Instead: forward every chunk without a graph, take the
loss and its gradient with respect to the embeddings z (small: n x B x d), then forward each
chunk again with a graph and back-propagate its slice of that gradient. Peak activation memory
is one chunk's; the compute is one extra forward.

Batch norm: each chunk's forward normalises over that chunk's patches (a "ghost batch" of
`chunk` patches, as a data-parallel worker without SyncBatchNorm normalises over its share),
where the one-pass step normalises over all n x B. Both passes of a chunk use the same batch
statistics, so the gradients are exact for that normalisation; the running statistics are
updated once per chunk (first pass), never twice. `patches.chunk=off` keeps the reference's
statistics over the whole step. With normalisation that does not couple patches (none, group
or layer norm, batch norm in eval mode) the gradients equal the one-pass step's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from empssl_ray.rules import parse_chunk

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
MEMORY_SHARE = 0.5  # of the free memory the planner lets one chunk's activations use


def resolve_chunk(
    setting: str | int, model: nn.Module, in_channels: int, size: int, device: torch.device
) -> tuple[int, str | None]:
    """`patches.chunk` as the most patches per forward (0: one pass) and the line that says so
    (None when off)."""
    chunk = parse_chunk(setting)
    if chunk == "auto":
        return plan_chunk(model, in_channels, size, device, None)
    if chunk == 0:
        return 0, None
    return int(chunk), (
        f"patches.chunk={chunk}: at most {chunk:,} patches per forward; steps with more "
        "patches use the gradient cache (two forwards, batch norm per chunk)"
    )


def chunked_loss_backward(
    net: nn.Module, x: torch.Tensor, views: int, loss_fn: LossFn, chunk: int, autocast: bool
) -> dict[str, torch.Tensor]:
    """Loss of all patches and its gradients in the parameters, `chunk` patches per forward.

    Args:
        net: the model (or its DDP wrapper); its output has `.z`.
        x: (n * B, C, S, S) normalised patches, view-major.
        views: n.
        loss_fn: z (n, B, d) float32 -> (loss, parts).
        chunk: most patches per forward.
        autocast: bf16 autocast for the model.

    Returns:
        The loss parts (detached); `.grad` of every parameter holds the step's gradient.
    """
    device = x.device.type
    runs = [(s, min(len(x), s + chunk)) for s in range(0, len(x), chunk)]
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        z = torch.cat([net(x[s:e]).z.float() for s, e in runs])
    z = z.requires_grad_()
    loss, parts = loss_fn(z.view(views, len(x) // views, -1))
    (grad,) = torch.autograd.grad(loss, z)
    with _running_stats_frozen(net):
        for i, (s, e) in enumerate(runs):
            with _no_sync_unless_last(net, i == len(runs) - 1):
                with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                    z_chunk = net(x[s:e]).z.float()
                z_chunk.backward(grad[s:e])
    return parts


@contextmanager
def _running_stats_frozen(net: nn.Module) -> Any:
    """Batch norms keep normalising by batch statistics but leave their running statistics
    (already updated by the first pass) alone."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
        if m.num_batches_tracked is not None:
            m.num_batches_tracked = m.num_batches_tracked.clone()
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum, m.num_batches_tracked = momentum, tracked


@contextmanager
def _no_sync_unless_last(net: nn.Module, last: bool) -> Any:
    """DDP all-reduces gradients on the last chunk's backward only (one all-reduce a step)."""
    no_sync = getattr(net, "no_sync", None)
    if no_sync is None or last:
        yield
    else:
        with no_sync():
            yield


def plan_chunk(
    model: nn.Module, in_channels: int, size: int, device: torch.device, free_bytes: int | None
) -> tuple[int, str]:
    """The most patches per forward whose activations fit in MEMORY_SHARE of free memory.

    Activation memory per patch is measured, not guessed: the bytes of every module output in a
    one-patch forward (what autograd keeps for the backward), twice over for the gradients.

    Returns:
        (patches per forward, a line saying how it was chosen).
    """
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(
            lambda _m, _i, out: (
                sizes.append(out.numel() * out.element_size())
                if isinstance(out, torch.Tensor)
                else None
            )
        )
        for m in model.modules()
        if not list(m.children())
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            model(torch.zeros(1, in_channels, size, size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    per_patch = 2 * sum(sizes)
    free = free_bytes if free_bytes is not None else free_memory(device)
    chunk = max(1, int(MEMORY_SHARE * free // per_patch))
    why = (
        f"patches.chunk=auto: at most {chunk:,} patches per forward ({per_patch / 2**20:.2f} MiB "
        f"of activations a {size} px patch, {free / 2**30:.1f} GiB free on {device.type}); "
        "steps with more patches use the gradient cache (two forwards)"
    )
    return chunk, why


def free_memory(device: torch.device) -> int:
    """Bytes free on the device: CUDA's own count, else the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
