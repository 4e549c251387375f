"""Image datasets by registry name, each split into chunks that load independently.

`open_dataset` only lists what is there (files, row counts, classes) and fails early with a one-line
`DatasetError` saying what is wrong and how to fix it; pixels are read by `ImageDataset.load_chunk`,
which is what a Ray task runs, so the dataset object stays small enough to ship to every task.
Every reader returns uint8 (N, C, H, W) images and int64 (N,) labels.

The package, one module per format:
    base         DatasetError, DatasetInfo, Chunk, ImageDataset and helpers the formats share
    cifar        cifar10, cifar100: torchvision's python pickles
    idx          fashion-mnist: IDX files
    imagefolder  root/<split>/<class>/<image>
    parquet      a column of encoded images, a column of integer labels (files or URIs)
    images       decoding encoded images (imagefolder and parquet)
This module holds the registry, `open_dataset` and `load_split`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from empssl_ray.config import DataConfig
from empssl_ray.data import storage
from empssl_ray.data.datasets.base import (
    Chunk,
    DatasetError,
    DatasetInfo,
    ImageDataset,
    download_root,
)
from empssl_ray.data.datasets.cifar import open_cifar
from empssl_ray.data.datasets.idx import FASHION_MNIST_ROOT, open_fashion_mnist
from empssl_ray.data.datasets.imagefolder import open_imagefolder
from empssl_ray.data.datasets.images import decode_images
from empssl_ray.data.datasets.parquet import open_parquet
from empssl_ray.rules import field_problem

__all__ = [
    "DATASETS",
    "SPLITS",
    "Chunk",
    "DatasetError",
    "DatasetInfo",
    "DatasetSpec",
    "ImageDataset",
    "Splits",
    "decode_images",
    "download_root",
    "load_split",
    "open_dataset",
    "open_splits",
]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """How a registered dataset opens: opener(cfg, split, canonical name, resolved root)."""

    opener: Callable[[DataConfig, str, str, str], ImageDataset]
    default_root: str | None  # used when data.root is unset; None: see `downloadable`
    downloadable: bool  # torchvision can fetch it; with no default root it lives in download_root()


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(open_cifar, None, True),  # torchvision's python pickles
    "cifar100": DatasetSpec(open_cifar, None, True),  # same, fine labels
    "fashion-mnist": DatasetSpec(open_fashion_mnist, FASHION_MNIST_ROOT, True),  # IDX files
    "imagefolder": DatasetSpec(open_imagefolder, None, False),  # root/<split>/<class>/<image>
    "parquet": DatasetSpec(open_parquet, None, False),  # encoded image bytes + integer labels
}


def open_dataset(cfg: DataConfig, split: str) -> ImageDataset:
    """Finds one split of `cfg.name`, checks it, and cuts it into chunks (no pixels are read).

    Raises:
        DatasetError: unknown name or split, bad config values, data missing (saying where it
            looked and how to get it), no rows, missing or mistyped columns, bad labels.
    """
    name = cfg.name.lower().replace("_", "-")
    if name not in DATASETS:
        raise DatasetError(
            f"unknown dataset data.name={cfg.name!r}: use one of {', '.join(DATASETS)}"
        )
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    for knob in ("on_bad_image", f"{split}_limit", "num_classes", "image_size"):
        need = field_problem(f"data.{knob}", getattr(cfg, knob))  # the config checks' rules
        if need is not None:
            raise DatasetError(f"data.{knob}={getattr(cfg, knob)!r} must be {need}")
    if cfg.keep_aspect and (name not in ("imagefolder", "parquet") or not cfg.image_size):
        raise DatasetError(
            f"data.keep_aspect=true needs data=imagefolder or data=parquet and data.image_size "
            f"(the canvas side, e.g. 640); got data.name={name}, "
            f"data.image_size={cfg.image_size}"
        )
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    spec = DATASETS[name]
    root = os.fspath(cfg.root) if cfg.root else spec.default_root
    root = root or (download_root() if spec.downloadable else None)
    if root is None:
        raise DatasetError(f"{name} has no default location: set data.root to its directory/URI")
    if storage.is_uri(root) and name != "parquet":
        raise DatasetError(
            f"{name} reads local files only, but data.root={root} is a URI: convert it once with "
            f"`python jobs/prepare.py data={name} out={root}` and pass data=parquet "
            f"data.root={root}"
        )
    ds = spec.opener(cfg, split, name, root)
    if len(ds) == 0:
        raise DatasetError(f"{name} at {root}: the {split} split holds no rows")
    ds.chunks = _limit_chunks(ds.chunks, limit)
    return ds


@dataclass
class Splits:
    """A dataset's train and test splits, opened once per run (in the driver) and handed to
    everything that reads them: the training stream, the online monitor and evaluation."""

    train: ImageDataset
    test: ImageDataset

    def __getitem__(self, split: str) -> ImageDataset:
        return self.train if split == "train" else self.test


def open_splits(cfg: DataConfig) -> Splits:
    """Both splits of `cfg`'s dataset, each opened (listed and checked) once."""
    return Splits(open_dataset(cfg, "train"), open_dataset(cfg, "test"))


def load_split(
    cfg: DataConfig, split: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a whole split in this process (bad rows dropped under on_bad_image=skip).

    Returns:
        images uint8 (N, C, S, S) and labels int64 (N,), N <= limit and cfg's split limit.
    """
    ds = open_dataset(cfg, split)
    parts = [ds.load_chunk(c)[:2] for c in _limit_chunks(ds.chunks, limit)]
    if not parts:  # limit=0
        side, channels = ds.info.image_size, ds.info.channels
        return np.zeros((0, channels, side, side), np.uint8), np.zeros(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _limit_chunks(chunks: list[Chunk], limit: int | None) -> list[Chunk]:
    """Keeps `limit` rows spread evenly over the chunks (a head of each), not the first `limit`.

    Test splits are often stored in class order (the shared CIFAR-10 Parquet is): the first
    256 rows would be one class, a head of every chunk keeps a small subset balanced.
    """
    sizes = [c.stop - c.start for c in chunks]
    total = sum(sizes)
    if limit is None or limit >= total:
        return list(chunks)
    picked = np.linspace(0, total, limit, endpoint=False).astype(np.int64)
    counts = np.histogram(picked, bins=np.cumsum([0, *sizes]))[0]
    return [
        Chunk(c.source, c.start, c.start + int(k))
        for c, k in zip(chunks, counts, strict=True)
        if k > 0
    ]
