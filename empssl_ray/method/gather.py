"""The one cross-worker operation EMP-SSL needs: gather embeddings with gradients.

TCR is a property of the whole batch: computed on each worker's slice alone, both its value and
its optimum change with the number of workers. Gathering fixes the value; the backward below
fixes the gradients (no Ray here: plain torch.distributed, any backend).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class _GatherBatch(torch.autograd.Function):
    """all_gather along dim 1 whose backward returns each rank the gradient of its own slice.

    Every rank computes the same loss on the gathered tensor, so the true gradient of a slice is
    the sum over ranks of their gradients for it: all_reduce(SUM), then keep our slice. DDP later
    averages parameter gradients over k ranks, which cancels the k-fold sum for the TCR term and
    leaves exactly the single-process gradient (tests/test_distributed_loss.py checks this).
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, uneven: bool) -> torch.Tensor:
        world = dist.get_world_size()
        if uneven:
            # Slice sizes from every rank: reading them makes the host wait for the device.
            sizes = torch.tensor([z.shape[1]], device=z.device)
            all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
            dist.all_gather(all_sizes, sizes)
            ctx.sizes = [int(s.item()) for s in all_sizes]
        else:
            ctx.sizes = [z.shape[1]] * world
        ctx.rank = dist.get_rank()
        biggest = max(ctx.sizes)  # uneven slices are padded to the largest
        padded = z.new_zeros(z.shape[0], biggest, *z.shape[2:])
        padded[:, : z.shape[1]] = z
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:, :s] for p, s in zip(parts, ctx.sizes, strict=True)], dim=1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[:, start : start + ctx.sizes[ctx.rank]], None


def gather_batch(z: torch.Tensor, uneven: bool = False) -> torch.Tensor:
    """Concatenates every rank's z along the batch dim, keeping gradients.

    Training gives every rank batch_size // world images (the last partial batch is dropped),
    so by default the slices are taken to be equal and nothing is read on the host; a rank
    whose slice differs then fails in the collective. `uneven=True` exchanges the sizes first.

    Args:
        z: (n, B_local, d) on this rank.
        uneven: ranks may hold different B_local.

    Returns:
        (n, B_global, d), ranks in order; identity when torch.distributed is not running.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    return _GatherBatch.apply(z, uneven)
