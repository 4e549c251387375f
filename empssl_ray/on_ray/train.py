"""Ray Train adapter: EMP-SSL pretraining as a TorchTrainer run (Train V2 APIs).

The loop is the core's (`method.training.fit`); this file only wires it to Ray: DDP through
`prepare_model`, the TCR gather, the patch stream's shard, reports and a checkpoint every epoch
(`RayHooks`), resume from the latest checkpoint, and restarts after worker failures.
"""

from __future__ import annotations

import signal
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from empssl_ray.config import ConfigError, PretrainConfig
from empssl_ray.data import storage
from empssl_ray.data.datasets import DatasetInfo, Splits, open_splits
from empssl_ray.data.prefetch import Prefetcher
from empssl_ray.errors import UserError, find_user_error, user_error_line
from empssl_ray.evaluation.monitor import KnnMonitor
from empssl_ray.faults import Faults
from empssl_ray.method.gather import gather_batch
from empssl_ray.method.training import LoopHooks, Trainer, fit
from empssl_ray.on_ray.placement import on_head
from empssl_ray.on_ray.progress import post
from empssl_ray.on_ray.read import iterate_epochs
from empssl_ray.on_ray.stream import RowCounter, patch_stream
from empssl_ray.runs.checkpoints import load_checkpoint, resume_point, run_dir_of, save_checkpoint
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


def console_event(kind: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A report as the driver's console shows it (the rest goes to metrics.jsonl)."""
    return {"kind": kind, **{k: metrics[k] for k in CONSOLE_KEYS if k in metrics}}


def steps_per_epoch(rows: int, cfg: PretrainConfig) -> int:
    """Optimiser steps in one epoch: each worker's share of the rows in whole batches."""
    workers = max(1, cfg.ray.num_workers)
    return (rows // workers) // (cfg.optim.batch_size // workers)


@dataclass
class WorkerJob:
    """What every training worker is handed: the typed config as it is, and the run's facts the
    driver settled (the dataset, its steps, where to resume) so that all ranks agree."""

    cfg: PretrainConfig
    splits: Splits  # the dataset, opened once by the driver (the monitor samples it)
    info: DatasetInfo  # the training split's channels, image size, classes
    steps_per_epoch: int
    run_dir: str
    resume_from: str | None  # the checkpoint the weights (and the stream) start from
    counter: Any  # RowCounter: images augmented and skipped, across tasks
    board: Any = None  # the driver's console (`on_ray.progress.ProgressBoard`), or None
    faults: Faults | None = None  # drills (`empssl_ray.faults`), or None


class RayHooks(LoopHooks):
    """The Ray worker's part of the loop: every rank reports (a report is a barrier); rank 0 also
    logs the metrics, shows progress on the driver's console and writes the checkpoint."""

    def __init__(self, job: WorkerJob, lead: bool) -> None:
        self.job, self.lead = job, lead
        self.board = job.board if lead else None
        self.logger = MetricsLogger(job.run_dir) if lead else None

    def on_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.logger:
            self.logger.log("step", metrics)
        post(self.board, console_event("step", metrics))
        ray.train.report({**metrics, "kind": "step"})

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.job.counter is not None:
            # Cumulative over this attempt's epochs: images cut into patches (a batch re-run
            # after an actor died counts twice), and bad images dropped by on_bad_image=skip.
            counts = ray.get(self.job.counter.get.remote())
            metrics["augmented_images"] = counts.get("augmented_images", 0)
            metrics["skipped_images"] = counts.get("skipped_images", 0)
        with tempfile.TemporaryDirectory() as tmp:
            saved = None
            if self.lead:
                save_checkpoint(trainer.state_dict(), tmp)
                saved = Checkpoint.from_directory(tmp)
                if self.logger:
                    self.logger.log("epoch", metrics)
                    self.logger.flush()  # CSV, PNG and TensorBoard on storage every epoch
                post(self.board, console_event("epoch", metrics))
            ray.train.report(metrics, checkpoint=saved)

    def on_note(self, text: str) -> None:
        post(self.board, {"kind": "note", "text": text})

    def close(self) -> None:
        if self.logger:
            self.logger.close()


def train_loop_per_worker(config: dict[str, WorkerJob]) -> None:
    """Runs on every training worker: Ray's context, the stream's shard, the core's loop."""
    job = config["job"]
    cfg = job.cfg
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
    per_epoch = job.steps_per_epoch
    trainer = Trainer(
        cfg,
        job.info.channels,
        job.info.image_size,
        per_epoch * cfg.optim.epochs,
        device,
        gather=gather_batch if world > 1 else None,
        wrap=ray.train.torch.prepare_model if world > 1 else None,
        rank=rank,
    )  # patches differ across ranks, also after a resume
    if job.resume_from is not None:  # the driver's choice: the stream starts there too
        trainer.load_state_dict(load_checkpoint(job.resume_from))
    lead = rank == 0
    start = {"epochs": cfg.optim.epochs, "steps_per_epoch": per_epoch, "start_epoch": trainer.epoch}
    post(job.board if lead else None, {"kind": "start", **start})
    if trainer.epoch >= cfg.optim.epochs:  # a finished run, rerun: nothing to train
        return
    monitor = None
    if lead and cfg.eval.monitor_test > 0:
        monitor = KnnMonitor(job.splits, cfg.eval, trainer.patch_size, cfg.run.seed, cfg.patches)
    shard = ray.train.get_dataset_shard("train")
    # One iterator over every epoch still to train (one Ray Data execution per window of
    # epochs, see `on_ray.read`), cut into epochs of `per_epoch` batches: the actor pool stays
    # up across epoch boundaries, and the prefetch thread fetches on while the checkpoint is
    # written.
    stream = Prefetcher(
        iterate_epochs(
            lambda: shard.iter_torch_batches(
                batch_size=cfg.optim.batch_size // world,
                drop_last=True,
                prefetch_batches=1,
                # uint8 on the wire; the Trainer moves and normalises on its device. Pinned
                # pages let that copy run beside the GPU's compute (non_blocking).
                dtypes=torch.uint8,
                device="cpu",
                pin_memory=cfg.ray.use_gpu,
            ),
            wanted=(cfg.optim.epochs - trainer.epoch) * per_epoch,
        ),
        cfg.ray.prefetch_batches,
    )
    reporter = RayHooks(job, lead)
    hooks = [h for h in (job.faults, reporter) if h is not None]
    try:
        fit(
            trainer,
            lambda epoch: stream.take(per_epoch),
            cfg.optim.epochs,
            hooks,
            cfg.run.log_every_steps,
            monitor,
        )
    finally:
        stream.close()  # the rows past the last full batch are not needed
        reporter.close()


def build_trainer(
    cfg: PretrainConfig, splits: Splits, callbacks: list | None = None, board: Any = None
) -> TorchTrainer:
    """A TorchTrainer for the config; rerunning the same run name resumes its latest checkpoint.

    Args:
        splits: `cfg.data`'s splits, opened once per run (`open_splits`).
        callbacks: Ray Train callbacks (a Tune trial's report callback).
        board: a `ray_console.ProgressBoard` that rank 0 sends its progress to, or None.
    """
    run_dir = run_dir_of(cfg)
    # On the head node, as Ray Train pins its own state actor: a counter on a worker node that
    # leaves would take the run with it (seen in tests/cluster_scenario.py). "DEFAULT" leaves a
    # Tune trial's placement group, whose bundles hold no head-node resource.
    counter = on_head(RowCounter).remote()
    faults = Faults.from_env(run_dir)
    # The weights and the stream start at the same epoch; a finished run streams nothing
    # (its one planned epoch is never iterated).
    resume_from, first_epoch = resume_point(run_dir)
    ds, info, rows = patch_stream(
        splits.train,
        cfg.patches,
        cfg.ray,
        cfg.run.seed,
        faults,
        counter,
        epochs=range(min(first_epoch, cfg.optim.epochs - 1), cfg.optim.epochs),
    )
    # The stream runs in a coordinator actor whose bars would only fill the logs.
    ray.data.DataContext.get_current().enable_progress_bars = False
    per_epoch = steps_per_epoch(rows, cfg)
    if per_epoch < 1:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} is larger than the {rows} "
            "training images: lower optim.batch_size or raise data.train_limit"
        )
    resources = {"CPU": cfg.ray.cpus_per_worker, **(cfg.ray.trainer_resources or {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "job": WorkerJob(
                cfg, splits, info, per_epoch, run_dir, resume_from, counter, board, faults
            )
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage.resolve(cfg.run.storage_path),
            # Restarts happen in `pretrain`, which ends at once on errors a rerun would repeat.
            failure_config=FailureConfig(max_failures=0),
            # Not a log line per report per rank. (mypy sees Train V1's RunConfig stub.)
            logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
        datasets={"train": ds},
    )


def fit_and_release(trainer: TorchTrainer) -> ray.train.Result:
    """`trainer.fit()`, then Ctrl-C's handler back to what it was.

    In the main thread, fit() installs a Ctrl-C handler that holds the run's controller actor
    and never removes it. The controller of an ended run, and the dataset actors it owns (an
    augmentation pool holding CPUs), would then live on until the next fit: in a driver that
    fits more than once (a restart after a failure, a notebook, the test suite) they starve the
    next run of CPUs. Dropping the handler drops the last reference, and Ray ends them.
    """
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        if main:
            signal.signal(signal.SIGINT, handler)


def pretrain(
    cfg: PretrainConfig,
    callbacks: list | None = None,
    board: Any = None,
    splits: Splits | None = None,
) -> ray.train.Result:
    """Fits the run (resuming it if its name has checkpoints) and returns Ray Train's Result.

    A worker or node that fails is restarted from the latest checkpoint, up to
    `ray.max_failures` times. A user error (a non-finite loss, a bad image) ends the run at once:
    a restart would meet it again.
    """
    splits = splits or open_splits(cfg.data)  # once per run, whatever the restarts
    failures = 0
    while True:
        try:
            return fit_and_release(build_trainer(cfg, splits, callbacks, board))
        except ray.train.TrainingFailedError as exc:
            # Ray Data's errors reach here as text only: the line is all there is to keep.
            line = user_error_line(exc)
            if line is not None:
                raise find_user_error(exc) or UserError(line) from None
            if failures >= cfg.ray.max_failures:
                raise
            failures += 1
            reason = str(exc).strip().splitlines()[-1][:200]
            note = (
                f"a training worker failed ({reason}); restarting from the latest "
                f"checkpoint, restart {failures} of ray.max_failures={cfg.ray.max_failures}"
            )
            if board is None:
                print(f"empssl-ray: {note}", flush=True)
            post(board, {"kind": "note", "text": note})
