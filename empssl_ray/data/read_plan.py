"""A split's read plan, Ray-free: slices of rows, blocks of slices, and each epoch's order.

A split is cut into slices (row ranges: small where a row is cheap to reach alone, a whole
Parquet row group otherwise). An epoch permutes the slices with a seed drawn from (seed, epoch),
packs them into blocks of about `block_rows` rows and shuffles the rows inside each block, so
every row comes exactly once per epoch and no step waits for the whole split. The Ray read
(`on_ray.read`) and `prepare` (which writes training rows in such an order) both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from empssl_ray.data.datasets import Chunk, ImageDataset

Piece = tuple[int, int, int, int]  # (chunk index, start, stop, first row's position in the split)
# Slices a block draws from at least. A block of rows of one Parquet row group (as prepare
# writes them: 1,000 rows) would give every batch of an epoch the same 1,000 neighbours; four
# quarter-block slices from four random places mix them, for four partial reads of each row
# group an epoch (bench/mixing.py measures what that costs).
GROUPS_PER_BLOCK = 4


def slices_of(chunks: Sequence[Chunk], slice_rows: int) -> list[Piece]:
    """Each chunk cut into row ranges of at most `slice_rows` rows, in split order."""
    pieces, first = [], 0
    for i, c in enumerate(chunks):
        for start in range(c.start, c.stop, slice_rows):
            stop = min(start + slice_rows, c.stop)
            pieces.append((i, start, stop, first + start - c.start))
        first += c.stop - c.start
    return pieces


def split_slices(
    dataset: ImageDataset, block_rows: int, groups: int = GROUPS_PER_BLOCK
) -> list[Piece]:
    """A split's slices: its format's cheap read size (a whole chunk when 0), at most a
    `groups`-th of a block, so that a shuffled block holds rows of `groups` places of the split
    at least (Parquet: row groups), not of one."""
    return slices_of(
        dataset.chunks, min(dataset.slice_rows or block_rows, max(1, block_rows // groups))
    )


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


def left_out(rows: int, epoch_rows: int | None, seed: int | None, epoch: int) -> np.ndarray | None:
    """(rows,) bool: the rows epoch `epoch` leaves out so that it holds `epoch_rows`, or None
    when it holds them all. Training plans whole global batches (steps x optim.batch_size): the
    split's remainder is left out of the plan, a new random one each epoch (the last rows in
    split order without a seed), instead of ending every epoch in a batch the ranks drop."""
    if epoch_rows is None or epoch_rows >= rows:
        return None
    mask = np.zeros(rows, dtype=bool)
    if seed is None:
        mask[epoch_rows:] = True
    else:
        rng = np.random.default_rng([seed, epoch, 1])
        mask[rng.choice(rows, rows - epoch_rows, replace=False)] = True
    return mask


def load_pieces(
    pieces: Sequence[Piece],
    dataset: ImageDataset,
    shuffle_seed: int | None,
    drop_ids: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Task body: one block's pieces -> rows of image (N, C, H, W) uint8, label, id (and extent
    (N, 2) where the dataset keeps aspect ratios), and the count of bad images skipped
    (data.on_bad_image=skip; the caller counts them where it can).

    `id` is the row's position in the split (skipped bad rows leave gaps), so an epoch's coverage
    can be checked after faults. Rows whose id is in `drop_ids` (trained before a resume) are
    left out, after the shuffle: the others keep the order they had.
    """
    images, labels, ids, skipped = [], [], [], 0
    extents: list[np.ndarray] = []
    for i, start, stop, first in pieces:
        x, y, bad, extent = dataset.load_chunk_extents(Chunk(dataset.chunks[i].source, start, stop))
        images.append(x)
        labels.append(y)
        ids.append(first + np.arange(len(y)))
        if extent is not None:
            extents.append(extent)
        skipped += bad
    rows = {
        "image": np.concatenate(images),
        "label": np.concatenate(labels),
        "id": np.concatenate(ids),
    }
    if dataset.info.keep_aspect:  # where each letterboxed image's pixels are
        rows["extent"] = np.concatenate(extents)
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(rows["id"]))
        rows = {k: v[order] for k, v in rows.items()}
    if drop_ids is not None and len(drop_ids):
        keep = ~np.isin(rows["id"], drop_ids)
        rows = {k: v[keep] for k, v in rows.items()}
    return rows, skipped


class StreamPosition:
    """Which rows of which epochs the model has trained on: where a resumed stream goes on.

    One bit per row of the split for every epoch begun and not yet complete; epochs before
    `complete_through` are done. An epoch is complete once `epoch_rows` of its rows are trained
    (all its plan holds), or once the execution that held it has delivered it (`delivered`:
    rows skipped as unreadable never come). So the bits kept are those of the one or two epochs
    in flight: rows / 8 bytes each (160 KB at ImageNet-1k's 1.28M rows, 1.75 MB at 14M).
    A checkpoint holds it, so a resume re-plans the epochs begun without the rows already
    trained (`unfinished`): across kills and restarts each row is trained once per epoch.
    """

    def __init__(self, rows: int, complete_through: int = 0, epoch_rows: int = 0) -> None:
        self.rows = rows  # rows in the split (ids are 0..rows-1)
        self.epoch_rows = epoch_rows or rows  # rows an epoch's plan holds (whole batches)
        self.complete_through = complete_through  # epochs before this one are fully trained
        self.trained: dict[int, np.ndarray] = {}  # epoch -> (rows,) bool, for epochs begun

    def add(self, epochs: np.ndarray, ids: np.ndarray) -> None:
        """Marks rows `ids` of `epochs` (equal-length int arrays) as trained."""
        for epoch in np.unique(epochs):
            epoch = int(epoch)
            if epoch < self.complete_through:
                continue  # a row trained twice would be a bug upstream; the epoch is done
            mask = self.trained.setdefault(epoch, np.zeros(self.rows, dtype=bool))
            mask[ids[epochs == epoch]] = True
        # Leading epochs whose planned rows are all trained are done: their bits are not kept.
        while (
            self.complete_through in self.trained
            and self.trained[self.complete_through].sum() >= self.epoch_rows
        ):
            self.delivered(self.complete_through + 1)

    def delivered(self, before: int) -> None:
        """Epochs before `before` are complete: their execution delivered every row it had."""
        self.complete_through = max(self.complete_through, before)
        self.trained = {e: m for e, m in self.trained.items() if e >= self.complete_through}

    def repeated(self, epochs: np.ndarray, ids: np.ndarray) -> int:
        """How many of rows `ids` of `epochs` are marked trained already, or come twice."""
        pairs = np.stack([epochs, ids], axis=1) if len(ids) else np.zeros((0, 2), int)
        twice = len(pairs) - len(np.unique(pairs, axis=0))
        for epoch in np.unique(epochs):
            trained = self.trained_in(int(epoch))
            if trained is not None:
                twice += int(trained[ids[epochs == epoch]].sum())
        return twice

    def trained_in(self, epoch: int) -> np.ndarray | None:
        """(rows,) bool of the rows of `epoch` trained, or None when none are (nor were)."""
        if epoch < self.complete_through:
            return np.ones(self.rows, dtype=bool)
        return self.trained.get(epoch)

    def state(self) -> dict[str, Any]:
        """A compact, picklable form (bits packed: rows / 8 bytes per epoch begun)."""
        return {
            "rows": self.rows,
            "epoch_rows": self.epoch_rows,
            "complete_through": self.complete_through,
            # bytes, not arrays: a pickled array's bytes travel latin-1 encoded, 1.5x larger
            "trained": {e: np.packbits(m).tobytes() for e, m in self.trained.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StreamPosition:
        position = cls(int(state["rows"]), int(state["complete_through"]), int(state["epoch_rows"]))
        position.trained = {
            int(e): np.unpackbits(np.frombuffer(bits, np.uint8), count=position.rows).astype(bool)
            for e, bits in state["trained"].items()
        }
        return position


def unfinished(
    plan: Sequence[tuple[list[Piece], int | None]], trained: np.ndarray | None
) -> list[tuple[list[Piece], int | None, np.ndarray]]:
    """An epoch's blocks without the rows already trained (or left out: `left_out`), as a
    (rows,) bool mask: blocks all of whose rows are trained go; every other block keeps its
    seed and lists the ids of its rows to drop (often none)."""
    out = []
    for block, seed in plan:
        ids = np.concatenate([np.arange(p[3], p[3] + p[2] - p[1]) for p in block])
        done = ids[trained[ids]] if trained is not None else ids[:0]
        if len(done) < len(ids):
            out.append((block, seed, done))
    return out
