"""CPU time of one training step on the smoke model, patches cut on the trainer (no Ray).

One step is what `Trainer.run_epoch` does per batch with `ray.patches_on_trainer=true`: cut the
patches from a (B, C, H, W) uint8 batch, forward, loss, backward, LARS step. The model and sizes
are the `experiment=smoke` preset's (resnet-narrow w8, 4 patches of 16x16 from 28x28 one-channel
images, batch 64 on one process). Steps are timed one by one after a warm-up and the median is
printed; `--path` picks the patch path when the installed `Trainer` has both.

    python bench/step_time.py                       # both paths, side by side
    PYTHONPATH=/tmp/old python bench/step_time.py   # an older checkout of empssl_ray
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from empssl_ray.config import PretrainConfig
from empssl_ray.method.training import Trainer
from empssl_ray.presets import TINY, apply_preset


def smoke_config(batch_size: int) -> PretrainConfig:
    """The smoke preset's model, patch and batch sizes (conf/experiment/smoke.yaml)."""
    cfg = apply_preset(PretrainConfig(), TINY, sections=("model", "patches"))
    cfg.optim.batch_size = batch_size
    return cfg


def time_steps(path: str, steps: int, warmup: int, batch_size: int) -> list[float]:
    """Seconds of each of `steps` timed steps on one path ("grouped" or "sync-free")."""
    torch.manual_seed(0)
    trainer = Trainer(smoke_config(batch_size), 1, 28, steps_total=steps + warmup)
    if hasattr(trainer, "sync_free_patches"):
        trainer.sync_free_patches = path == "sync-free"
    elif path != "grouped":
        raise SystemExit("this empssl_ray has only the grouped patch path")
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch_size, 1, 28, 28), dtype=torch.uint8, generator=g)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        trainer.run_epoch([{"image": images}], log_every=1)  # one step, reported like a run's
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", choices=["grouped", "sync-free", "both"], default="both")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import empssl_ray

    print(
        f"empssl_ray from {Path(empssl_ray.__file__).parent}, torch {torch.__version__}, "
        f"threads {args.threads}, batch {args.batch_size}"
    )
    paths = ["grouped", "sync-free"] if args.path == "both" else [args.path]
    has_both = hasattr(Trainer(smoke_config(8), 1, 28, 1), "sync_free_patches")
    for path in paths:
        if path == "sync-free" and not has_both:
            print(f"{path:<10} (not in this checkout)")
            continue
        times = time_steps(path, args.steps, args.warmup, args.batch_size)
        print(
            f"{path:<10} median {1e3 * statistics.median(times):7.1f} ms/step "
            f"(min {1e3 * min(times):.1f}, {len(times)} steps)"
        )


if __name__ == "__main__":
    main()
