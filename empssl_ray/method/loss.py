"""EMP-SSL loss: total coding rate (TCR) of each view plus patch invariance.

The math is pure functions of tensors; `EMPSSLLoss` only holds the coefficients and the optional
gather that lets TCR see the global batch under data parallelism.

Shapes: z is (n, B, d): n views (patches) of B images, rows L2-normalised, d the projection dim.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Gather = Callable[[torch.Tensor], torch.Tensor]


def total_coding_rate(z: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """Coding rate R(Z) = 1/2 logdet(I_d + d/(B eps) Z^T Z) of each view, all views in one call.

    Sylvester's identity logdet(I_d + c Z^T Z) = logdet(I_B + c Z Z^T) makes the B x B Gram
    matrix exact and much cheaper when B < d (the usual case: B=100, d=1024).

    Args:
        z: (n, B, d) embeddings; n views of B samples.
        eps: distortion, passed as the reference code does (the paper writes it squared).

    Returns:
        (n,) coding rate of each view, in float32 (float64 if z is float64).
    """
    if z.dim() != 3:
        raise ValueError(f"total_coding_rate expects z of shape (n, B, d), got {tuple(z.shape)}")
    # logdet in bf16/fp16 loses everything: float32 at least, and autocast off, which would
    # otherwise run the Gram matmul in bf16 whatever z's dtype.
    z = z.float() if z.dtype not in (torch.float32, torch.float64) else z
    with torch.autocast(z.device.type, enabled=False):
        _, b, d = z.shape
        scale = d / (b * eps)
        gram = z @ z.transpose(1, 2) if b < d else z.transpose(1, 2) @ z  # (n, m, m), m=min(B, d)
        m = gram.shape[-1]
        eye = torch.eye(m, dtype=z.dtype, device=z.device)
        mat = eye + scale * gram
        return 0.5 * _logdet_spd(mat)


def _logdet_spd(mat: torch.Tensor) -> torch.Tensor:
    """logdet of a batch of symmetric positive definite matrices (..., m, m) -> (...).

    I + c Z Z^T has every eigenvalue >= 1, so Cholesky succeeds in exact arithmetic; rounding on
    near-collapsed inputs can still break it, and then the (pivoted) LU logdet stands in for the
    views it failed on. Nothing here reads a value on the host (a GPU would stall for it): the
    views that factorise are found first, without gradients; then each path gets a batch in
    which the other path's views are the identity, so neither factors a matrix it cannot, and
    no NaN of a failed factor leaks into the gradients through 0 * NaN. Three small batched
    factorisations (m = min(B, d), 100 in the paper) instead of one: microseconds on a GPU.
    """
    with torch.no_grad():
        ok = (torch.linalg.cholesky_ex(mat)[1] == 0)[..., None, None]
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device).expand_as(mat)
    chol = torch.linalg.cholesky_ex(torch.where(ok, mat, eye))[0]
    by_chol = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    by_lu = torch.linalg.slogdet(torch.where(ok, eye, mat))[1]
    return torch.where(ok[..., 0, 0], by_chol, by_lu)


def patch_invariance(z: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each view to the per-image mean of all views, averaged per view.

    The mean is not detached, as in the reference: gradients flow through it too.

    Args:
        z: (n, B, d) embeddings.

    Returns:
        (n,) mean over the batch of cos(z_i[b], mean_i z_i[b]) for each view i.
    """
    center = z.mean(dim=0, keepdim=True)  # (1, B, d)
    return F.cosine_similarity(z, center, dim=-1).mean(dim=1)


def empssl_loss(
    z: torch.Tensor,
    invariance_weight: float = 200.0,
    tcr_weight: float = 1.0,
    eps: float = 0.2,
    gather: Gather | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss = -tcr_weight * mean_i R(Z_i) - invariance_weight * mean_i S(Z_i).

    Args:
        z: (n, B_local, d) embeddings of this worker's images.
        invariance_weight: lambda on the invariance term.
        tcr_weight: weight on the coding-rate term.
        eps: coding-rate distortion.
        gather: maps (n, B_local, d) to (n, B_global, d) across workers with gradients
            (see `empssl_ray.method.gather.gather_batch`); None on one process.

    Returns:
        (loss, tcr, invariance): scalars; tcr and invariance are the means over views.
    """
    # The whole loss in float32 even under the backbone's bf16 autocast (the reference trains
    # in float32): autocast is off here, and a bf16 z is promoted.
    z = z.float() if z.dtype not in (torch.float32, torch.float64) else z
    with torch.autocast(z.device.type, enabled=False):
        z_global = gather(z) if gather is not None else z
        tcr = total_coding_rate(z_global, eps).mean()
        # Invariance is a per-image quantity: the local mean, averaged by DDP over workers, is
        # the global mean, so it needs no gather.
        invariance = patch_invariance(z).mean()
        loss = -tcr_weight * tcr - invariance_weight * invariance
    return loss, tcr, invariance


class EMPSSLLoss(nn.Module):
    """Holds the EMP-SSL coefficients; the math lives in `empssl_loss`.

    Args:
        invariance_weight: lambda ("patch_sim"), 200 in the paper.
        tcr_weight: weight on TCR, 1 in the paper.
        eps: coding-rate distortion, 0.2 in the paper.
        gather: optional cross-worker gather with gradients, so TCR sees the global batch.
    """

    def __init__(
        self,
        invariance_weight: float = 200.0,
        tcr_weight: float = 1.0,
        eps: float = 0.2,
        gather: Gather | None = None,
    ) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"loss.eps must be > 0, got {eps}")
        self.invariance_weight = invariance_weight
        self.tcr_weight = tcr_weight
        self.eps = eps
        self.gather = gather

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args: z (n, B, d). Returns the scalar loss and its parts for logging.

        The parts stay detached 0-d tensors on z's device: turning them into floats makes the
        host wait for the device, so the caller does it once per report, not per step.
        """
        loss, tcr, inv = empssl_loss(
            z, self.invariance_weight, self.tcr_weight, self.eps, self.gather
        )
        return loss, {"loss": loss.detach(), "tcr": tcr.detach(), "invariance": inv.detach()}
