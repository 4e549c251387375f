"""Benchmark: what mixing row groups into every training block costs, side by side.

The training stream's blocks take quarter-block slices from four random places of a Parquet
split (`read_plan.GROUPS_PER_BLOCK`), so that a batch's images do not all come from one
1,000-row group; each row group is then read (in part) four times an epoch. This times the
read side of one epoch, the core's own path that Ray's read tasks and actors run (read the
block's slices, decode, shuffle, cut 16 patches an image), with blocks of one group and of
four, rounds interleaved in one process so that load from other work hits both alike.

    .venv/bin/python bench/mixing.py [--images 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from empssl_ray.config import DataConfig, PatchConfig
from empssl_ray.data.datasets import open_dataset
from empssl_ray.data.prepare import prepare
from empssl_ray.data.read_plan import epoch_plan, load_pieces, split_slices
from empssl_ray.method.patches import cut_patches

BLOCK_ROWS = 64 * 16  # the stream's blocks: aug_batch_size 64 x 16 batches


def epoch_rate(dataset, groups: int, patches: PatchConfig, epoch: int) -> tuple[float, float]:
    """(patches per second over one epoch's blocks, mean row groups a block draws from)."""
    pieces = split_slices(dataset, BLOCK_ROWS, groups)
    plan = epoch_plan(pieces, BLOCK_ROWS, seed=0, epoch=epoch)
    generator = torch.Generator().manual_seed(epoch)
    start, cut = time.perf_counter(), 0
    for block, seed in plan:
        rows, _ = load_pieces(block, dataset, seed)
        images = torch.from_numpy(rows["image"])
        cut += cut_patches(images, patches, images.shape[-1], generator).shape[:2].numel()
    # prepare writes 1,000-row groups: a row's group is its position // 1000.
    mixed = statistics.mean(
        len({row // 1000 for p in block for row in range(p[3], p[3] + p[2] - p[1])})
        for block, _ in plan
    )
    return cut / (time.perf_counter() - start), mixed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    patches = PatchConfig(num_patches=16)
    with tempfile.TemporaryDirectory() as tmp:
        prepare(DataConfig(name="fashion-mnist", train_limit=args.images, test_limit=100), tmp)
        dataset = open_dataset(DataConfig(name="parquet", root=tmp), "train")
        rates: dict[int, list[float]] = {1: [], 4: []}
        mixed: dict[int, float] = {}
        for r in range(args.rounds):
            for groups in (1, 4):
                rate, mixed[groups] = epoch_rate(dataset, groups, patches, epoch=r)
                rates[groups].append(rate)
                print(f"round {r + 1}: {groups} group(s) a block: {rate:,.0f} patches/s")
    one, four = (statistics.median(rates[g]) for g in (1, 4))
    print(
        f"\n{args.images:,} Fashion-MNIST images, 16 patches each, 1 thread, median of "
        f"{args.rounds} epochs:\n"
        f"  blocks of one row group : {one:,.0f} patches/s ({mixed[1]:.1f} groups a block)\n"
        f"  blocks of four slices   : {four:,.0f} patches/s ({mixed[4]:.1f} groups a block)\n"
        f"  ratio mixed / unmixed   : {four / one:.3f}"
    )


if __name__ == "__main__":
    main()
