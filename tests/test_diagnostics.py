"""Collapse diagnostics: effective rank and spread of embeddings, and the one-line warning."""

from __future__ import annotations

import torch
from torch import nn

from empssl_ray.method.diagnostics import CollapseWatch, effective_rank, embedding_std
from empssl_ray.method.loop import LoopHooks, fit
from empssl_ray.method.training import Trainer
from tests.test_engine import batches, tiny_config


def test_constant_embeddings_have_rank_one_and_no_spread() -> None:
    z = torch.ones(100, 32) * torch.randn(32)
    assert effective_rank(z) == 1.0 and embedding_std(z) < 1e-6


def test_gaussian_embeddings_have_rank_near_their_dimension() -> None:
    z = torch.randn(4000, 32, generator=torch.Generator().manual_seed(0))
    assert 0.9 * 32 < effective_rank(z) <= 32
    line = torch.randn(4000, 1) * torch.randn(1, 32)  # one direction only
    assert effective_rank(line) < 1.01 and embedding_std(z) > 0.1


def test_the_watch_warns_once_with_what_to_try() -> None:
    watch = CollapseWatch(2.0)
    assert watch.check(5.0, 1) is None
    line = watch.check(1.3, 2)
    assert line is not None and "1.30" in line and "epoch 2" in line and "loss.eps" in line
    assert watch.check(1.1, 3) is None and CollapseWatch(0.0).check(1.0, 1) is None


class Notes(LoopHooks):
    """Keeps the notes and each epoch's rank; from epoch `collapse_from` on it zeroes the last
    projection layer's weights, so every patch projects to the same point (a forced collapse)."""

    def __init__(self, collapse_from: int | None = None) -> None:
        self.notes: list[str] = []
        self.ranks: list[float] = []
        self.collapse_from = collapse_from

    def on_epoch_start(self, trainer: Trainer) -> None:
        if self.collapse_from is not None and trainer.epoch >= self.collapse_from:
            last = [m for m in trainer.model.projector.modules() if isinstance(m, nn.Linear)][-1]
            with torch.no_grad():
                last.weight.zero_()
            last.weight.requires_grad_(False)  # and no step moves it again

    def on_note(self, text: str) -> None:
        self.notes.append(text)

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        self.ranks.append(metrics["effective_rank"])


def test_a_run_made_to_collapse_says_so_once() -> None:
    """Healthy epochs first (TCR keeps the embeddings spread: no warning), then a forced
    collapse: the rank falls to 1 and the run prints the warning once for the three epochs."""
    torch.manual_seed(0)
    trainer, notes = Trainer(tiny_config(), 3, 32, steps_total=40), Notes(collapse_from=2)
    data = batches(4)
    fit(trainer, lambda epoch: data, 5, hooks=[notes], log_every=0)
    assert min(notes.ranks[:2]) > 2.0 and max(notes.ranks[2:]) < 1.01, notes.ranks
    assert len(notes.notes) == 1 and notes.notes[0].startswith("collapse:"), notes.notes
    assert "at epoch 3" in notes.notes[0]  # epochs count from 1 in what users read
