"""Benchmark: total coding rate (TCR) forward + backward, the core's batched B x B Gram + Cholesky
against the paper's per-view d x d formula.

Both sides are timed interleaved (ref, ours, ref, ours, ...) in one run, so that load from other
work on a shared machine hits both alike; the ratio of the medians is the number to read.

    .venv/bin/python bench/tcr.py [--threads 1] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from empssl_ray.method.loss import total_coding_rate

GOAL = 20.0  # the speed-up the core's TCR should reach over the per-view d x d formula
EPS = 0.2
# float32 logdet of a d x d matrix against a B x B Cholesky: agreement well inside these.
VALUE_TOL, GRAD_TOL = 1e-3, 1e-2


def reference_tcr(z: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The paper's formula, view by view: R(Z) = 1/2 logdet(I_d + d/(B eps) Z^T Z). z: (n, B, d).

    Also the reference tests/test_loss.py holds the core's `total_coding_rate` to.
    """
    _, b, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    return torch.stack([0.5 * torch.logdet(eye + d / (b * eps) * zi.T @ zi) for zi in z])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fwd_bwd(
    fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, keep: dict[str, torch.Tensor]
) -> None:
    """One training-like step of the loss term: forward, mean over views, backward.

    Keeps the last values and gradient in `keep`, so the agreement check needs no extra call
    (an n=200 reference call costs tens of seconds on one core).
    """
    z.grad = None
    out = fn(z)
    out.mean().backward()
    keep["value"], keep["grad"] = out.detach(), z.grad  # type: ignore[assignment]


def _time_once(fn: Callable[[], None], device: torch.device, inner: int) -> float:
    """Seconds per call of fn, averaged over `inner` back-to-back calls (for sub-ms kernels)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / inner


def _agreement(ref: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Max relative difference of the values (per view) and of the gradient, ours vs ref."""
    value_diff = ((ours["value"] - ref["value"]).abs() / ref["value"].abs()).max().item()
    grad_diff = ((ours["grad"] - ref["grad"]).abs().max() / ref["grad"].abs().max()).item()
    return value_diff, grad_diff


def bench_setting(n: int, b: int, d: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Times ref and ours interleaved on one (n, B, d) input; returns medians (s) and diffs."""
    gen = torch.Generator().manual_seed(n * 7919 + d)
    # Rows on the unit sphere, as after the projector's L2-normalisation.
    z = F.normalize(torch.randn(n, b, d, generator=gen), dim=-1).to(device).requires_grad_(True)
    kept_ref: dict[str, torch.Tensor] = {}
    kept_ours: dict[str, torch.Tensor] = {}
    ref = lambda: _fwd_bwd(reference_tcr, z, kept_ref)  # noqa: E731
    ours = lambda: _fwd_bwd(total_coding_rate, z, kept_ours)  # noqa: E731
    # Warm up both (allocator, BLAS/LAPACK/cuSOLVER handles) before any timing; the reference
    # on one view only, as its cost is n times that.
    ours()
    _fwd_bwd(reference_tcr, z[:1].detach().clone().requires_grad_(True), {})
    # Ours can take well under a millisecond: repeat it within a slot to ~1/5 of a ref slot, so
    # timer resolution and a single scheduler hiccup don't decide its median.
    t_ref0 = _time_once(ref, device, 1)
    t_ours0 = _time_once(ours, device, 1)
    inner = max(1, min(200, math.ceil(0.2 * t_ref0 / max(t_ours0, 1e-6))))
    t_ref, t_ours = [t_ref0], [t_ours0]
    for _ in range(repeats - 1):
        t_ref.append(_time_once(ref, device, 1))
        t_ours.append(_time_once(ours, device, inner))
    value_diff, grad_diff = _agreement(kept_ref, kept_ours)
    ref_s, ours_s = statistics.median(t_ref), statistics.median(t_ours)
    return {
        "ref_s": ref_s,
        "ours_s": ours_s,
        "ratio": ref_s / ours_s,
        "value_diff": value_diff,
        "grad_diff": grad_diff,
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the settings, prints a table and one `ratio tcr ...` line each.

    Returns 1 (a failing exit status) if ours and the reference disagree numerically.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed slots per side")
    parser.add_argument("--batch", type=int, default=100, help="B, images per batch")
    parser.add_argument("--dim", type=int, default=1024, help="d, projection dimension")
    parser.add_argument("--views", type=int, nargs="+", default=[20, 200], help="n values")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even if present")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
    args = parser.parse_args(argv)
    if args.quick:
        args.views, args.batch, args.dim, args.repeats = [2], 16, 64, 2
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))

    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"B={args.batch}, d={args.dim}, float32, forward+backward"
    )
    print(
        f"{'setting':<14}{'ref ms':>11}{'ours ms':>10}{'ratio':>9}"
        f"{'val rdiff':>11}{'grad rdiff':>12}"
    )
    lines, ok = [], True
    for device in devices:
        for n in args.views:
            # The n=200 reference takes seconds per call on one core: fewer slots by default.
            repeats = args.repeats or (5 if n <= 50 else 3)
            r = bench_setting(n, args.batch, args.dim, device, repeats)
            name = f"n={n} {device.type}"
            print(
                f"{name:<14}{r['ref_s'] * 1e3:>11.2f}{r['ours_s'] * 1e3:>10.3f}"
                f"{r['ratio']:>8.1f}x{r['value_diff']:>11.1e}{r['grad_diff']:>12.1e}"
            )
            lines.append(f"ratio tcr {name}: {r['ratio']:.1f}x (goal >= {GOAL:.0f}x)")
            ok &= r["value_diff"] < VALUE_TOL and r["grad_diff"] < GRAD_TOL
    for line in lines:
        print(line)
    if not ok:
        print(
            f"MISMATCH: ours and the reference differ beyond {VALUE_TOL} (value) "
            f"or {GRAD_TOL} (gradient)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
