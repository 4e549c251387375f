"""Ray Data adapter: any registered dataset as a shuffled stream of uint8 patch batches.

Reading happens in Ray tasks, chunk by chunk through the core readers (row groups for Parquet),
never in the driver. Patches are cut by `PatchCutter` actors in an
elastic pool (min..max actors), so CPU nodes can be added while training runs. Everything
travels as uint8: S*S*C bytes per patch; the trainer normalises on its device.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import numpy as np
import ray
import torch

from empssl_ray.augment import cut_patches
from empssl_ray.config import DataConfig, PatchConfig, RayConfig
from empssl_ray.datasets import Chunk, DatasetInfo, ImageDataset, open_dataset
from empssl_ray.faults import maybe_die, maybe_slow

ROWS_PER_READ_TASK = 10_000  # images one read task loads (a few MB to a few hundred MB)
BATCHES_PER_BLOCK = 16  # augmentation batches per block: work for every actor, few shuffle tasks


@ray.remote(num_cpus=0)
class RowCounter:
    """Counts rows by key across tasks (bad images skipped, images augmented)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, key: str, n: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def get(self) -> dict[str, int]:
        return dict(self.counts)


def _load_pieces(batch: dict[str, np.ndarray], dataset: ImageDataset, counter: Any) -> dict:
    """Task body: loads the row ranges of one block -> rows of (image, label, id).

    `batch` holds one block's list of pieces (chunk index, start, stop, first row). `id` is the
    row's position in the split (skipped rows leave gaps), so an epoch's coverage can be checked
    after faults.
    """
    images, labels, ids, skipped = [], [], [], 0
    for i, start, stop, first in zip(*(np.concatenate(batch[k]) for k in _PIECE_KEYS),
                                     strict=True):
        x, y, bad = dataset.load_chunk(Chunk(dataset.chunks[int(i)].source, int(start), int(stop)))
        images.append(x)
        labels.append(y)
        ids.append(first + np.arange(len(y)))
        skipped += bad
    if skipped and counter is not None:
        counter.add.remote("skipped_images", skipped)
    return {"image": np.concatenate(images), "label": np.concatenate(labels),
            "id": np.concatenate(ids)}


_PIECE_KEYS = ("chunk", "start", "stop", "first_row")


def _blocks_of_pieces(chunks: list[Chunk], block_rows: int) -> list[dict[str, list[int]]]:
    """Packs the chunks' rows, in order, into blocks of `block_rows` rows (the last one shorter).

    A block may take pieces of several chunks (a small subset spread over many chunks is one
    read task, not one worker process per chunk) and a chunk may span several blocks.
    """
    blocks: list[dict[str, list[int]]] = []
    block: dict[str, list[int]] = {k: [] for k in _PIECE_KEYS}
    room, first = block_rows, 0
    for i, c in enumerate(chunks):
        start = c.start
        while start < c.stop:
            take = min(room, c.stop - start)
            for key, value in zip(_PIECE_KEYS, (i, start, start + take, first + start - c.start),
                                  strict=True):
                block[key].append(value)
            start, room = start + take, room - take
            if room == 0:
                blocks.append(block)
                block, room = {k: [] for k in _PIECE_KEYS}, block_rows
        first += c.stop - c.start
    if block["chunk"]:
        blocks.append(block)
    return blocks


def read_images(
    cfg: DataConfig, split: str, counter: Any = None, read_cpus: float = 1.0,
    block_rows: int = ROWS_PER_READ_TASK,
) -> tuple[ray.data.Dataset, DatasetInfo, int]:
    """A split as a Ray Dataset of rows {"image": uint8 (C, H, W), "label": int64}.

    Opening the dataset in the driver first turns a missing or malformed dataset into one clear
    error before any task starts.

    Args:
        block_rows: images per block at most. A block is the unit of parallel work downstream
            (a shuffle keeps the block count, and one block is one actor task), so the training
            stream asks for small ones.

    Returns:
        (dataset, info, number of rows before bad images are skipped).
    """
    dataset = open_dataset(cfg, split)
    # Every format, Parquet included, reads the driver's chunks (row groups for Parquet): the
    # rows are exactly the ones the driver picked (data.*_limit spreads them over the files),
    # and the block count is ours. Ray's read_parquet merges small files into one block, which
    # left the actor pool one task an epoch.
    pieces = _blocks_of_pieces(dataset.chunks, block_rows)
    ds = ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
        partial(_load_pieces, dataset=dataset, counter=counter), batch_size=1,
        num_cpus=read_cpus)
    return ds, dataset.info, len(dataset)


def _keep_columns(batch: dict[str, np.ndarray], columns: tuple[str, ...]) -> dict:
    return {k: batch[k] for k in columns}


class PatchCutter:
    """Actor body: images -> n augmented uint8 patches each, with its own random stream.

    Args:
        patches: patch count, size and crop settings.
        image_size: dataset image side (default patch size).
        seed: base seed; each actor adds its process id so actors never repeat each other.
        faults: fault-injection settings (see `empssl_ray.faults`).
        fault_dir: where fault markers go.
        counter: optional RowCounter for images augmented (tests check every image was seen).
        carry: input columns passed through beside the patches (e.g. "id", "label"). Training
            carries none, so the object store holds exactly S*S*C bytes per patch.
    """

    def __init__(self, patches: PatchConfig, image_size: int, seed: int,
                 faults: dict[str, str] | None = None, fault_dir: str = ".",
                 counter: Any = None, carry: tuple[str, ...] = ()) -> None:
        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        torch.set_num_threads(cpus)  # the actor's share, not the node's every core
        self.cfg, self.size = patches, patches.size or image_size
        self.generator = torch.Generator().manual_seed(seed * 100_003 + os.getpid())
        self.faults, self.fault_dir, self.counter = faults or {}, fault_dir, counter
        self.carry = carry
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches += 1
        maybe_die(self.faults, "KILL_AUGMENT_AFTER", self.batches, self.fault_dir)
        maybe_slow(self.faults, "SLOW_AUGMENT_S")
        images = torch.from_numpy(np.ascontiguousarray(np.stack(list(batch["image"]))))
        patches = cut_patches(images, self.cfg, self.size, self.generator)
        if self.counter is not None:
            self.counter.add.remote("augmented_images", len(images))
        return {"patches": patches.numpy(), **{k: np.asarray(batch[k]) for k in self.carry}}


def patch_stream(
    data: DataConfig, patches: PatchConfig, ray_cfg: RayConfig, seed: int,
    faults: dict[str, str] | None = None, fault_dir: str = ".", counter: Any = None,
    carry: tuple[str, ...] = (),
) -> tuple[ray.data.Dataset, DatasetInfo, int]:
    """The training stream: images shuffled anew each epoch, then patches cut on the actor pool.

    With `ray_cfg.patches_on_trainer` the stream stops at the shuffled images and the trainer
    cuts patches on its device (n times fewer bytes on the wire, for CPU-poor clusters).

    Args:
        carry: columns kept beside the patches ("label", "id": the row's index in the split).

    Returns:
        (dataset of {"patches" (n, C, S, S) uint8 | "image" (C, H, W) uint8} plus `carry`,
        info, rows).
    """
    # Blocks of a few augmentation batches: the actors share the work from the first block on.
    ds, info, rows = read_images(data, "train", counter, ray_cfg.read_cpus,
                                 block_rows=ray_cfg.aug_batch_size * BATCHES_PER_BLOCK)
    # reseed_after_execution: every epoch (every execution) draws a new order, reproducibly.
    ds = ds.random_shuffle(seed=ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True),
                           num_cpus=ray_cfg.read_cpus)
    if ray_cfg.patches_on_trainer:
        # A map at read_cpus, not select_columns: its projection task asks a whole CPU, which a
        # small cluster busy with trainers never frees.
        keep = partial(_keep_columns, columns=("image", *carry))
        return exact_tensors(ds.map_batches(keep, num_cpus=ray_cfg.read_cpus)), info, rows
    ds = ds.map_batches(
        PatchCutter,
        fn_constructor_args=(patches, info.image_size, seed, faults, fault_dir, counter, carry),
        batch_size=ray_cfg.aug_batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=ray_cfg.aug_min_actors,
                                           max_size=ray_cfg.aug_max_actors),
        num_cpus=ray_cfg.aug_cpus_per_actor,
        resources=ray_cfg.aug_resources or None,
        # Ray Data's actor pools restart a killed actor and retry its batch by default
        # (max_restarts=-1, max_task_retries=-1): no image is lost from the epoch.
    )
    return exact_tensors(ds), info, rows


def exact_tensors(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Stores tensor columns in Arrow's fixed-shape tensor type: S*S*C bytes a patch, no more.

    Ray's default tensor type keeps an int64 offset per row (half a byte per patch at n=16).
    """
    from ray.data._internal.tensor_extensions.arrow import FixedShapeTensorFormat

    ds.context.arrow_fixed_shape_tensor_format = FixedShapeTensorFormat.ARROW_NATIVE
    return ds
