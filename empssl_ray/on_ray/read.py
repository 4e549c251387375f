"""Ray Data read side: a split as blocks of rows, epoch after epoch in few executions, with no
shuffle that waits for the whole split.

For each epoch `read_plan.epoch_plan` draws that epoch's blocks (see there): every row exactly
once per epoch, a new order each epoch, the same order for the same seed, and nothing held back
until the whole split is read. Consecutive epochs share one execution of the dataset, so its
actor pools stay up across their boundaries; each row carries its epoch. An execution plans at
most `MAX_READ_TASKS` blocks (Ray Data sets every read task up before the first batch), so a
large split's epochs come in windows of a few, one window per execution of the same dataset.
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
    load_pieces,
    split_slices,
    unfinished,
)

ROWS_PER_READ_TASK = 10_000  # images one evaluation read task loads
# Pixels one block holds at most: a 640 px canvas (data.keep_aspect) is 1.2 MB, so 1,024 of them
# would be 1.3 GB in a read task (and again in its shuffled copy); CIFAR's 3 KB never reach it.
BLOCK_BYTES = 256 << 20
MAX_READ_TASKS = 1_024  # blocks one execution plans at most (set-up: about 0.5 ms each here)


_PIECE_KEYS = ("chunk", "start", "stop", "first_row")


class SplitSource(Datasource):
    """Ray Data datasource of one split's read plan over the given epochs, in epoch order.

    Its read tasks only emit the plan (one row per block: the block's pieces, its epoch and its
    shuffle seed); `load_block` reads the pixels as a map, so a bad image fails as a user's
    error. Execution i of the dataset plans the i-th window of `epochs_per_execution` epochs,
    and nothing once they are all planned.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        block_rows: int,
        seed: int | None,
        epochs: Sequence[int],
        position: StreamPosition | None = None,
    ) -> None:
        self.block_rows, self.seed, self.epochs = block_rows, seed, list(epochs)
        self.position = position  # rows trained before a resume: left out of their epochs
        self.pieces = split_slices(dataset, block_rows)
        self.blocks_per_epoch = len(epoch_plan(self.pieces, block_rows, None, 0))
        self.epochs_per_execution = max(1, MAX_READ_TASKS // max(1, self.blocks_per_epoch))

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def window(self, execution: int) -> list[int]:
        """The epochs that execution `execution` of the dataset holds."""
        k = self.epochs_per_execution
        return self.epochs[execution * k : (execution + 1) * k]

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
        """Epoch `epoch`'s blocks, each with the ids of its rows trained before a resume."""
        plan = epoch_plan(self.pieces, self.block_rows, self.seed, epoch)
        trained = self.position.trained_in(epoch) if self.position is not None else None
        return unfinished(plan, trained)


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

    Returns:
        (dataset, info, rows of one epoch before bad images are skipped).
    """
    image_bytes = dataset.info.channels * max(1, dataset.info.image_size) ** 2
    block_rows = max(1, min(block_rows, BLOCK_BYTES // image_bytes))
    source = SplitSource(dataset, block_rows, shuffle_seed, epochs, position)
    blocks = max(1, sum(len(source.blocks(epoch)) for epoch in source.window(0)))
    ds = ray.data.read_datasource(source, num_cpus=read_cpus, override_num_blocks=blocks)
    ds = ds.map_batches(
        partial(load_block, dataset=dataset, counter=counter), batch_size=1, num_cpus=read_cpus
    )
    return ds, dataset.info, len(dataset)


def iterate_epochs(iterate: Callable[[], Iterable[Any]], wanted: int) -> Iterator[Any]:
    """The batches of a `read_images` dataset over its executions, until `wanted` have come or
    an execution yields none: `iterate()` starts the next execution (e.g.
    `lambda: shard.iter_torch_batches(...)`)."""
    count = 0
    while count < wanted:
        empty = True
        for batch in iterate():
            empty = False
            count += 1
            yield batch
        if empty:
            return
