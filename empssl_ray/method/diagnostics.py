"""Collapse diagnostics: is the encoder still spreading images over its space?

"The loss goes down but the features are useless" is how collapse shows: every image embedded
alike (complete collapse), or in a few directions only (dimensional collapse). Two numbers on a
fixed batch each epoch tell it early:

- effective rank (Roy & Vetterli, 2007): exp of the entropy of the normalised singular values of
  the centred embeddings, between 1 (one direction) and the dimension (all alike);
- the mean per-dimension standard deviation of the l2-normalised embeddings (0 when they all
  coincide).
"""

from __future__ import annotations

import torch

ADVICE = "try a lower loss.eps, a higher loss.invariance_weight or a lower optim.lr"


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of centred embeddings.

    Args:
        z: (N, d) embeddings, N >= 2.

    Returns:
        A value in [1, min(N, d)]; 1.0 also when every embedding is the same.
    """
    z = z.double()  # identical rows centre to (nearly) exact zeros
    s = torch.linalg.svdvals(z - z.mean(dim=0))
    total = s.sum()
    if total <= 1e-9 * max(float(z.norm()), 1e-30):  # all alike: one point, rank 1
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the standard deviation of l2-normalised embeddings (N, d)."""
    unit = torch.nn.functional.normalize(z.float(), dim=1)
    return float(unit.std(dim=0).mean())


def collapse_metrics(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Both diagnostics of the projections z of normalised patches x (N, C, S, S), in eval mode
    (batch norm by its running statistics: the numbers do not depend on the batch's make-up)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        z = model(x).z
    model.train(was_training)
    return {"effective_rank": effective_rank(z), "embedding_std": embedding_std(z)}


class CollapseWatch:
    """Says once, in one line, when the effective rank falls below `threshold`."""

    def __init__(self, threshold: float) -> None:
        self.threshold, self.warned = threshold, False

    def check(self, rank: float, epoch: int) -> str | None:
        """The warning line the first time `rank` is under the threshold, else None."""
        if self.warned or self.threshold <= 0 or rank >= self.threshold:
            return None
        self.warned = True
        return (
            f"collapse: the embeddings' effective rank fell to {rank:.2f} (under "
            f"run.collapse_rank={self.threshold:g}) at epoch {epoch}: {ADVICE}"
        )
