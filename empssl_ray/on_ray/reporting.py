"""What a Ray training worker does around the core loop: reports and checkpoints (`RayHooks`).

Every rank reports (a report is a barrier); rank 0 also logs the metrics, shows progress on the
driver's console and writes the checkpoints: at each epoch's end, and inside an epoch every
`run.checkpoint_every_steps` steps or `run.checkpoint_every_minutes` minutes. Each checkpoint
holds the stream's position (which rows of which epochs were trained, gathered from every
rank), so a restart from it trains every row once per epoch, inside an epoch too.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from empssl_ray.config import PretrainConfig
from empssl_ray.data.read_plan import StreamPosition
from empssl_ray.method.loop import LoopHooks
from empssl_ray.method.training import Trainer
from empssl_ray.on_ray.progress import post
from empssl_ray.on_ray.read import DELIVERED
from empssl_ray.on_ray.tracking import Tracker, numeric
from empssl_ray.runs.checkpoints import checkpoint_name, prune_checkpoints, save_checkpoint
from empssl_ray.runs.metrics import MetricsLogger

# What the console shows of a report (the rest goes to metrics.jsonl and TensorBoard).
CONSOLE_KEYS = (
    "epoch",
    "step",
    "loss",
    "tcr",
    "invariance",
    "patches_per_s",
    "data_wait_frac",
    "epoch_time_s",
    "knn_acc",
)
# Cumulative over the run, restarts included (an actor pool starts again with each execution).
COUNTS = ("augmented_images", "skipped_images", "patch_cutters_started")


def preemption_note(info: Any) -> str:
    """The console's line for a drain notice (`ray.train.PreemptionInfo`)."""
    return (
        f"a node of the run is being preempted (ranks {info.preempted_ranks}): "
        "checkpointing now, then training on until it goes"
    )


def console_event(kind: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A report as the driver's console shows it (the rest goes to metrics.jsonl)."""
    return {"kind": kind, **{k: metrics[k] for k in CONSOLE_KEYS if k in metrics}}


class RayHooks(LoopHooks):
    """Reports, checkpoints and the stream's position for one training worker.

    Args:
        cfg: the run's config.
        run_dir: where the run's checkpoints and metrics live.
        steps_per_epoch: optimiser steps in one epoch.
        rank, world: this worker's rank and the worker count.
        position: rows trained so far (from the checkpoint resumed, or none).
        counts: images augmented and skipped before this start (from that checkpoint).
        counter: the run's `RowCounter` actor (this start's counts), or None.
        board: the driver's console, or None.
        tracker: rank 0's tracked run (MLflow, W&B), or None.
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        run_dir: str,
        steps_per_epoch: int,
        rank: int,
        world: int,
        position: StreamPosition,
        counts: dict[str, int],
        counter: Any = None,
        board: Any = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.per_epoch = cfg, run_dir, steps_per_epoch
        self.rank, self.world, self.lead = rank, world, rank == 0
        self.position, self.counts, self.counter = position, counts, counter
        self.board = board if self.lead else None
        self.logger: MetricsLogger | None = None
        self.trained: list[tuple[np.ndarray, np.ndarray]] = []  # (epochs, ids) since a checkpoint
        self.delivered = 0  # epochs before this one were delivered whole (`iterate_epochs`)
        self.checkpoint_s = 0.0  # seconds the last checkpoint took to write and report
        self.last_checkpoint = time.monotonic()
        self.preemption: Any = None  # the drain notice a checkpoint was written for
        self.tracker = tracker
        # Metrics of the steps since the last checkpoint: tracked once that checkpoint is saved
        # (a restart trains those steps again, and they would be tracked twice).
        self.untracked: list[tuple[int, dict[str, float]]] = []

    def on_epoch_start(self, trainer: Trainer) -> None:
        if self.lead and self.logger is None:  # the history up to the step resumed from
            self.logger = MetricsLogger(self.run_dir, resumed_step=trainer.step)

    def on_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        metrics["workers"] = self.world
        if self.logger:
            self.logger.log("step", metrics)
        post(self.board, console_event("step", metrics))
        if self.tracker:
            self.untracked.append((trainer.step, numeric(metrics)))
        ray.train.report({**metrics, "kind": "step"})

    def on_batch(self, trainer: Trainer, batch: Mapping[str, Any]) -> None:
        self.trained.append((batch["epoch"].numpy(), batch["id"].numpy()))
        self.delivered = int(batch.get(DELIVERED, self.delivered))
        if self.checkpoint_due(trainer):
            self.checkpoint(trainer, {"kind": "checkpoint", "epoch": trainer.epoch})

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        # The run's shape and its costs, per epoch: rank 0's peak memory (MB), the last
        # checkpoint's write time, the worker count (an elastic run's changes).
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        metrics.update(workers=self.world, rank0_peak_mb=peak_mb, checkpoint_s=self.checkpoint_s)
        self.checkpoint(trainer, metrics)

    def on_note(self, text: str) -> None:
        post(self.board, {"kind": "note", "text": text})

    def checkpoint_due(self, trainer: Trainer) -> bool:
        """Whether to checkpoint inside the epoch after this step; every rank agrees."""
        if trainer.step - trainer.epoch * self.per_epoch >= self.per_epoch:
            return False  # the epoch's last step: its end checkpoints anyway
        every = self.cfg.run.checkpoint_every_steps
        if every > 0 and trainer.step % every == 0:
            return True
        # The rest is looked at every few steps only, where the ranks agree on it.
        if trainer.step % max(1, self.cfg.run.log_every_steps or 10):
            return False
        if self.preemption is None:
            # A node of the run is being drained (a spot reclaim notice): checkpoint now, once,
            # and train on; Ray Train restarts the workers from it when the node goes.
            self.preemption = ray.train.get_preemption_info()  # a barrier: every rank calls
            if self.preemption is not None:
                post(self.board, {"kind": "note", "text": preemption_note(self.preemption)})
                return True
        minutes = self.cfg.run.checkpoint_every_minutes
        if minutes <= 0:
            return False
        # One tiny collective: a device read that a GPU waits for once per `log_every_steps`.
        due = time.monotonic() - self.last_checkpoint >= 60 * minutes
        if self.world > 1:
            flag = torch.tensor([float(due)], device=trainer.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag.item())
        return due

    def checkpoint(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Reports `metrics` with a checkpoint: weights, optimiser, schedule, counters and the
        stream's position, gathered from every rank (a collective: every rank calls it).

        Raises:
            NonFiniteLossError: a loss of the epoch so far or a weight is NaN/inf: nothing
                poisoned is saved (every rank raises: their weights are the same).
        """
        started = time.perf_counter()
        trainer.check_finite()
        mine = (
            np.concatenate([e for e, _ in self.trained]) if self.trained else np.zeros(0, int),
            np.concatenate([i for _, i in self.trained]) if self.trained else np.zeros(0, int),
        )
        self.trained = []
        gathered: list[Any] = [mine]
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, mine)
        metrics.update(step=trainer.step)
        if self.counter is not None:
            # Images cut into patches (a batch re-run after an actor died counts twice) and bad
            # images dropped by on_bad_image=skip, over the run: earlier starts' counts carry on.
            now = ray.get(self.counter.since_start.remote())
            for key in COUNTS:
                metrics[key] = self.counts.get(key, 0) + now.get(key, 0)
        with tempfile.TemporaryDirectory() as tmp:
            saved = None
            if self.lead:
                epochs, ids = (np.concatenate([np.asarray(g[k]) for g in gathered]) for k in (0, 1))
                twice = self.position.repeated(epochs, ids)
                if twice:  # never saved: a restart, one line
                    raise RuntimeError(
                        f"{twice} rows came to training twice "
                        f"in one epoch by step {trainer.step}: restarting from the newest "
                        "checkpoint"
                    )
                self.position.add(epochs, ids)
                self.position.delivered(self.delivered)
                state = trainer.state_dict()
                state["workers"] = self.world
                state["counts"] = {k: metrics[k] for k in COUNTS if k in metrics}
                if self.tracker:
                    state["tracking_run_id"] = self.tracker.run_id
                    if metrics.get("kind") == "epoch":
                        self.untracked.append((trainer.step, numeric(metrics, "epoch/")))
                save_checkpoint(state, tmp, {**self.position.state(), "step": trainer.step})
                saved = Checkpoint.from_directory(tmp)
                if metrics.get("kind") == "epoch":
                    if self.logger:
                        self.logger.log("epoch", metrics)
                        self.logger.flush()  # CSV, PNG and TensorBoard on storage every epoch
                    post(self.board, console_event("epoch", metrics))
                elif self.logger:  # the step records up to this checkpoint, before it lands:
                    self.logger.push()  # a restart from it never logs them again
            # Named by step: names sort in training order whatever the node's clock.
            name = checkpoint_name(trainer.step)
            ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=name)
        if self.tracker:  # the steps up to this checkpoint are for good now
            self.tracker.log(self.untracked)
            self.untracked = []
        if self.lead:  # across every fit and restart of the run, not only this one's
            prune_checkpoints(self.run_dir, self.cfg.run.checkpoints_to_keep)
        self.last_checkpoint = time.monotonic()
        self.checkpoint_s = time.perf_counter() - started

    def close(self) -> None:
        if self.logger:
            self.logger.close()
        if self.tracker:
            self.tracker.close()
