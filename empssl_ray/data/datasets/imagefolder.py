"""imagefolder: one encoded image file per row, laid out as root/<split>/<class>/<image>."""

from __future__ import annotations

import os

import numpy as np

from empssl_ray.config import DataConfig
from empssl_ray.data.datasets.base import (
    Chunk,
    DatasetError,
    DatasetInfo,
    ImageDataset,
    ranges,
    split_dir,
)
from empssl_ray.data.datasets.images import PROBE_IMAGES, decode_images, probe_size, read_file

FOLDER_CHUNK_FILES = 1_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class _FolderDataset(ImageDataset):
    slice_rows = 1  # one file per image

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        chunks: list[Chunk],
        files: list[str],
        labels: list[int],
        on_bad: str,
    ):
        super().__init__(info, split, chunks)
        self.files, self.labels, self.on_bad = files, labels, on_bad

    def load_chunk(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, int]:
        images, labels, skipped, _ = self.load_chunk_extents(chunk)
        return images, labels, skipped

    def load_chunk_extents(
        self, chunk: Chunk
    ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
        paths = self.files[chunk.start : chunk.stop]
        blobs = [read_file(p, self.on_bad) for p in paths]
        info = self.info
        images, keep, extents = decode_images(
            blobs, paths, 3, info.image_size, self.on_bad, info.keep_aspect
        )
        labels = np.asarray(self.labels[chunk.start : chunk.stop], dtype=np.int64)[keep]
        return images, labels, int((~keep).sum()), extents if info.keep_aspect else None


def open_imagefolder(cfg: DataConfig, split: str, name: str, root: str) -> ImageDataset:
    """The registry's opener for imagefolder: lists the files, reads a few to learn the size."""
    root = os.path.expanduser(root)
    folder = split_dir(root, split, os.path.isdir) if os.path.isdir(root) else None
    if folder is None:
        raise DatasetError(
            f"imagefolder: no {split} folder in {root}: lay images out as "
            f"{root}/{split}/<class>/<image>"
        )
    # Class ids come from train/ so a test split lacking a class keeps the same ids.
    class_dir = os.path.join(root, "train")
    classes = _subdirs(class_dir if os.path.isdir(class_dir) else folder)
    ids = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for cls in _subdirs(folder):
        if cls not in ids:
            raise DatasetError(
                f"class folder {os.path.join(folder, cls)} has no counterpart "
                f"in {class_dir}: add it there or remove it"
            )
        for dirpath, dirnames, names in os.walk(os.path.join(folder, cls)):
            dirnames.sort()
            for n in sorted(names):
                if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith("."):
                    files.append(os.path.join(dirpath, n))
                    labels.append(ids[cls])
    if not files:
        raise DatasetError(
            f"imagefolder: no images ({', '.join(IMAGE_SUFFIXES)}) in "
            f"{folder}/<class>/: put the images in one folder per class"
        )
    num_classes = cfg.num_classes or len(classes)
    if num_classes < len(classes):
        raise DatasetError(
            f"{folder} has {len(classes)} class folders but data.num_classes="
            f"{num_classes}: raise it or leave it unset"
        )
    probe = ((read_file(p, cfg.on_bad_image), p) for p in files[:PROBE_IMAGES])
    size = cfg.image_size or probe_size(probe, cfg.on_bad_image)
    info = DatasetInfo(name, num_classes, size, 3, cfg.keep_aspect)
    chunks = ranges(folder, len(files), FOLDER_CHUNK_FILES)
    return _FolderDataset(info, split, chunks, files, labels, cfg.on_bad_image)


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
