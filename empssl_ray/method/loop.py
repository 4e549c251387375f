"""The loop over epochs, in plain PyTorch: the NaN stop, the collapse diagnostics, the online
monitor, and `LoopHooks` where a caller reports, checkpoints or injects faults (the Ray worker,
the GPU script and any bare-PyTorch user run it)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from empssl_ray.method.diagnostics import CollapseWatch
from empssl_ray.method.training import EmptyEpochError, Trainer


class LoopHooks:
    """What `fit` calls as it trains; each method does nothing here, so a subclass overrides only
    what it needs. The Ray worker reports and checkpoints (`on_ray.train.RayHooks`), the fault
    drills poison and kill (`faults.Faults`), the GPU script times and draws bars."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Before the epoch `trainer.epoch` (0-based) takes its first batch."""

    def on_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Every `log_every` steps: the step's loss parts, lr, patches/s and data wait."""

    def on_batch(self, trainer: Trainer, batch: Mapping[str, torch.Tensor]) -> None:
        """After every step (and its `on_step`), with the batch it trained on."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """After an epoch: its means, counters, patch-forwards and the monitor's kNN."""

    def on_note(self, text: str) -> None:
        """A line the user should read (training ended early, and why)."""


def fit(
    trainer: Trainer,
    epoch_batches: Callable[[int], Iterable[Mapping[str, torch.Tensor]]],
    epochs: int,
    hooks: Sequence[LoopHooks] = (),
    log_every: int = 10,
    monitor: Callable[[nn.Module, torch.device], float] | None = None,
    total_steps: int = 0,
) -> dict[str, Any] | None:
    """Trains from `trainer.epoch` (0, or where a loaded state left off) to `epochs`.

    Args:
        trainer: the model, loss, optimiser and counters; resume by loading its state first.
        epoch_batches: epoch index -> that epoch's batches of {"patches" (B, n, C, S, S)} or
            {"image" (B, C, H, W)} uint8 tensors.
        epochs: epochs in the whole run (the schedule's length was set by the trainer).
        hooks: called in order at each event (see `LoopHooks`).
        log_every: steps between `on_step` calls; 0 = none.
        monitor: model, device -> an accuracy in [0, 1] at each epoch's end (`knn_acc`).
        total_steps: steps of the whole run, for `run_percent` in the epoch metrics; 0 = none.

    Returns:
        The last epoch's metrics, or None when there was no epoch left to train.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (no hook sees that epoch's end).
        EmptyEpochError: the first epoch of this call got no batch.
    """
    cfg, last = trainer.cfg, None
    collapse = CollapseWatch(cfg.run.collapse_rank)
    step_hook = None
    if log_every > 0:

        def step_hook(metrics: dict[str, Any]) -> None:
            for hook in hooks:
                hook.on_step(trainer, metrics)

    def batch_hook(batch: Mapping[str, torch.Tensor]) -> None:
        for hook in hooks:
            hook.on_batch(trainer, batch)

    if trainer.chunk_note and trainer.epoch < epochs:  # what the planner chose, before training
        for hook in hooks:
            hook.on_note(trainer.chunk_note)
    while trainer.epoch < epochs:
        for hook in hooks:
            hook.on_epoch_start(trainer)
        try:
            metrics: dict[str, Any] = trainer.run_epoch(
                epoch_batches(trainer.epoch), step_hook, max(1, log_every), batch_hook
            )
        except EmptyEpochError:
            if last is None:
                raise
            # Images dropped by data.on_bad_image=skip come off the stream's end: every rank
            # (equal shares) runs out at the same step.
            for hook in hooks:
                hook.on_note(
                    f"the data ran out after epoch {trainer.epoch} (images skipped as "
                    "unreadable): training ends there"
                )
            break
        metrics.update(epoch=trainer.epoch, step=trainer.step, kind="epoch")
        # Compute spent so far, for compute-aware comparisons: one patch-forward is one patch
        # through the model (and back) on any worker.
        metrics["patch_forwards"] = trainer.step * cfg.optim.batch_size * cfg.patches.num_patches
        if total_steps:  # how far along the run is: a sweep's clock for trials of equal budgets
            metrics["run_percent"] = 100 * trainer.step / total_steps
        metrics.update(trainer.diagnose())
        warning = collapse.check(metrics.get("effective_rank", math.inf), trainer.epoch)
        if warning:  # once per fit, in one line
            for hook in hooks:
                hook.on_note(warning)
        if monitor is not None:
            metrics["knn_acc"] = monitor(trainer.model, trainer.device)
        for hook in hooks:
            hook.on_epoch_end(trainer, metrics)
        last = metrics
    return last
