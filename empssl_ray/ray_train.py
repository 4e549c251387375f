"""Ray Train adapter: EMP-SSL pretraining as a TorchTrainer run (Train V2 APIs).

The loop itself is the core's `Trainer`; this file only wires it to Ray: DDP through
`prepare_model`, the TCR gather, the patch stream shard, per-step and per-epoch reports,
a checkpoint every epoch, resume from the latest one, and restarts after worker failures.
"""

from __future__ import annotations

import signal
import tempfile
import threading
from dataclasses import asdict
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

from empssl_ray import storage
from empssl_ray.checkpoints import load_checkpoint, resume_point, run_dir_of, save_checkpoint
from empssl_ray.config import ConfigError, PretrainConfig
from empssl_ray.datasets import DatasetInfo
from empssl_ray.distributed import gather_batch
from empssl_ray.engine import Trainer
from empssl_ray.errors import UserError, find_user_error, user_error_line
from empssl_ray.faults import fault_dir, faults_from_env, maybe_die
from empssl_ray.monitor import KnnMonitor
from empssl_ray.prefetch import Prefetcher
from empssl_ray.ray_console import on_head, post
from empssl_ray.ray_data import RowCounter, patch_stream
from empssl_ray.ray_read import iterate_epochs
from empssl_ray.tracking import MetricsLogger

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


def maybe_poison(trainer: Trainer, faults: dict[str, str]) -> None:
    """Fault injection: NaN weights from epoch EMPSSL_FAULT_NAN_AT_EPOCH on (tests the NaN stop)."""
    at = faults.get("EMPSSL_FAULT_NAN_AT_EPOCH")
    if at is not None and trainer.epoch >= int(at):
        with torch.no_grad():
            for p in trainer.model.projector.parameters():
                p.fill_(float("nan"))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every training worker (and in the driver in local mode)."""
    from empssl_ray.config import to_dataclass

    cfg: PretrainConfig = to_dataclass(config["cfg"], PretrainConfig)
    info: DatasetInfo = config["info"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
    per_epoch = config["steps_per_epoch"]
    trainer = Trainer(
        cfg,
        info.channels,
        info.image_size,
        per_epoch * cfg.optim.epochs,
        device,
        gather=gather_batch if world > 1 else None,
        wrap=ray.train.torch.prepare_model if world > 1 else None,
        rank=rank,
    )  # patches differ across ranks, also after a resume
    run_dir, faults, counter = config["run_dir"], config["faults"], config["counter"]
    if config["resume_from"] is not None:  # the driver's choice: the stream starts there too
        trainer.load_state_dict(load_checkpoint(config["resume_from"]))
    lead = rank == 0
    board = config["board"] if lead else None  # the driver's console, if it has one
    post(
        board,
        {
            "kind": "start",
            "epochs": cfg.optim.epochs,
            "steps_per_epoch": per_epoch,
            "start_epoch": trainer.epoch,
        },
    )
    if trainer.epoch >= cfg.optim.epochs:  # a finished run, rerun: nothing to train
        return
    logger = MetricsLogger(run_dir) if lead else None
    monitor = None
    if lead and cfg.eval.monitor_test > 0:
        monitor = KnnMonitor(cfg.data, cfg.eval, trainer.patch_size, cfg.run.seed, cfg.patches)
    shard = ray.train.get_dataset_shard("train")

    def on_step(metrics: dict[str, float]) -> None:
        if lead:
            maybe_die(faults, "KILL_TRAINER_AT_STEP", trainer.step, config["fault_dir"])
        if logger:
            logger.log("step", metrics)
        post(board, console_event("step", metrics))
        ray.train.report({**metrics, "kind": "step"})  # every rank: report is a barrier

    # One iterator over every epoch still to train (one Ray Data execution per window of
    # epochs, see `ray_read`), cut into epochs of `per_epoch` batches: the actor pool stays up
    # across epoch boundaries, and the prefetch thread fetches on while the checkpoint is
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
    while trainer.epoch < cfg.optim.epochs:
        maybe_poison(trainer, faults)
        step_hook = on_step if cfg.run.log_every_steps > 0 else None
        try:
            metrics: dict[str, Any] = trainer.run_epoch(
                stream.take(per_epoch), step_hook, max(1, cfg.run.log_every_steps)
            )
        except RuntimeError:  # an epoch without batches
            if not stream.ended:
                raise
            # Images dropped by data.on_bad_image=skip come off the stream's end: every rank
            # (equal shares) runs out at the same step.
            note = (
                f"the data ran out after epoch {trainer.epoch} (images skipped as "
                "unreadable): training ends there"
            )
            post(board, {"kind": "note", "text": note})
            break
        metrics.update(epoch=trainer.epoch, step=trainer.step, kind="epoch")
        # Compute spent so far, for compute-aware objectives: one patch-forward is one patch
        # through the model (and back) on any worker.
        metrics["patch_forwards"] = trainer.step * cfg.optim.batch_size * cfg.patches.num_patches
        if monitor is not None:
            metrics["knn_acc"] = monitor(trainer.model, device)
            metrics["knn_acc_per_mpatch"] = metrics["knn_acc"] / (metrics["patch_forwards"] / 1e6)
        if counter is not None:
            # Cumulative over this attempt's epochs: images cut into patches (a batch re-run
            # after an actor died counts twice), and bad images dropped by on_bad_image=skip.
            counts = ray.get(counter.get.remote())
            metrics["augmented_images"] = counts.get("augmented_images", 0)
            metrics["skipped_images"] = counts.get("skipped_images", 0)
        with tempfile.TemporaryDirectory() as tmp:
            saved = None
            if lead:
                save_checkpoint(trainer.state_dict(), tmp)
                saved = Checkpoint.from_directory(tmp)
                if logger:
                    logger.log("epoch", metrics)
                    logger.flush()  # CSV, PNG and TensorBoard on storage after every epoch
                post(board, console_event("epoch", metrics))
            ray.train.report(metrics, checkpoint=saved)
    stream.close()  # the rows past the last full batch are not needed
    if logger:
        logger.close()


def build_trainer(
    cfg: PretrainConfig, callbacks: list | None = None, board: Any = None
) -> TorchTrainer:
    """A TorchTrainer for the config; rerunning the same run name resumes its latest checkpoint.

    Args:
        callbacks: Ray Train callbacks (a Tune trial's report callback).
        board: a `ray_console.ProgressBoard` that rank 0 sends its progress to, or None.
    """
    run_dir = run_dir_of(cfg)
    # On the head node, as Ray Train pins its own state actor: a counter on a worker node that
    # leaves would take the run with it (seen in tests/cluster_scenario.py). "DEFAULT" leaves a
    # Tune trial's placement group, whose bundles hold no head-node resource.
    counter = on_head(RowCounter).remote()
    faults = faults_from_env()
    # The weights and the stream start at the same epoch; a finished run streams nothing
    # (its one planned epoch is never iterated).
    resume_from, first_epoch = resume_point(run_dir)
    ds, info, rows = patch_stream(
        cfg.data,
        cfg.patches,
        cfg.ray,
        cfg.run.seed,
        faults,
        fault_dir(faults, run_dir),
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
            "cfg": asdict(cfg),
            "info": info,
            "steps_per_epoch": per_epoch,
            "run_dir": run_dir,
            "faults": faults,
            "counter": counter,
            "fault_dir": fault_dir(faults, run_dir),
            "resume_from": resume_from,
            "board": board,
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
    cfg: PretrainConfig, callbacks: list | None = None, board: Any = None
) -> ray.train.Result:
    """Fits the run (resuming it if its name has checkpoints) and returns Ray Train's Result.

    A worker or node that fails is restarted from the latest checkpoint, up to
    `ray.max_failures` times. A user error (a non-finite loss, a bad image) ends the run at once:
    a restart would meet it again.
    """
    failures = 0
    while True:
        try:
            return fit_and_release(build_trainer(cfg, callbacks, board))
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
