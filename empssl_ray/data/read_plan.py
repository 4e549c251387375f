"""A split's read plan, Ray-free: slices of rows, blocks of slices, and each epoch's order.

A split is cut into slices (row ranges: small where a row is cheap to reach alone, a whole
Parquet row group otherwise). An epoch permutes the slices with a seed drawn from (seed, epoch),
packs them into blocks of about `block_rows` rows and shuffles the rows inside each block, so
every row comes exactly once per epoch and no step waits for the whole split. The Ray read
(`ray_read`) and `prepare` (which writes training rows in such an order) both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from empssl_ray.data.datasets import Chunk, ImageDataset

Piece = tuple[int, int, int, int]  # (chunk index, start, stop, first row's position in the split)


def slices_of(chunks: Sequence[Chunk], slice_rows: int) -> list[Piece]:
    """Each chunk cut into row ranges of at most `slice_rows` rows, in split order."""
    pieces, first = [], 0
    for i, c in enumerate(chunks):
        for start in range(c.start, c.stop, slice_rows):
            stop = min(start + slice_rows, c.stop)
            pieces.append((i, start, stop, first + start - c.start))
        first += c.stop - c.start
    return pieces


def split_slices(dataset: ImageDataset, block_rows: int) -> list[Piece]:
    """A split's slices: its format's cheap read size (a whole chunk when 0), at most a block."""
    return slices_of(dataset.chunks, min(dataset.slice_rows or block_rows, block_rows))


def pack(pieces: Sequence[Piece], block_rows: int) -> list[list[Piece]]:
    """Consecutive pieces grouped into blocks of at most `block_rows` rows (a piece larger than
    that is a block of its own)."""
    blocks: list[list[Piece]] = [[]]
    rows = 0
    for piece in pieces:
        n = piece[2] - piece[1]
        if blocks[-1] and rows + n > block_rows:
            blocks.append([])
            rows = 0
        blocks[-1].append(piece)
        rows += n
    return [b for b in blocks if b]


def epoch_plan(
    pieces: Sequence[Piece], block_rows: int, seed: int | None, epoch: int
) -> list[tuple[list[Piece], int | None]]:
    """The blocks of one epoch and the seed shuffling rows inside each (None: split order)."""
    if seed is None:
        return [(block, None) for block in pack(pieces, block_rows)]
    rng = np.random.default_rng([seed, epoch])
    blocks = pack([pieces[i] for i in rng.permutation(len(pieces))], block_rows)
    return [
        (block, int(s))
        for block, s in zip(blocks, rng.integers(2**31, size=len(blocks)), strict=True)
    ]


def load_pieces(
    pieces: Sequence[Piece], dataset: ImageDataset, shuffle_seed: int | None, counter: Any = None
) -> dict[str, np.ndarray]:
    """Task body: one block's pieces -> rows of image (N, C, H, W) uint8, label, id.

    `id` is the row's position in the split (skipped bad rows leave gaps), so an epoch's coverage
    can be checked after faults.
    """
    images, labels, ids, skipped = [], [], [], 0
    for i, start, stop, first in pieces:
        x, y, bad = dataset.load_chunk(Chunk(dataset.chunks[i].source, start, stop))
        images.append(x)
        labels.append(y)
        ids.append(first + np.arange(len(y)))
        skipped += bad
    if skipped and counter is not None:
        counter.add.remote("skipped_images", skipped)
    rows = {
        "image": np.concatenate(images),
        "label": np.concatenate(labels),
        "id": np.concatenate(ids),
    }
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(rows["id"]))
        rows = {k: v[order] for k, v in rows.items()}
    return rows
