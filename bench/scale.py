"""Streaming at scale: the training stream as the dataset grows, three designs side by side.

Synthetic Parquet datasets of 1x, 4x and 16x a base size (random RGB PNGs, shuffled rows, files
of 2,000 rows in row groups of 1,000) feed the training stream (images in a new order each
epoch, patches cut by one `PatchCutter` actor in batches of 32) for 3 or more epochs, through the
trainer's `Prefetcher`, into a consumer: a trivial one (counts the patches), and with
`--smoke-model` also the smoke model's training step on one thread. The designs (`--designs`;
by default the first and the current one), in one run:

- `all-to-all`: the split read in order, then Ray Data's `random_shuffle` (reseeded per epoch),
  one execution per epoch: the first design;
- `per-epoch`: the streaming read plan (slices permuted per epoch, rows shuffled inside blocks),
  one execution per epoch: the actor pool starts again at every epoch;
- `one-exec`: the same read plan with every epoch in one execution, what `patch_stream` builds
  today: the pool stays up across the boundary.

Printed per design and size: time to the first batch, images/s over all epochs and warm (over
the same images 16,000 to 48,000 at every size: past the start-up, with at least twice Ray
Data's read-ahead still to stream after them, hence 15 epochs at 1x and 4 at 4x), peak
object-store memory and bytes spilled (Ray's memory summary, polled every 0.25 s), and the
consumer's longest wait at an epoch boundary (for an epoch's first batch) as a fraction of the
epoch it opens, beside its longest wait for any other batch. Each case runs on a fresh local
Ray of 2 CPUs, one case after another.

    .venv/bin/python bench/scale.py --smoke-model    # about 20 minutes on 2 cores
    .venv/bin/python bench/scale.py --base 500 --warm 2000 6000   # quicker
    .venv/bin/python bench/scale.py --designs per-epoch one-exec --scales 1 4

The object store is kept small (96 MiB) so that the 16x dataset (64,000 decoded 64x64 images,
786 MB an epoch) does not fit in it, as an ImageNet-sized one fits in no real node's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
from PIL import Image

from empssl_ray.config import DataConfig, PatchConfig, RayConfig
from empssl_ray.on_ray.logs import silence_driver

FILE_ROWS = 2_000
DESIGNS = ("all-to-all", "per-epoch", "one-exec")
BATCH = 64  # images per consumer batch
MIN_EPOCHS = 3
WARM = (16_000, 48_000)  # the images over which the sustained rate is taken, at every size


def epochs_for(images: int, side: int, store_mib: int, warm_to: int) -> int:
    """Epochs to stream: at least 3, and enough that twice what Ray Data holds in flight (half
    the store, in decoded images) still follows the warm window. Otherwise a small set's window
    is served from what was read ahead, faster than the stream sustains."""
    in_flight = store_mib * 2**20 // 2 // (side * side * 3)
    return max(MIN_EPOCHS, -(-(warm_to + 2 * in_flight) // images))


def make_dataset(root: Path, images: int, side: int) -> DataConfig:
    """`images` random RGB PNGs of side x side (train) and 100 (test) as Parquet under root."""
    from empssl_ray.data.prepare import write_shard

    rng = np.random.default_rng(0)
    for split, n in (("train", images), ("test", 100)):
        for part, start in enumerate(range(0, n, FILE_ROWS)):
            blobs, labels = [], []
            for i in range(start, min(n, start + FILE_ROWS)):
                buf = io.BytesIO()
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
                blobs.append(buf.getvalue())
                labels.append(i % 10)
            write_shard(str(root / split / f"part-{part:05d}.parquet"), blobs, labels, 3)
    return DataConfig(name="parquet", root=str(root))


def all_to_all_stream(
    data: DataConfig, patches: PatchConfig, ray_cfg: RayConfig, seed: int, epoch: int
) -> ray.data.Dataset:
    """The training stream as it was: in-order read, `random_shuffle`, then the actor pool."""
    from empssl_ray.data.datasets import open_dataset
    from empssl_ray.on_ray.read import read_images
    from empssl_ray.on_ray.stream import BATCHES_PER_BLOCK, PatchCutter, exact_tensors

    ds, info, _ = read_images(
        open_dataset(data, "train"),
        read_cpus=ray_cfg.read_cpus,
        block_rows=ray_cfg.aug_batch_size * BATCHES_PER_BLOCK,
    )
    ds = ds.random_shuffle(seed=seed * 1000 + epoch, num_cpus=ray_cfg.read_cpus)
    ds = ds.map_batches(
        PatchCutter,
        fn_constructor_args=(patches, info.image_size, seed),
        batch_size=ray_cfg.aug_batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1),
        num_cpus=ray_cfg.aug_cpus_per_actor,
    )
    return exact_tensors(ds)


class StorePeak:
    """Polls Ray's memory summary in a thread: peak object-store use and the bytes spilled
    while it ran (MiB; Ray's spill counter is cumulative over the session, which is the case's
    own here)."""

    def __init__(self) -> None:
        self.peak, self.spilled, self._stop = 0.0, 0.0, threading.Event()
        self._spilled_before: float | None = None
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _mib(text: str, label: str) -> float:
        found = re.search(rf"{label}\s+([\d.]+)\s*(KiB|MiB|GiB|B)\b", text)
        if not found:
            return 0.0
        scale = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}[found.group(2)]
        return float(found.group(1)) * scale

    def _poll(self) -> None:
        from ray._private.internal_api import memory_summary

        address = ray.get_runtime_context().gcs_address

        while not self._stop.is_set():
            text = memory_summary(address=address, stats_only=True)  # this case's Ray only
            spilled = self._mib(text, "Spilled")
            if self._spilled_before is None:
                self._spilled_before = spilled
            self.peak = max(self.peak, self._mib(text, "Plasma memory usage"))
            self.spilled = max(self.spilled, spilled - self._spilled_before)
            time.sleep(0.25)

    def __enter__(self) -> StorePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def consume(
    epochs_of_batches: Iterable[dict[str, Any]],
    batches_per_epoch: int,
    epochs: int,
    step: Callable[[dict[str, Any]], None],
    warm: tuple[int, int] = WARM,
) -> dict[str, float]:
    """Feeds `epochs` x `batches_per_epoch` batches through the trainer's prefetcher to `step`;
    returns the timings ("warm_per_s": the rate from image warm[0] to image warm[1])."""
    from empssl_ray.data.prefetch import Prefetcher

    start = time.perf_counter()
    stream = Prefetcher(epochs_of_batches, 16)
    first_batch, epoch_spans, boundary_waits, other_waits, images = None, [], [], [], 0
    marks: list[tuple[int, float]] = []  # (images, time) as the warm window opens and closes
    for epoch in range(epochs):
        t0 = last = time.perf_counter()
        worst_other = 0.0
        for i, b in enumerate(stream.take(batches_per_epoch)):
            now = time.perf_counter()
            if first_batch is None:
                first_batch = now - start
            if i == 0 and epoch > 0:
                boundary_waits.append(now - t0)
            elif i > 0:
                worst_other = max(worst_other, now - last)
            step(b)
            images += len(b["patches"])
            last = time.perf_counter()
            if len(marks) < 2 and images >= warm[len(marks)]:
                marks.append((images, last))
        epoch_spans.append(time.perf_counter() - t0)
        other_waits.append(worst_other)
    stream.close()
    total = time.perf_counter() - start
    first_batch = first_batch or float("nan")
    return {
        "first_batch_s": first_batch,
        "images_per_s": images / total,
        # The same images at every size, boundaries included: past the start-up, and (see
        # `epochs_for`) short of the drain of what Ray Data read ahead.
        "warm_per_s": (
            (marks[1][0] - marks[0][0]) / (marks[1][1] - marks[0][1])
            if len(marks) == 2
            else float("nan")
        ),
        # The worst boundary, as a share of the epoch it opens.
        "boundary_frac": max(
            w / span for w, span in zip(boundary_waits, epoch_spans[1:], strict=True)
        ),
        # The longest wait for any other batch of those epochs, on the same scale: a consumer
        # that outruns the stream waits at every batch, and at a boundary no more than that.
        "other_frac": max(
            w / span for w, span in zip(other_waits[1:], epoch_spans[1:], strict=True)
        ),
    }


def batches(
    design: str, data: DataConfig, patches: PatchConfig, ray_cfg: RayConfig, batch: int, epochs: int
) -> Iterator[dict[str, Any]]:
    """The design's batches for `epochs` epochs, one execution per epoch or one for all."""
    from empssl_ray.on_ray.read import iterate_epochs
    from empssl_ray.on_ray.stream import patch_stream, training_windows

    def iterate(ds: ray.data.Dataset) -> Iterator[dict[str, Any]]:
        yield from ds.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True)

    if design == "one-exec":
        split = train_split(data)
        ds = patch_stream(split, patches, ray_cfg, 0, epochs=range(epochs))[0]
        windows = training_windows(split, ray_cfg, range(epochs))
        yield from iterate_epochs(lambda: iterate(ds), epochs * (len_of(data) // batch), windows)
        return
    for epoch in range(epochs):  # each epoch a new execution, in a new order
        if design == "per-epoch":
            yield from iterate(
                patch_stream(train_split(data), patches, ray_cfg, seed=0, epochs=[epoch])[0]
            )
        else:
            yield from iterate(all_to_all_stream(data, patches, ray_cfg, seed=0, epoch=epoch))


def train_split(data: DataConfig) -> Any:
    """The opened training split (`ImageDataset`) the stream reads."""
    from empssl_ray.data.datasets import open_dataset

    return open_dataset(data, "train")


def len_of(data: DataConfig) -> int:
    from empssl_ray.data.datasets import open_dataset

    return len(open_dataset(data, "train"))


def smoke_step(patches: PatchConfig) -> Callable[[dict[str, Any]], None]:
    """The smoke model's training step on a batch of uint8 patches."""
    import torch

    from empssl_ray.launch import compose
    from empssl_ray.method.training import Trainer

    # One thread: the trainer keeps to one core and leaves the other to the actor and the reads
    # (not pinned: Ray's processes may still run on either core).
    torch.set_num_threads(1)
    cfg = compose("pretrain", ["experiment=smoke"])
    cfg.patches = patches
    trainer = Trainer(cfg, 3, 32, 10**6, torch.device("cpu"))  # 32 px images

    def step(b: dict[str, Any]) -> None:
        trainer.train_step(torch.from_numpy(b["patches"].copy()))  # Ray's arrays are read-only

    return step


@contextlib.contextmanager
def local_ray(store_mib: int) -> Iterator[None]:
    """A fresh local Ray for one case: what one case spilled, or left to clean up, does not
    weigh on the next (the all-to-all design spills gigabytes)."""
    ray.init(
        address="local",
        num_cpus=2,
        logging_level=logging.ERROR,
        log_to_driver=False,
        object_store_memory=store_mib * 2**20,
    )
    silence_driver()  # the figures below, not Ray Data's plans
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=4_000, help="images in the 1x dataset")
    parser.add_argument("--side", type=int, default=64, help="image side in pixels")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    # A small object store (Ray Data streams within half of it), so that 16x the base (0.8 GB of
    # decoded 64-px images an epoch) exceeds it many times over, as an ImageNet-sized dataset
    # exceeds any real node's, and 1x (49 MB an epoch) already fills what Ray Data keeps in
    # flight: the peak then shows what grows with the dataset, not the start-up.
    parser.add_argument("--store-mib", type=int, default=96, help="object store size")
    parser.add_argument("--designs", nargs="+", default=["all-to-all", "one-exec"], choices=DESIGNS)
    parser.add_argument("--smoke-model", action="store_true", help="also the smoke model's step")
    parser.add_argument(
        "--warm", type=int, nargs=2, default=list(WARM), help="images of the sustained rate"
    )
    parser.add_argument("--epochs", type=int, help="epochs at every size (default: epochs_for)")
    args = parser.parse_args(argv)

    patches = PatchConfig(num_patches=2, size=16)
    ray_cfg = RayConfig(
        aug_min_actors=1, aug_max_actors=1, aug_cpus_per_actor=1.0, read_cpus=0.5, aug_batch_size=32
    )
    consumers: dict[str, Callable[[dict[str, Any]], None]] = {"trivial": lambda b: None}
    if args.smoke_model:
        consumers["smoke model"] = smoke_step(patches)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            n = args.base * scale
            data = make_dataset(Path(tmp) / f"x{scale}", n, args.side)
            epochs = args.epochs or epochs_for(n, args.side, args.store_mib, args.warm[1])
            for consumer, step in consumers.items():
                for design in args.designs:
                    with local_ray(args.store_mib):
                        source = batches(design, data, patches, ray_cfg, BATCH, epochs)
                        with StorePeak() as store:
                            timings = consume(source, n // BATCH, epochs, step, args.warm)
                    rows.append(
                        {
                            "design": design,
                            "consumer": consumer,
                            "scale": scale,
                            "images": n,
                            "epochs": epochs,
                            **timings,
                            "peak_store_mib": store.peak,
                            "spilled_mib": store.spilled,
                        }
                    )
                    r = rows[-1]
                    print(
                        f"{design:>10} {consumer:>11} {scale:>3}x {n:>7,} images x {epochs}: "
                        f"first batch "
                        f"{r['first_batch_s']:6.2f} s, {r['images_per_s']:7,.0f} images/s "
                        f"({r['warm_per_s']:7,.0f} warm), peak "
                        f"store {r['peak_store_mib']:6.1f} MiB, spilled "
                        f"{r['spilled_mib']:6.1f} MiB, boundary wait "
                        f"{100 * r['boundary_frac']:5.2f}% (any other batch's: at most "
                        f"{100 * r['other_frac']:5.2f}%)",
                        flush=True,
                    )
    lo, hi = min(args.scales), max(args.scales)
    for consumer in consumers:
        for design in args.designs:
            a, b = (
                next(
                    r
                    for r in rows
                    if (r["design"], r["consumer"], r["scale"]) == (design, consumer, s)
                )
                for s in (lo, hi)
            )
            print(
                f"{design} ({consumer}): {hi}x vs {lo}x: first batch "
                f"{b['first_batch_s'] / a['first_batch_s']:.2f}x, peak store "
                f"{b['peak_store_mib'] / max(a['peak_store_mib'], 1e-9):.2f}x, images/s "
                f"{b['images_per_s'] / a['images_per_s']:.2f}x (warm "
                f"{b['warm_per_s'] / a['warm_per_s']:.2f}x); boundary wait "
                f"{100 * a['boundary_frac']:.2f}% / {100 * b['boundary_frac']:.2f}% "
                "(goals: <= 1.5x, <= 1.5x, flat, < 2%)"
            )


if __name__ == "__main__":
    main()
