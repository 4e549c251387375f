"""Ray Data read side: a split as blocks of rows, epoch after epoch in few executions, with no
shuffle that waits for the whole split.

For each epoch `read_plan.epoch_plan` draws that epoch's blocks (see there): every row exactly
once per epoch, a new order each epoch, the same order for the same seed, and nothing held back
until the whole split is read. Consecutive epochs share one execution of the dataset, so its
actor pools stay up across their boundaries; each row carries its epoch. An execution plans at
most `ray.blocks_per_execution` blocks (Ray Data sets every read task up before the first
batch), so a large split's epochs come in windows of a few, one execution per window; the
trainer knows the windows beforehand (`stream_windows`) and iterates each one.
Reading runs in Ray tasks through the core readers, never in the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from empssl_ray.data.datasets import DatasetInfo, ImageDataset
from empssl_ray.data.read_plan import (
    Piece,
    StreamPosition,
    epoch_plan,
    left_out,
    load_pieces,
    split_slices,
    unfinished,
)

ROWS_PER_READ_TASK = 10_000  # images one evaluation read task loads
# Pixels one block holds at most: a 640 px canvas (data.keep_aspect) is 1.2 MB, so 1,024 of them
# would be 1.3 GB in a read task (and again in its shuffled copy); CIFAR's 3 KB never reach it.
BLOCK_BYTES = 256 << 20
MAX_READ_TASKS = 1_024  # ray.blocks_per_execution's default (set-up: about 0.5 ms a block here)


_PIECE_KEYS = ("chunk", "start", "stop", "first_row")
DELIVERED = "delivered"  # a batch's key: epochs before it are delivered (`iterate_epochs`)


def capped_block_rows(info: DatasetInfo, block_rows: int) -> int:
    """`block_rows`, lowered so that a block holds at most BLOCK_BYTES of pixels."""
    image_bytes = info.channels * max(1, info.image_size) ** 2
    return max(1, min(block_rows, BLOCK_BYTES // image_bytes))


def epoch_windows(
    blocks_per_epoch: int, epochs: Sequence[int], max_blocks: int = MAX_READ_TASKS
) -> list[list[int]]:
    """`epochs` cut into the windows the dataset's executions hold, one execution each: as many
    whole epochs as fit in `max_blocks` blocks, at least one."""
    k = max(1, max_blocks // max(1, blocks_per_epoch))
    epochs = list(epochs)
    return [epochs[i : i + k] for i in range(0, len(epochs), k)]


def stream_windows(
    dataset: ImageDataset, block_rows: int, epochs: Sequence[int], max_blocks: int = MAX_READ_TASKS
) -> list[list[int]]:
    """The windows of `read_images(dataset, block_rows=..., epochs=..., max_blocks=...)`,
    without Ray: what a trainer iterates (`iterate_epochs`), known before the first batch."""
    block_rows = capped_block_rows(dataset.info, block_rows)
    blocks = len(epoch_plan(split_slices(dataset, block_rows), block_rows, None, 0))
    return epoch_windows(blocks, epochs, max_blocks)


class SplitSource(Datasource):
    """Ray Data datasource of one split's read plan over the given epochs, in epoch order.

    Its read tasks only emit the plan (one row per block: the block's pieces, its epoch and its
    shuffle seed); `load_block` reads the pixels as a map, so a bad image fails as a user's
    error. Execution i of the dataset plans `windows[i]`, and nothing once they are all planned.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        block_rows: int,
        seed: int | None,
        epochs: Sequence[int],
        position: StreamPosition | None = None,
        epoch_rows: int | None = None,
        max_blocks: int = MAX_READ_TASKS,
    ) -> None:
        self.block_rows, self.seed, self.epoch_rows = block_rows, seed, epoch_rows
        self.position = position  # rows trained before a resume: left out of their epochs
        self.pieces = split_slices(dataset, block_rows)
        self.rows = sum(p[2] - p[1] for p in self.pieces)
        blocks = len(epoch_plan(self.pieces, block_rows, None, 0))
        self.windows = epoch_windows(blocks, epochs, max_blocks)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def window(self, execution: int) -> list[int]:
        """The epochs that execution `execution` of the dataset holds."""
        return self.windows[execution] if execution < len(self.windows) else []

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        # Ray counts a dataset's executions in its context (its own file-order shuffle,
        # FileShuffleConfig(reseed_after_execution=True), reads the same counter).
        execution = getattr(data_context, "_execution_idx", 0) if data_context is not None else 0
        return [
            ReadTask(
                partial(_plan_block, block, epoch, shuffle_seed, drop),
                BlockMetadata(num_rows=1, size_bytes=None, exec_stats=None, input_files=None),
                per_task_row_limit=per_task_row_limit,
            )
            for epoch in self.window(execution)
            for block, shuffle_seed, drop in self.blocks(epoch)
        ]

    def blocks(self, epoch: int) -> list[tuple[list[Piece], int | None, np.ndarray]]:
        """Epoch `epoch`'s blocks, each with the ids of its rows trained before a resume or left
        out of the epoch (the remainder of its last global batch)."""
        plan = epoch_plan(self.pieces, self.block_rows, self.seed, epoch)
        skip = left_out(self.rows, self.epoch_rows, self.seed, epoch)
        trained = self.position.trained_in(epoch) if self.position is not None else None
        if trained is not None and skip is not None:
            skip = skip | trained
        return unfinished(plan, trained if skip is None else skip)


def _plan_block(
    block: list[Piece], epoch: int, shuffle_seed: int | None, drop: np.ndarray
) -> Iterable[Any]:
    import pyarrow as pa

    columns = {k: [[int(p[j]) for p in block]] for j, k in enumerate(_PIECE_KEYS)}
    seed = -1 if shuffle_seed is None else shuffle_seed
    table = {**columns, "epoch": [epoch], "shuffle_seed": [seed], "drop": [drop.tolist()]}
    ints = pa.list_(pa.int64())  # one schema for every block, empty `drop` lists included
    schema = pa.schema(
        [(k, ints) for k in _PIECE_KEYS]
        + [("epoch", pa.int64()), ("shuffle_seed", pa.int64()), ("drop", ints)]
    )
    return [pa.table(table, schema=schema)]


def load_block(
    batch: dict[str, np.ndarray], dataset: ImageDataset, counter: Any = None
) -> dict[str, np.ndarray]:
    """Map body: a plan row (one block) -> its rows, shuffled by the block's seed, each with
    the block's epoch."""
    pieces = list(zip(*(map(int, np.concatenate(batch[k])) for k in _PIECE_KEYS), strict=True))
    seed = int(batch["shuffle_seed"][0])
    drop = np.asarray(batch["drop"][0], dtype=np.int64)
    rows, skipped = load_pieces(pieces, dataset, None if seed < 0 else seed, drop)
    if skipped and counter is not None:
        counter.add.remote("skipped_images", skipped)
    rows["epoch"] = np.full(len(rows["id"]), int(batch["epoch"][0]), dtype=np.int32)
    return rows


def read_images(
    dataset: ImageDataset,
    counter: Any = None,
    read_cpus: float = 1.0,
    block_rows: int = ROWS_PER_READ_TASK,
    shuffle_seed: int | None = None,
    epochs: Sequence[int] = (0,),
    position: StreamPosition | None = None,
    epoch_rows: int | None = None,
    max_blocks: int = MAX_READ_TASKS,
) -> tuple[ray.data.Dataset, DatasetInfo, int]:
    """A split as a Ray Dataset of rows {"image": uint8 (C, H, W), "label": int64, "id",
    "epoch"}, once per epoch of `epochs`, epoch after epoch, over one execution per window of
    epochs (`iterate_epochs`); a small split's epochs are all in the first.

    The split comes opened (`open_splits`, once per run in the driver): a missing or malformed
    dataset was one clear error before any task started, and the rows are fixed: exactly the
    ones `open_dataset` picked (data.*_limit spreads them over the files), never "the first N
    to arrive".

    Args:
        dataset: the opened split.
        block_rows: images per block at most (and at most BLOCK_BYTES of pixels). A block is
            the unit of parallel work downstream (one block is one actor task) and the window
            of the in-block shuffle.
        shuffle_seed: None reads in split order; a seed gives a new order every epoch.
        epochs: the epochs the dataset holds (a resumed run: those it still has to train).
            Evaluation reads one, in split order.
        position: the rows a resumed run trained already, left out of their epochs.
        epoch_rows: rows each epoch's plan keeps (training: whole global batches); None: all.
        max_blocks: blocks one execution plans at most (`ray.blocks_per_execution`).

    Returns:
        (dataset, info, rows of one epoch before bad images are skipped).
    """
    block_rows = capped_block_rows(dataset.info, block_rows)
    source = SplitSource(
        dataset, block_rows, shuffle_seed, epochs, position, epoch_rows, max_blocks
    )
    blocks = max(1, sum(len(source.blocks(epoch)) for epoch in source.window(0)))
    ds = ray.data.read_datasource(source, num_cpus=read_cpus, override_num_blocks=blocks)
    ds = ds.map_batches(
        partial(load_block, dataset=dataset, counter=counter), batch_size=1, num_cpus=read_cpus
    )
    return ds, dataset.info, len(dataset)


def iterate_epochs(
    iterate: Callable[[], Iterable[dict[str, Any]]], wanted: int, windows: Sequence[Sequence[int]]
) -> Iterator[dict[str, Any]]:
    """The batches of a `read_images` dataset over its executions, one per window of `windows`
    (`stream_windows`), until `wanted` have come or every window has: `iterate()` starts the
    next execution (e.g. `lambda: shard.iter_torch_batches(...)`). A window that yields no
    batch (its rows fewer than a batch: an epoch resumed near its end) is not the stream's end.

    Each batch carries `DELIVERED`: the epochs before it are delivered, every row they had
    trained or dropped (a partial last batch, unreadable images). The last batch of an
    execution carries its window's end, so the position completes an epoch its rows cannot.
    """
    count = 0
    delivered = windows[0][0] if windows and windows[0] else 0
    for window in windows:
        if count >= wanted:
            return
        held = None  # one batch back: an execution's last batch is known at its end
        for batch in iterate():
            if held is not None:
                count += 1
                yield {**held, DELIVERED: delivered}
            held = batch
        delivered = max(delivered, window[-1] + 1) if window else delivered
        if held is not None:
            count += 1
            yield {**held, DELIVERED: delivered}
