"""Ray Data adapter: any registered dataset as a shuffled stream of uint8 patch batches.

Reading (`on_ray.read`) happens in Ray tasks through the core readers, never in the driver, in a
new order every epoch without a shuffle that waits for the whole split. Patches are cut by
`PatchCutter` actors in an elastic pool (min..max actors), so CPU nodes can be added while
training runs. Everything travels as uint8: S*S*C bytes per patch; the trainer normalises on
its device.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import ray
import torch

from empssl_ray.config import PatchConfig, RayConfig
from empssl_ray.data.datasets import DatasetInfo, ImageDataset
from empssl_ray.data.read_plan import StreamPosition
from empssl_ray.faults import Faults
from empssl_ray.method.patches import cut_patches, patch_seed, patch_size_for
from empssl_ray.on_ray.read import read_images, stream_windows

BATCHES_PER_BLOCK = 16  # augmentation batches per block: work for every actor, the shuffle window


class Tally:
    """The run's tally (as the `RowCounter` actor on the head node): rows counted by key across
    tasks (bad images skipped, images augmented), and where the current worker-group start
    resumes (`set_start`)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.at_start: dict[str, int] = {}  # the counts when the worker group started
        self.resume: Any = None

    def set_start(self, resume: Any) -> None:
        """The resume decision of a worker-group start, made once by the stream's builder."""
        self.resume, self.at_start = resume, dict(self.counts)

    def start(self) -> Any:
        return self.resume

    def add(self, key: str, n: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def get(self) -> dict[str, int]:
        return dict(self.counts)

    def since_start(self) -> dict[str, int]:
        """The counts of this worker group's start on: a restart inside one fit resumes a
        checkpoint whose counts hold the earlier ones already."""
        return {k: n - self.at_start.get(k, 0) for k, n in self.counts.items()}


RowCounter: Any = ray.remote(num_cpus=0)(Tally)


def _keep_columns(batch: dict[str, np.ndarray], columns: tuple[str, ...]) -> dict:
    return {k: batch[k] for k in columns}


def extent_of(batch: dict) -> torch.Tensor | None:
    """A batch's `extent` column ((B, 2) letterboxed images' sizes) as a tensor, or None.
    (Here, not in `on_ray.read`: read tasks never import torch.)"""
    if "extent" not in batch:
        return None
    extent = batch["extent"]
    return torch.as_tensor(np.stack(list(extent)) if extent.dtype == object else extent)


class PatchCutter:
    """Actor body: images -> n augmented uint8 patches each, with its own random stream.

    Args:
        patches: patch count, size and crop settings.
        image_size: dataset image side (default patch size).
        seed: the run's seed; each actor's stream also hashes its process id (`patch_seed`), so
            actors never repeat each other or a trainer.
        faults: the drills asked for (`empssl_ray.faults`), or None.
        counter: optional RowCounter for images augmented (tests check every image was seen).
        carry: input columns passed through beside the patches (e.g. "id", "label"). Training
            carries none, so the object store holds exactly S*S*C bytes per patch.
    """

    def __init__(
        self,
        patches: PatchConfig,
        image_size: int,
        seed: int,
        faults: Faults | None = None,
        counter: Any = None,
        carry: tuple[str, ...] = (),
    ) -> None:
        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        torch.set_num_threads(cpus)  # the actor's share, not the node's every core
        self.cfg, self.size = patches, patch_size_for(patches, image_size)
        self.generator = torch.Generator().manual_seed(patch_seed(seed, "cutter", os.getpid()))
        self.faults, self.counter = faults, counter
        self.carry = carry
        self.batches = 0
        if counter is not None:  # the pool's size over a run: tests check it is not restarted
            counter.add.remote("patch_cutters_started", 1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches += 1
        if self.faults is not None:
            self.faults.after_augment_batch(self.batches)
        images = torch.from_numpy(np.ascontiguousarray(np.stack(list(batch["image"]))))
        patches = cut_patches(images, self.cfg, self.size, self.generator, extent=extent_of(batch))
        if self.counter is not None:
            self.counter.add.remote("augmented_images", len(images))
        return {"patches": patches.numpy(), **{k: np.asarray(batch[k]) for k in self.carry}}


def patch_stream(
    dataset: ImageDataset,
    patches: PatchConfig,
    ray_cfg: RayConfig,
    seed: int,
    faults: Faults | None = None,
    counter: Any = None,
    carry: tuple[str, ...] = (),
    epochs: Sequence[int] = (0,),
    position: StreamPosition | None = None,
    epoch_rows: int | None = None,
) -> tuple[ray.data.Dataset, DatasetInfo, int]:
    """The training stream: images in a new order each epoch, then patches cut on the actor pool.

    The order comes from the read plan (slices permuted per epoch, rows shuffled inside each
    block of `aug_batch_size` x 16 images; see `on_ray.read`): no operator waits for the whole
    split, so the first batch comes after one block is read, at any dataset size. All `epochs`
    are one execution: the actor pool, grown to what the trainers ask for, stays up from one
    epoch to the next, and the next epoch's blocks are read while this one's last are cut.

    With `ray_cfg.patches_on_trainer` the stream stops at the shuffled images and the trainer
    cuts patches on its device (n times fewer bytes on the wire, for CPU-poor clusters).

    Args:
        dataset: the opened training split.
        carry: columns kept beside the patches ("label", "id": the row's index in the split,
            "epoch").
        epochs: the epochs the stream holds, in order (a resumed run: those still to train).
        position: the rows a resumed run trained already (left out of their epochs).
        epoch_rows: rows each epoch plans (whole global batches); None: the whole split.

    Returns:
        (dataset of {"patches" (n, C, S, S) uint8 | "image" (C, H, W) uint8} plus `carry`,
        info, rows).
    """
    # Blocks of a few augmentation batches: the actors share the work from the first block on.
    ds, info, rows = read_images(
        dataset,
        counter,
        ray_cfg.read_cpus,
        block_rows=ray_cfg.aug_batch_size * BATCHES_PER_BLOCK,
        shuffle_seed=seed,
        epochs=epochs,
        position=position,
        epoch_rows=epoch_rows,
        max_blocks=ray_cfg.blocks_per_execution,
    )
    if ray_cfg.patches_on_trainer:
        # A map at read_cpus, not select_columns: its projection task asks a whole CPU, which a
        # small cluster busy with trainers never frees.
        extent = ("extent",) if info.keep_aspect else ()
        keep = partial(_keep_columns, columns=("image", *extent, *carry))
        return exact_tensors(ds.map_batches(keep, num_cpus=ray_cfg.read_cpus)), info, rows
    ds = ds.map_batches(
        PatchCutter,
        fn_constructor_args=(patches, info.image_size, seed, faults, counter, carry),
        batch_size=ray_cfg.aug_batch_size,
        compute=ray.data.ActorPoolStrategy(
            min_size=ray_cfg.aug_min_actors, max_size=ray_cfg.aug_max_actors
        ),
        num_cpus=ray_cfg.aug_cpus_per_actor,
        resources=ray_cfg.aug_resources or None,
        # Ray Data's actor pools restart a killed actor and retry its batch by default
        # (max_restarts=-1, max_task_retries=-1): no image is lost from the epoch.
    )
    return exact_tensors(ds), info, rows


def training_windows(
    dataset: ImageDataset, ray_cfg: RayConfig, epochs: Sequence[int]
) -> list[list[int]]:
    """The epochs of each execution of `patch_stream(dataset, ..., epochs=epochs)`."""
    block_rows = ray_cfg.aug_batch_size * BATCHES_PER_BLOCK
    return stream_windows(dataset, block_rows, epochs, ray_cfg.blocks_per_execution)


def exact_tensors(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Stores tensor columns in Arrow's fixed-shape tensor type: S*S*C bytes a patch, no more.

    Ray's default tensor type keeps an int64 offset per row (half a byte per patch at n=16).
    """
    from ray.data._internal.tensor_extensions.arrow import FixedShapeTensorFormat

    ds.context.arrow_fixed_shape_tensor_format = FixedShapeTensorFormat.ARROW_NATIVE
    return ds
