"""Two gloo processes with the gather match one process holding the whole batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from empssl_ray.method.gather import gather_batch
from empssl_ray.method.loss import EMPSSLLoss, total_coding_rate

WORLD = 2


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    raw = torch.randn(4, 12, 16, dtype=torch.float64)
    weight = torch.randn(16, 16, dtype=torch.float64)
    return raw, weight


def _loss_and_grads(
    raw: torch.Tensor, weight: torch.Tensor, gather
) -> tuple[float, torch.Tensor, torch.Tensor]:
    raw = raw.clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    z = F.normalize(raw @ weight, dim=-1)
    loss, _ = EMPSSLLoss(eps=0.2, gather=gather)(z)
    loss.backward()
    assert raw.grad is not None and weight.grad is not None
    return loss.item(), raw.grad, weight.grad


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    raw, weight = _inputs()
    part = raw[:, :6] if rank == 0 else raw[:, 6:]
    loss, raw_grad, weight_grad = _loss_and_grads(part, weight, gather_batch)
    # What DDP does to parameter gradients: average over ranks. Loss values: average too.
    dist.all_reduce(weight_grad)
    loss_t = torch.tensor([loss], dtype=torch.float64)
    dist.all_reduce(loss_t)
    # An uneven split (7 + 5 images) exercises the gather's padding: TCR still sees all 12.
    part = raw[:, :7] if rank == 0 else raw[:, 7:]
    gathered = gather_batch(part, uneven=True)
    tcr = total_coding_rate(F.normalize(gathered @ weight, dim=-1)).mean().item()
    # numpy, not tensors: torch would share tensor storage that dies with this process.
    queue.put(
        (
            rank,
            loss_t.item() / WORLD,
            (raw_grad / WORLD).numpy(),
            (weight_grad / WORLD).numpy(),
            tcr,
        )
    )
    dist.destroy_process_group()


def test_gathered_loss_and_gradients_match_single_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results: dict[int, tuple[float, torch.Tensor, torch.Tensor, float]] = {}
    for _ in range(WORLD):
        rank, rank_loss, rank_raw_grad, rank_weight_grad, rank_tcr = queue.get(timeout=120)
        results[rank] = (
            rank_loss,
            torch.as_tensor(rank_raw_grad),
            torch.as_tensor(rank_weight_grad),
            rank_tcr,
        )
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    raw, weight = _inputs()
    loss, raw_grad, weight_grad = _loss_and_grads(raw, weight, None)
    for rank in range(WORLD):
        got_loss, _, got_weight_grad, got_tcr = results[rank]
        assert abs(got_loss - loss) < 1e-9 * abs(loss)
        full_tcr = total_coding_rate(F.normalize(raw @ weight, dim=-1)).mean().item()
        assert abs(got_tcr - full_tcr) < 1e-9 * full_tcr
        torch.testing.assert_close(got_weight_grad, weight_grad, rtol=1e-7, atol=1e-12)
    got_raw = torch.cat([results[0][1], results[1][1]], dim=1)
    torch.testing.assert_close(got_raw, raw_grad, rtol=1e-7, atol=1e-12)

    # Without the gather each rank's TCR sees half the batch: the loss differs. This is what
    # makes the test able to fail if the gather were dropped.
    half_loss, _, _ = _loss_and_grads(raw[:, :6], weight, None)
    assert abs(half_loss - loss) > 1e-3
