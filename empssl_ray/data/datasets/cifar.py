"""cifar10 and cifar100 as torchvision stores them: python pickles of (N, 3072) uint8 rows."""

from __future__ import annotations

import functools
import os
import pickle

import numpy as np

from empssl_ray.config import DataConfig
from empssl_ray.data.datasets.base import (
    ArrayDataset,
    DatasetError,
    DatasetInfo,
    ImageDataset,
    check_labels,
    ranges,
    torchvision_download,
)

CIFAR_CHUNK_ROWS = 10_000

_CIFAR = {  # name -> (folder, split -> batch files, label key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", 100),
}

_PICKLE_ERRORS = (
    OSError,
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
)


def open_cifar(cfg: DataConfig, split: str, name: str, root: str) -> ImageDataset:
    """The registry's opener for cifar10 and cifar100 (`root` holds the pickles' folder)."""
    folder, files, label_key, classes = _CIFAR[name]
    paths = [os.path.join(root, folder, f) for f in files[split]]
    if not all(os.path.isfile(p) for p in paths):
        if not cfg.download:
            raise DatasetError(
                f"{name} not found: looked for {', '.join(files[split])} in "
                f"{os.path.join(root, folder)}; set data.download=true to fetch "
                f"it, or data.root to the directory holding {folder}/"
            )
        torchvision_download(name, root, split)
    chunks = []
    for p in paths:
        labels = read_cifar_batch(p, label_key)[1]
        check_labels(labels, classes, p, "the file is corrupt: download it again")
        chunks += ranges(p, len(labels), CIFAR_CHUNK_ROWS)
    read = functools.partial(read_cifar_batch, label_key=label_key)
    return ArrayDataset(DatasetInfo(name, classes, 32, 3), split, chunks, read)


# A shuffled epoch reads slices of every batch file in turn: keep all of a split's (5 for
# CIFAR-10 train, 150 MB) so that each is unpickled once per process.
@functools.lru_cache(maxsize=6)
def read_cifar_batch(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """-> images uint8 (N, 3, 32, 32), labels int64 (N,), both read-only (they are cached)."""
    fix = "delete it and download again (data.download=true)"
    try:
        # The format is a pickle (as torchvision reads it too): only open files you trust.
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except _PICKLE_ERRORS as e:
        raise DatasetError(
            f"{path} is not a readable CIFAR batch ({type(e).__name__}: {e}): {fix}"
        ) from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise DatasetError(
            f"{path} holds data {data.shape} and {labels.size} labels, not (N, 3072) and N: {fix}"
        )
    images = data.reshape(-1, 3, 32, 32)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels
