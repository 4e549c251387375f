"""A training budget in seconds, turned into steps before the run starts.

A cosine schedule needs its length in steps up front, so a budget of wall-clock seconds
(`optim.budget_s`, a sweep's `sweep.budget_s`) becomes `optim.max_steps` once: a few steps of
this run's own model, patch count, patch size and per-worker batch are timed on random images
on this process, and the budget is divided by the median. Comparing trials of different widths
or patch sizes at equal patch-forwards would favour the costly ones; at equal seconds it does
not. The step time is an estimate (one process, no cross-worker traffic, the trainers' threads);
a run's real time is in its metrics.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from dataclasses import dataclass

import torch

from empssl_ray.config import PretrainConfig
from empssl_ray.data import storage
from empssl_ray.method.training import Trainer

PLAN_FILE = "budget.json"  # in the run dir: a resumed run keeps its first plan (and schedule)


@dataclass(frozen=True)
class StepPlan:
    seconds: float  # the budget, wall-clock seconds of training
    step_s: float  # measured median seconds of one optimiser step
    steps: int  # optimiser steps that fit the budget (>= 1)
    measured: int  # steps timed

    def line(self, per_worker_batch: int, threads: int) -> str:
        return (
            f"optim.budget_s={self.seconds:g}: one step took {self.step_s:.3f} s (median of "
            f"{self.measured}, batch {per_worker_batch} a worker, {threads} thread"
            f"{'s' if threads > 1 else ''}): {self.steps} steps"
        )


def measure_step_seconds(
    cfg: PretrainConfig,
    in_channels: int,
    image_size: int,
    batch: int,
    steps: int = 5,
    warmup: int = 2,
) -> float:
    """Median seconds of one training step (patches cut in the step when the trainers cut
    them, `ray.patches_on_trainer`) on (batch, C, image_size, image_size) random uint8 images.

    The model is a throwaway: its weights and the process's random state are not touched. On
    one thread the clock is that thread's CPU time, which other processes' load on the machine
    does not stretch (a trial measured while another runs gets the steps of an idle machine).
    """
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    images = torch.randint(
        0,
        256,
        (batch, in_channels, image_size, image_size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.random.fork_rng():
        trainer = Trainer(cfg, in_channels, image_size, steps_total=steps + warmup)
        patches = trainer.patches_from_images(images)
        times = []
        for i in range(warmup + steps):
            start = clock()
            if cfg.ray.patches_on_trainer:
                patches = trainer.patches_from_images(images)
            trainer.train_step(patches)
            if i >= warmup:
                times.append(clock() - start)
    return statistics.median(times)


def plan_steps(
    cfg: PretrainConfig, in_channels: int, image_size: int, run_dir: str
) -> tuple[PretrainConfig, str | None]:
    """The run's config with `optim.max_steps` set from `optim.budget_s`, and the line saying
    what was measured; the config unchanged (and None) without a seconds budget.

    The plan is written to the run dir and read back on a resume, so a restarted run keeps the
    schedule it started with.
    """
    if cfg.optim.budget_s <= 0:
        return cfg, None
    location = storage.join(run_dir, PLAN_FILE)
    batch = max(1, cfg.optim.batch_size // cfg.ray.num_workers)
    threads = max(1, math.ceil(cfg.ray.cpus_per_worker))
    if storage.exists(location):
        plan = StepPlan(**json.loads(storage.read_bytes(location)))
        note = plan.line(batch, threads) + " (the run's first plan)"
    else:
        # The trainers' thread count: a worker of ray.cpus_per_worker CPUs runs that many.
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            step_s = measure_step_seconds(cfg, in_channels, image_size, batch)
        finally:
            torch.set_num_threads(before)
        plan = StepPlan(cfg.optim.budget_s, step_s, max(1, int(cfg.optim.budget_s / step_s)), 5)
        storage.write_bytes(location, json.dumps(plan.__dict__).encode())
        note = plan.line(batch, threads)
    planned = copy.deepcopy(cfg)
    planned.optim.max_steps = plan.steps
    return planned, note
