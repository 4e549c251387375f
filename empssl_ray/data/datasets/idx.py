"""fashion-mnist as IDX files (raw or gzipped): Debian's dataset package or torchvision's layout."""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib

import numpy as np

from empssl_ray.config import DataConfig
from empssl_ray.data.datasets.base import (
    ArrayDataset,
    DatasetError,
    DatasetInfo,
    ImageDataset,
    check_labels,
    download_root,
    ranges,
    torchvision_download,
)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package
IDX_CHUNK_ROWS = 10_000

_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def open_fashion_mnist(cfg: DataConfig, split: str, name: str, root: str) -> ImageDataset:
    """The registry's opener for fashion-mnist: looks in `root`, then in torchvision's layout."""
    # torchvision downloads into <root>/FashionMNIST/raw; Debian's package is flat.
    dest = os.path.expanduser(cfg.root) if cfg.root else download_root()
    dirs = [root, os.path.join(dest, "FashionMNIST", "raw")]
    img_stem, lbl_stem = _IDX_STEMS[split]

    def find() -> tuple[str, str] | None:
        for d in dirs:
            img, lbl = _find_idx(d, img_stem), _find_idx(d, lbl_stem)
            if img and lbl:
                return img, lbl
        return None

    found = find()
    if found is None and cfg.download:
        torchvision_download(name, dest, split)
        found = find()
    if found is None:
        raise DatasetError(
            f"fashion-mnist not found: looked for {img_stem}[.gz] in "
            f"{' and '.join(dirs)}; run `apt-get install dataset-fashion-mnist`, "
            "set data.download=true, or point data.root at the IDX files"
        )
    img, lbl = found
    images, labels = read_idx(img, 3), read_idx(lbl, 1)
    if len(images) != len(labels) or images.shape[1] != images.shape[2]:
        raise DatasetError(
            f"{img} holds {images.shape} images but {lbl} {len(labels)} labels: "
            "the two files must belong together"
        )
    check_labels(labels, 10, lbl, "the file is corrupt: get it again")
    info = DatasetInfo(name, 10, images.shape[1], 1)
    read = functools.partial(read_idx_pair, labels_path=lbl)
    return ArrayDataset(info, split, ranges(img, len(images), IDX_CHUNK_ROWS), read)


@functools.lru_cache(maxsize=4)  # six chunks of one file must not gunzip it six times
def read_idx(path: str, ndim: int) -> np.ndarray:
    """-> the uint8 array an IDX file of unsigned bytes holds (read-only), `ndim` dimensions."""
    fix = "the file is corrupt or truncated: delete it and get it again"
    try:
        with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DatasetError(f"{path} cannot be read ({type(e).__name__}: {e}): {fix}") from e
    header = 4 + 4 * ndim
    # Magic: two zero bytes, type 0x08 (unsigned byte), number of dimensions.
    if len(raw) < header or raw[:4] != bytes([0, 0, 8, ndim]):
        raise DatasetError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes (magic "
            f"{raw[:4].hex()}, expected 000008{ndim:02x}): {fix}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise DatasetError(
            f"{path} holds {len(raw) - header} bytes of data but its header says "
            f"{'x'.join(map(str, dims))}: {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """-> images uint8 (N, 1, H, W) and labels uint8 (N,) of an IDX pair (cached, read-only)."""
    return read_idx(images_path, 3)[:, None], read_idx(labels_path, 1)


def _find_idx(directory: str, stem: str) -> str | None:
    # Un-gzipped first: torchvision leaves both, and the raw file reads faster.
    paths = [os.path.join(directory, stem + ext) for ext in ("", ".gz")]
    return next((p for p in paths if os.path.isfile(p)), None)
