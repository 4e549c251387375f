"""Ray Data feeding the trainer: data-wait, patches/s, bytes per patch, 1 vs 2 actors.

Three measurements in one run on a local Ray (2 CPUs by default):
1. augmentation throughput of the actor pool with 1 and with 2 actors (1 CPU each), on images
   already read and shuffled, so only the patch cutting is timed;
2. bytes per patch through the object store, against the S*S*C bytes of one uint8 patch;
3. a TorchTrainer (1 worker, 1 CPU, small backbone) fed by 1 augmentation actor (1 CPU):
   the fraction of time it waits on data, next to the same loop on patches already in memory.

    .venv/bin/python bench/pipeline.py            # about 7 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from typing import Any

import ray
import torch

from empssl_ray.config import DataConfig, PatchConfig, PretrainConfig, RayConfig
from empssl_ray.data.datasets import open_dataset, open_splits
from empssl_ray.presets import TINY, apply_preset


@ray.remote(num_cpus=0)
class BatchClock:
    """Collects (actor pid, start, end, patches) of every augmentation batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float, float, int]] = []

    def add(self, pid: int, start: float, end: float, patches: int) -> None:
        self.batches.append((pid, start, end, patches))

    def steady_rate(self) -> float:
        """Patches/s while every actor works: from the last actor's first batch to the first
        actor's last batch, batches straddling the window's edges counted pro rata."""
        pids = {b[0] for b in self.batches}
        lo = max(min(b[1] for b in self.batches if b[0] == p) for p in pids)
        hi = min(max(b[2] for b in self.batches if b[0] == p) for p in pids)
        inside = sum(n * max(0.0, min(e, hi) - max(s, lo)) / (e - s) for _, s, e, n in self.batches)
        return inside / (hi - lo)


def timed_cutter() -> type:
    """PatchCutter that reports each batch's wall span to a BatchClock (keyword `clock`)."""
    from empssl_ray.on_ray.stream import PatchCutter

    class TimedPatchCutter(PatchCutter):
        def __init__(self, *args: Any, clock: Any) -> None:
            super().__init__(*args)
            self.clock = clock

        def __call__(self, batch: dict) -> dict:
            start = time.time()
            out = super().__call__(batch)
            n = out["patches"].shape[0] * out["patches"].shape[1]
            self.clock.add.remote(os.getpid(), start, time.time(), n)
            return out

    return TimedPatchCutter


def patch_pool(
    images: ray.data.Dataset,
    patches: PatchConfig,
    image_size: int,
    actors: int,
    batch: int,
    clock: Any = None,
) -> ray.data.Dataset:
    """The training stream's augmentation stage over `images`, on `actors` 1-CPU actors."""
    from empssl_ray.on_ray.stream import PatchCutter, exact_tensors

    timed = clock is not None
    return exact_tensors(
        images.map_batches(
            timed_cutter() if timed else PatchCutter,
            fn_constructor_args=(patches, image_size, 0),
            fn_constructor_kwargs={"clock": clock} if timed else None,
            batch_size=batch,
            compute=ray.data.ActorPoolStrategy(min_size=actors, max_size=actors),
            num_cpus=1,
        )
    )


def augment_rate(
    images: ray.data.Dataset, patches: PatchConfig, image_size: int, actors: int, batch: int
) -> float:
    """Steady patches/s of a pool of `actors` 1-CPU actors, timed by the actors themselves.

    Counted while every actor of the pool works: actor start-up (a torch import per process,
    paid once per epoch and hidden by the trainer's prefetching) and the last block's tail stay
    out. Blocks are consumed by reference: the driver fetches no pixels.
    """
    clock = BatchClock.remote()  # type: ignore[attr-defined]
    out = patch_pool(images, patches, image_size, actors, batch, clock)
    for _ in out.iter_internal_ref_bundles():
        pass
    time.sleep(1.0)  # the actors' last fire-and-forget reports reach the clock
    return ray.get(clock.steady_rate.remote())


def bytes_per_patch(
    images: ray.data.Dataset, patches: PatchConfig, image_size: int, batch: int
) -> float:
    """Object-store bytes of the training stream's blocks, per patch (what travels to trainers)."""
    done = patch_pool(images, patches, image_size, 1, batch).materialize()
    return done.size_bytes() / (done.count() * patches.num_patches)


def trainer_config(args: argparse.Namespace) -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.data = DataConfig(name="fashion-mnist", train_limit=args.train_images)
    cfg.patches = PatchConfig(num_patches=args.patches, size=args.size)
    apply_preset(cfg, TINY, sections=("model",))  # the tiny-run preset's model, at --width
    cfg.model.width = args.width
    cfg.optim.epochs, cfg.optim.batch_size = args.epochs, args.batch_size
    cfg.eval.monitor_test = 0
    # One core each for the trainer and the augmentation actor; the read/shuffle tasks need a
    # logical share too, or they never schedule on a 2-CPU Ray (so the trainer asks 0.75).
    cfg.ray = RayConfig(
        num_workers=1,
        cpus_per_worker=0.75,
        aug_min_actors=1,
        aug_max_actors=1,
        aug_cpus_per_actor=1.0,
        read_cpus=0.25,
        aug_batch_size=args.batch_size,
        max_failures=0,
    )
    cfg.run.name, cfg.run.log_every_steps, cfg.run.evaluate = "bench-pipeline", 0, False
    return cfg


def in_memory_loop(cfg: PretrainConfig, steps: int) -> float:
    """Patches/s of the same Trainer on patches already in memory (no data wait at all)."""
    from empssl_ray.data.datasets import load_split
    from empssl_ray.method.training import Trainer

    torch.set_num_threads(1)  # the Ray trainer gets 1 CPU: compare like with like
    images, _ = load_split(cfg.data, "train", limit=cfg.optim.batch_size * steps)
    trainer = Trainer(cfg, images.shape[1], images.shape[2], steps)
    x = torch.from_numpy(images)
    batches = [
        {"patches": trainer.patches_from_images(x[i : i + cfg.optim.batch_size])}
        for i in range(0, len(x), cfg.optim.batch_size)
    ]
    trainer.run_epoch(batches[:2])  # warm-up
    return trainer.run_epoch(batches)["patches_per_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--aug-images", type=int, default=36000)
    parser.add_argument("--patches", type=int, default=16)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-trainer", action="store_true", help="augmentation figures only")
    args = parser.parse_args(argv)

    from empssl_ray.on_ray.read import read_images
    from empssl_ray.on_ray.stream import BATCHES_PER_BLOCK
    from empssl_ray.on_ray.train import build_trainer
    from empssl_ray.runs.metrics import read_metrics

    ray.init(address="local", num_cpus=2, logging_level=logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    patches = PatchConfig(num_patches=args.patches, size=args.size)
    data = DataConfig(name="fashion-mnist", train_limit=args.aug_images)
    # Read and shuffle into the training stream's blocks once, outside the timings.
    images, info, rows = read_images(
        open_dataset(data, "train"),
        read_cpus=0.25,
        shuffle_seed=0,
        block_rows=BATCHES_PER_BLOCK * args.batch_size,
    )
    images = images.materialize()
    rates: dict[int, list[float]] = {}
    for actors in (1, 2, 1, 2):  # interleaved: drift on a shared machine hits both alike
        rate = augment_rate(images, patches, info.image_size, actors, args.batch_size)
        rates.setdefault(actors, []).append(rate)
    best = {k: max(v) for k, v in rates.items()}
    per_patch = bytes_per_patch(images.limit(2000), patches, info.image_size, args.batch_size)
    wire = info.channels * args.size * args.size
    print(
        f"augmentation, {rows} images x {args.patches} patches of {args.size}x{args.size}, "
        "while every actor works, best of 2 passes:"
    )
    print(f"  1 actor : {best[1]:10,.0f} patches/s   2 actors: {best[2]:10,.0f} patches/s")
    print(f"  object store: {per_patch:.2f} bytes per patch (uint8 S*S*C = {wire})")

    print(f"ratio aug 2 vs 1 actors: {best[2] / best[1]:.2f}x (goal >= 1.7x)")
    print(f"ratio bytes per patch vs S*S*C: {per_patch / wire:.4f} (goal <= 1.0)")
    if args.skip_trainer:
        return
    cfg = trainer_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.run.storage_path = tmp
        build_trainer(cfg, open_splits(cfg.data)).fit()
        epochs = [r for r in read_metrics(os.path.join(tmp, cfg.run.name)) if r["kind"] == "epoch"]
    ray.shutdown()
    waited = sum(r["data_wait_frac"] * r["epoch_time_s"] for r in epochs)
    wait = waited / sum(r["epoch_time_s"] for r in epochs)
    ray_rate = epochs[-1]["patches_per_s"]
    memory_rate = in_memory_loop(cfg, steps=30)
    print(
        f"trainer (1 CPU, {cfg.model.backbone} width {args.width}) fed by 1 augmentation actor "
        f"(1 CPU), {args.train_images} images x {args.epochs} epochs:"
    )
    for r in epochs:
        print(
            f"  epoch {r['epoch']}: data wait {r['data_wait_frac']:.3f} of "
            f"{r['epoch_time_s']:.0f} s, {r['patches_per_s']:,.0f} patches/s"
        )
    print(f"  last epoch {ray_rate:,.0f} patches/s fed by Ray Data, {memory_rate:,.0f} from memory")
    print(f"ratio data wait over the run: {wait:.3f} of trainer time (goal <= 0.10)")
    print(f"ratio Ray-fed vs in-memory trainer: {ray_rate / memory_rate:.2f}x")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    main()
