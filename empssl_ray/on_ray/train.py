"""Ray Train adapter: EMP-SSL pretraining as a TorchTrainer run (Train V2 APIs).

The loop is the core's (`method.loop.fit`); this file wires it to Ray: DDP through
`prepare_model`, the TCR gather, the patch stream's shard, reports and checkpoints
(`on_ray.reporting.RayHooks`), and restarts. Whoever restarts the workers (`pretrain` after a
failure, or Ray Train itself after a node is drained), they start from the run's newest complete
checkpoint, and so does the stream (`training_stream`, built at each worker-group start).
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import ray
import ray.train
import torch
from ray.train import (
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
from empssl_ray.data.read_plan import StreamPosition
from empssl_ray.data.storage import StorageUnavailableError
from empssl_ray.errors import StorageError, UserError, find_user_error, user_error_line
from empssl_ray.evaluation.monitor import KnnMonitor
from empssl_ray.faults import Faults
from empssl_ray.method.gather import gather_batch
from empssl_ray.method.loop import fit
from empssl_ray.method.optim import run_epochs, run_steps, schedule_steps
from empssl_ray.method.step_budget import plan_steps
from empssl_ray.method.training import Trainer
from empssl_ray.on_ray.placement import on_head
from empssl_ray.on_ray.progress import post
from empssl_ray.on_ray.read import iterate_epochs
from empssl_ray.on_ray.reporting import RayHooks
from empssl_ray.on_ray.stream import RowCounter, patch_stream, training_windows
from empssl_ray.on_ray.tracking import Tracker
from empssl_ray.rules import worker_counts
from empssl_ray.runs.checkpoints import (
    CheckpointNotFoundError,
    CheckpointVanishedError,
    ResumePoint,
    load_checkpoint,
    resume_point,
    run_dir_of,
)

RAY_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's checkpoint record


def worker_range(cfg: PretrainConfig) -> int | tuple[int, int]:
    """Ray Train's worker count: `ray.num_workers`, or (min, max) for an elastic run."""
    counts = worker_counts(cfg)
    return (counts[0], counts[-1]) if len(counts) > 1 else cfg.ray.num_workers


def steps_per_epoch(rows: int, cfg: PretrainConfig) -> int:
    """Optimiser steps in one epoch: the split's rows in whole global batches, at any worker
    count (a config rule makes every count the run may have, `rules.worker_counts`, divide
    optim.batch_size)."""
    return rows // cfg.optim.batch_size


def stream_epochs(position: StreamPosition, epochs: int) -> range:
    """The epochs a (re)started stream holds: from the first not complete (a finished run: its
    last, which is never iterated) to the run's end."""
    return range(min(position.complete_through, epochs - 1), epochs)


def check_schedule(saved: dict[str, Any], per_epoch: int, cfg: PretrainConfig) -> None:
    """Refuses to resume a run whose epochs had another length (another optim.batch_size or
    data): its schedule and its stream position count in the old steps.

    Raises:
        ConfigError: the saved epoch length differs from this config's.
    """
    if saved["epoch_rows"] != per_epoch * cfg.optim.batch_size:
        raise ConfigError(
            f"run.name={cfg.run.name} was checkpointed with epochs of {saved['epoch_rows']} "
            f"images; this config trains {per_epoch * cfg.optim.batch_size} an epoch "
            f"(optim.batch_size={cfg.optim.batch_size} over {saved['rows']} images): resume "
            "with the run's own optim.batch_size and data, or start a new run.name"
        )


@dataclass
class WorkerJob:
    """What every training worker is handed: the typed config as it is, and the run's facts the
    driver settled (the dataset and its steps) so that all ranks agree."""

    cfg: PretrainConfig
    splits: Splits  # the dataset, opened once by the driver (the monitor samples it)
    info: DatasetInfo  # the training split's channels, image size, classes
    steps_per_epoch: int
    run_dir: str
    counter: Any  # RowCounter: images augmented and skipped, across tasks
    board: Any = None  # the driver's console (`on_ray.progress.ProgressBoard`), or None
    faults: Faults | None = None  # drills (`empssl_ray.faults`), or None


def saved_position(resume: ResumePoint, rows: int, epoch_rows: int) -> dict[str, Any]:
    """The state of the rows trained before `resume` (`StreamPosition.state()` and the step it
    was saved at; a fresh start: none)."""
    return resume.position() or StreamPosition(rows, resume.epoch, epoch_rows).state()


def check_position(saved: dict, trainer: Trainer) -> None:
    """Refuses weights and a stream position saved at different steps: training on would train
    some rows twice and others never.

    Raises:
        RuntimeError: they differ (a failure: the run restarts from its newest checkpoint).
    """
    if saved.get("step", trainer.step) != trainer.step:  # a position saved with its step
        raise RuntimeError(
            f"the stream's position is of step {saved['step']}, the weights of step "
            f"{trainer.step}: not resuming from a mixed checkpoint"
        )


def training_stream(job: WorkerJob) -> ray.data.Dataset:
    """The patch stream from the run's newest complete checkpoint on: every epoch still to train,
    without the rows trained already. Ray Train calls it at each worker-group start (first
    start, and each restart after a node is drained), in its controller."""
    cfg = job.cfg
    storage.set_retry_window(cfg.run.storage_retry_s)
    epochs = run_epochs(cfg.optim, job.steps_per_epoch)
    resume = resume_point(job.run_dir)
    epoch_rows = job.steps_per_epoch * cfg.optim.batch_size
    saved = saved_position(resume, len(job.splits.train), epoch_rows)
    position = StreamPosition.from_state(saved)
    # Decided once, here: the workers load this very checkpoint and position, whatever is
    # written or pruned meanwhile (a lost node's worker can outlive its node for a moment).
    # Plain values only: the tally actor imports nothing more to hold them.
    chosen = (resume.location, resume.epoch, resume.step, resume.has_position)
    ray.get(job.counter.set_start.remote((chosen, saved)))
    ray.data.DataContext.get_current().enable_progress_bars = False  # the workers' bars: none
    ds, _, _ = patch_stream(
        job.splits.train,
        cfg.patches,
        cfg.ray,
        cfg.run.seed,
        job.faults,
        job.counter,
        carry=("id", "epoch"),  # which rows each step trained: the checkpoints' position
        epochs=stream_epochs(position, epochs),
        position=position,
        epoch_rows=epoch_rows,  # whole global batches: every epoch ends at a step's end
    )
    return ds


def train_loop_per_worker(config: dict[str, WorkerJob]) -> None:
    """Runs on every training worker: Ray's context, the stream's shard, the core's loop."""
    job = config["job"]
    cfg = job.cfg
    storage.set_retry_window(cfg.run.storage_retry_s)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.optim.batch_size % world:  # the config's check covers every count: a bug here
        raise RuntimeError(f"{world} workers cannot share optim.batch_size={cfg.optim.batch_size}")
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
    per_epoch = job.steps_per_epoch
    trainer = Trainer(
        cfg,
        job.info.channels,
        job.info.image_size,
        schedule_steps(cfg.optim, per_epoch),
        device,
        gather=gather_batch if world > 1 else None,
        wrap=ray.train.torch.prepare_model if world > 1 else None,
        rank=rank,
    )  # patches differ across ranks, also after a resume
    # The checkpoint `training_stream` chose for this start: the weights and the stream start at
    # the same row. (ray.train.get_checkpoint() names the newest reported one of this fit
    # only, and knows nothing of a checkpoint whose upload was cut off.)
    chosen, saved = ray.get(job.counter.start.remote())
    resume = ResumePoint(*chosen)
    position = StreamPosition.from_state(saved)
    counts: dict[str, int] = {}
    state: dict[str, Any] = {}
    if resume.location is not None:
        try:
            state = load_checkpoint(resume.location)
        except CheckpointNotFoundError:  # deleted since it was chosen: a failure, restarted
            raise CheckpointVanishedError(f"{resume.location} was deleted while read") from None
        trainer.load_state_dict(state)
        counts = state.get("counts", {})
    check_position(saved, trainer)
    lead = rank == 0
    epochs, total = run_epochs(cfg.optim, per_epoch), run_steps(cfg.optim, per_epoch)
    start = {"epochs": epochs, "steps_per_epoch": per_epoch, "start_epoch": trainer.epoch}
    post(job.board if lead else None, {"kind": "start", **start, "start_step": trainer.step})
    if trainer.epoch >= epochs:  # a finished run, rerun: nothing to train
        return
    monitor = None
    if lead and cfg.eval.monitor_test > 0:
        monitor = KnnMonitor(job.splits, cfg.eval, trainer.patch_size, cfg.run.seed, cfg.patches)
    shard = ray.train.get_dataset_shard("train")
    pixels = "image" if cfg.ray.patches_on_trainer else "patches"  # the batches' uint8 column
    # One iterator over every epoch still to train (one Ray Data execution per window of
    # epochs, see `on_ray.read`), cut into epochs of `per_epoch` batches: the actor pool stays
    # up across epoch boundaries, and the prefetch thread fetches on while a checkpoint is
    # written.
    stream = Prefetcher(
        iterate_epochs(
            lambda: shard.iter_torch_batches(
                batch_size=cfg.optim.batch_size // world,
                drop_last=True,
                prefetch_batches=1,
                # uint8 on the wire; the Trainer moves and normalises on its device. Pinned
                # pages let that copy run beside the GPU's compute (non_blocking).
                # Every column needs its dtype here (Ray looks each one up).
                dtypes={
                    pixels: torch.uint8,
                    "id": torch.int64,
                    "epoch": torch.int64,
                    "extent": torch.int64,  # letterboxed images' sizes (data.keep_aspect)
                },
                device="cpu",
                pin_memory=cfg.ray.use_gpu,
            ),
            wanted=total - trainer.step,
            windows=training_windows(job.splits.train, cfg.ray, stream_epochs(position, epochs)),
        ),
        cfg.ray.prefetch_batches,
    )
    tracker = None
    if lead and cfg.tracking.backend != "none":  # the same tracked run across restarts
        tracker = Tracker(cfg, job.run_dir, state.get("tracking_run_id"))
    reporter = RayHooks(
        cfg, job.run_dir, per_epoch, rank, world, position, counts, job.counter, job.board, tracker
    )
    hooks = [h for h in (job.faults, reporter) if h is not None]
    try:
        fit(
            trainer,
            # An epoch resumed inside has only its remaining steps to go; the last epoch of a
            # run of `optim.max_steps` stops at the run's last step.
            lambda epoch: stream.take(min((epoch + 1) * per_epoch, total) - trainer.step),
            epochs,
            hooks,
            cfg.run.log_every_steps,
            monitor,
            total,
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
        board: an `on_ray.progress.ProgressBoard` that rank 0 sends its progress to, or None.
    """
    run_dir = run_dir_of(cfg)
    rows = len(splits.train)
    per_epoch = steps_per_epoch(rows, cfg)
    if per_epoch < 1:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} is larger than the {rows} "
            "training images: lower optim.batch_size or raise data.train_limit"
        )
    saved = resume_point(run_dir).position()
    if saved is not None:  # a resume: its epochs must be this config's
        check_schedule(saved, per_epoch, cfg)
    # On the head node, as Ray Train pins its own state actor: a counter on a worker node that
    # leaves would take the run with it (seen in tests/cluster_scenario.py). "DEFAULT" leaves a
    # Tune trial's placement group, whose bundles hold no head-node resource.
    counter = on_head(RowCounter).remote()
    faults = Faults.from_env(run_dir)
    # The run's checkpoints are ours to choose (`resume_point`) and prune (`RayHooks`), across
    # fits: Ray Train's own record of them, which refuses a run dir whose older checkpoints
    # were pruned, starts empty at each fit.
    storage.remove_file(storage.join(run_dir, RAY_TRAIN_SNAPSHOT))
    job = WorkerJob(cfg, splits, splits.train.info, per_epoch, run_dir, counter, board, faults)
    resources = {"CPU": cfg.ray.cpus_per_worker, **(cfg.ray.trainer_resources or {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        # (mypy sees Train V1's ScalingConfig stub, without V2's elastic (min, max).)
        scaling_config=ScalingConfig(  # type: ignore[call-arg]
            num_workers=worker_range(cfg),  # type: ignore[arg-type]
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker=resources,
            elastic_resize_monitor_interval_s=cfg.ray.elastic_check_s,
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage.resolve(cfg.run.storage_path),
            # Failures end the fit, and `pretrain` restarts it: it ends at once on errors a
            # rerun would repeat. A drained (preempted) node's worker group is restarted by Ray
            # Train itself, from the newest checkpoint as well (`training_stream` is called again).
            failure_config=FailureConfig(max_failures=0),
            # Not a log line per report per rank. (mypy sees Train V1's RunConfig stub.)
            logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
            # RayHooks prunes, across every fit of the run (Ray's count is per fit).
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            callbacks=callbacks,
        ),
        # A callable: Ray Train builds the stream anew at each worker-group start.
        datasets={"train": partial(training_stream, job)},
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


def say(board: Any, text: str) -> None:
    """A line of the run's own: on the driver's console board, or printed without one."""
    if board is None:
        print(f"empssl-ray: {text}", flush=True)
    post(board, {"kind": "note", "text": text})


def pretrain(
    cfg: PretrainConfig,
    callbacks: list | None = None,
    board: Any = None,
    splits: Splits | None = None,
) -> ray.train.Result:
    """Fits the run (resuming it if its name has checkpoints) and returns Ray Train's Result.

    A worker or node that fails is restarted from the newest complete checkpoint. A failure
    after which the run had checkpointed further than at its start (a spot loss in a long run)
    costs nothing; `ray.max_failures` counts the failures without progress in between, so a
    crash loop still ends. A user error (a non-finite loss, a bad image) ends the run at once: a
    restart would meet it again.
    """
    storage.set_retry_window(cfg.run.storage_retry_s)
    splits = splits or open_splits(cfg.data)  # once per run, whatever the restarts
    run_dir = run_dir_of(cfg)
    info = splits.train.info
    cfg, plan = plan_steps(cfg, info.channels, info.image_size, run_dir)  # optim.budget_s
    if plan is not None:
        say(board, plan)
    failures, started_at = 0, resume_point(run_dir).step
    while True:
        try:
            return fit_and_release(build_trainer(cfg, splits, callbacks, board))
        except (ray.train.TrainingFailedError, StorageUnavailableError) as exc:
            # Ray Data's errors reach here as text only: the line is all there is to keep.
            line = user_error_line(exc) if isinstance(exc, ray.train.TrainingFailedError) else None
            if line is not None:
                raise find_user_error(exc) or UserError(line) from None
            # A StorageUnavailableError here is the driver's own: setting up a fit in an outage.
            who = "the run's storage" if isinstance(exc, StorageUnavailableError) else None
            reason = str(exc).strip().splitlines()[-1][:200]
            try:
                now = resume_point(run_dir)
            except StorageUnavailableError as outage:  # still down: a failure without progress
                now, reason = ResumePoint(None, 0, started_at), str(outage)
            progressed, started_at = now.step > started_at, max(now.step, started_at)
            storage_down = "object storage failed" in str(exc) + reason
            if not progressed:
                if failures >= cfg.ray.max_failures:
                    if storage_down:
                        raise StorageError(
                            f"{reason.splitlines()[0]}; gave up after {failures} restarts "
                            "without progress: rerun the same command to resume once the "
                            "store answers (or raise run.storage_retry_s)"
                        ) from None
                    raise
                failures += 1
            # The store still down: give it time before the next try, not a crash loop.
            pause = min(30.0, 2.0**failures) if storage_down and not progressed else 0.0
            budget = (
                "it had progressed since the last start: not counted"
                if progressed
                else f"restart {failures} of ray.max_failures={cfg.ray.max_failures}"
            )
            where = (
                f"the checkpoint at epoch {now.epoch} step {now.step}"
                if now.location is not None
                else "the newest checkpoint"
            )
            failed = f"{who} failed" if who else "a training worker failed"
            after = f" in {pause:.0f} s" if pause else ""
            say(board, f"{failed} ({reason}); restarting{after} from {where} ({budget})")
            time.sleep(pause)
