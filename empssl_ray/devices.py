"""Device choices and transfers shared by the trainer, the evaluation and the GPU script.

Nothing here waits for the device: constants are built once per device instead of copied from
the host at every call, and host-to-GPU copies come from pinned memory so they can overlap.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch


def device_for_reserved_gpus(gpu_ids: Sequence[object], cuda_available: bool) -> torch.device:
    """The device an actor computes on, given the GPUs Ray reserved for it.

    Seeing a GPU is not owning it: Ray no longer hides GPUs from actors that reserved none, so an
    actor must not pick CUDA by `torch.cuda.is_available()` alone. Ray points
    CUDA_VISIBLE_DEVICES at the reserved GPUs, so the first of them is cuda:0.

    Args:
        gpu_ids: what `ray.get_gpu_ids()` returns in the actor (empty: no GPU reserved).
        cuda_available: `torch.cuda.is_available()`.

    Returns:
        cuda:0 when a GPU was reserved, else cpu.
    """
    if not gpu_ids:
        return torch.device("cpu")
    if not cuda_available:
        raise RuntimeError(
            f"Ray reserved GPU(s) {list(gpu_ids)} for this actor but torch sees no CUDA device: "
            "is the node's driver or torch build CPU-only?"
        )
    return torch.device("cuda", 0)


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """x on `device`; a host tensor bound for a GPU is pinned first so the copy is asynchronous.

    A non_blocking copy from pageable host memory is staged synchronously and overlaps nothing.
    """
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


@functools.cache
def device_constant(
    values: tuple[float, ...], device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A 1-D constant on `device`, built once per (values, device, dtype); never modify it.

    `torch.tensor(..., device=cuda)` at every call is a host-to-device copy, and the host waits
    for the copy, and so for all queued GPU work, each time.
    """
    return torch.tensor(values, dtype=dtype, device=device)
