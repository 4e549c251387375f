"""What every dataset shares: its error, its info, its chunks, the ImageDataset base class, and
the small helpers the format modules (cifar, idx, imagefolder, parquet) have in common."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from empssl_ray.errors import UserError
from empssl_ray.rules import field_problem


class DatasetError(UserError, ValueError):
    """A problem with the user's data or data config; its message says what and how to fix it."""


def check_on_bad(on_bad: str) -> None:
    """Raises DatasetError unless `on_bad` is a known bad-image policy."""
    need = field_problem("data.on_bad_image", on_bad)  # the config checks' rule
    if need is not None:
        raise DatasetError(f"data.on_bad_image={on_bad!r} is not a policy: use {need}")


def download_root() -> str:
    """Where downloads go and cifar is looked for when data.root is unset ($EMPSSL_DATA)."""
    return os.path.expanduser(os.environ.get("EMPSSL_DATA", "~/.cache/empssl-ray/data"))


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # canonical registry name
    num_classes: int
    image_size: int  # side S in pixels of the (square) images load_chunk returns
    channels: int  # 3 for RGB datasets, 1 for fashion-mnist
    # Images keep their aspect ratio, letterboxed in the S x S canvas (data.keep_aspect): each
    # row's `extent` says where its pixels are, and crops are drawn inside it.
    keep_aspect: bool = False


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of one file (or, for imagefolder, of the split's sorted file list)."""

    source: str  # file path or URI it reads
    start: int
    stop: int


class ImageDataset:
    """One split of a dataset: its info and its chunks; holds paths and lists, never pixels."""

    # Rows one read can reach alone at little cost: the training stream shuffles slices of this
    # size. 0: a whole chunk (a Parquet row group is read whole anyway).
    slice_rows = 0

    def __init__(self, info: DatasetInfo, split: str, chunks: list[Chunk]) -> None:
        self.info, self.split, self.chunks = info, split, chunks

    def __len__(self) -> int:
        return sum(c.stop - c.start for c in self.chunks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info}, split={self.split!r}, rows={len(self)})"

    def load_chunk(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, int]:
        """Reads one chunk.

        Returns:
            images uint8 (N, C, S, S), labels int64 (N,), and the count of bad rows dropped
            (nonzero only with data.on_bad_image=skip; N + dropped = chunk.stop - chunk.start).
        """
        raise NotImplementedError

    def load_chunk_extents(
        self, chunk: Chunk
    ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
        """`load_chunk` and, where the dataset keeps aspect ratios, each image's extent: int32
        (N, 2) (height, width) of its pixels at its canvas's top left; else None."""
        return (*self.load_chunk(chunk), None)


class ArrayDataset(ImageDataset):
    """A split stored as whole arrays in files (cifar, IDX); `read` is cached per process."""

    slice_rows = 16

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        chunks: list[Chunk],
        read: Callable[[str], tuple[np.ndarray, np.ndarray]],
    ):
        super().__init__(info, split, chunks)
        self.read = read  # source -> (images (N, C, S, S), labels (N,)), both shared: copy slices

    def load_chunk(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, int]:
        images, labels = self.read(chunk.source)
        s, t = chunk.start, chunk.stop
        return images[s:t].copy(), labels[s:t].astype(np.int64), 0


def ranges(source: str, rows: int, step: int) -> list[Chunk]:
    """Rows 0..rows of `source` cut into chunks of `step` rows (the last one shorter)."""
    return [Chunk(source, s, min(s + step, rows)) for s in range(0, rows, step)]


def check_labels(labels: np.ndarray, num_classes: int, where: str, fix: str) -> None:
    """Raises DatasetError naming the first row of `where` whose label is not in 0..K-1."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DatasetError(
            f"{where} row {bad[0]} has label {labels[bad[0]]}, not a class id in "
            f"0..{num_classes - 1}: {fix}"
        )


def split_dir(root: str, split: str, isdir: Callable[[str], bool]) -> str | None:
    """root/<split> (root/val standing in for a missing root/test); None when root is flat."""
    for sub in (split, "val") if split == "test" else (split,):
        if isdir(f"{root.rstrip('/')}/{sub}"):
            return f"{root.rstrip('/')}/{sub}"
    if any(isdir(f"{root.rstrip('/')}/{s}") for s in ("train", "test", "val")):
        raise DatasetError(f"{root} has split folders but no {split}/: add {root}/{split}/")
    return None


def torchvision_download(name: str, root: str, split: str) -> None:
    """Fetches `name` (cifar10, cifar100 or fashion-mnist) into `root` with torchvision."""
    import torchvision.datasets as tvd  # slow import, only needed to download

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion-mnist": tvd.FashionMNIST}
    try:
        os.makedirs(root, exist_ok=True)
        cls[name](root, train=split == "train", download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision raises RuntimeError
        raise DatasetError(
            f"downloading {name} into {root} failed ({e}): check the network, or "
            "put the files there yourself and set data.download=false"
        ) from e
