"""parquet: a column of encoded images and a column of integer labels, in local files or at URIs.

A split is every *.parquet under root/<split>/ (val/ standing in for a missing test/), under
root when it has no split folders, or root itself when it is a file; each row group is one
chunk. The image column holds encoded bytes, or structs with a "bytes" field (how Hugging Face
datasets store an Image).
"""

from __future__ import annotations

import bisect
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from empssl_ray.config import DataConfig
from empssl_ray.data import storage
from empssl_ray.data.datasets.base import (
    Chunk,
    DatasetError,
    DatasetInfo,
    ImageDataset,
    check_labels,
    split_dir,
)
from empssl_ray.data.datasets.images import PROBE_IMAGES, decode_images, probe_size

CHANNELS_KEY = b"empssl.channels"  # schema metadata jobs/prepare.py writes: 1 for grayscale


class _ParquetDataset(ImageDataset):
    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        chunks: list[Chunk],
        starts: dict[str, list[int]],
        columns: list[str],
        on_bad: str,
    ):
        super().__init__(info, split, chunks)
        self.starts, self.columns, self.on_bad = starts, columns, on_bad

    def load_chunk(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, int]:
        images, labels, skipped, _ = self.load_chunk_extents(chunk)
        return images, labels, skipped

    def load_chunk_extents(
        self, chunk: Chunk
    ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
        s, a, b = chunk.source, chunk.start, chunk.stop
        blobs, labels = read_parquet_rows(s, a, b, self.starts[s], self.columns)
        where = [f"{s} row {r}" for r in range(a, b)]
        info = self.info
        images, keep, extents = decode_images(
            blobs, where, info.channels, info.image_size, self.on_bad, info.keep_aspect
        )
        return images, labels[keep], int((~keep).sum()), extents if info.keep_aspect else None


def open_parquet(cfg: DataConfig, split: str, name: str, root: str) -> ImageDataset:
    """The registry's opener for parquet: reads every file's labels, a few images for the size."""
    sources, has_splits = _parquet_sources(root, split)
    if not sources:
        raise DatasetError(
            f"parquet: no .parquet files for the {split} split under {root}: "
            f"put them in {root}/{split}/ or directly in {root}"
        )
    columns = [cfg.image_column, cfg.label_column]
    scans = {s: scan_parquet(s, *columns) for s in sources}
    num_classes = cfg.num_classes
    if num_classes is None:  # from train's labels, so both splits agree on the class count
        train = (
            scans
            if split == "train" or not has_splits
            else {s: scan_parquet(s, *columns) for s in _parquet_sources(root, "train")[0]}
        )
        num_classes = 1 + max(int(lab.max(initial=-1)) for _, lab, _ in train.values())
    starts: dict[str, list[int]] = {}
    chunks: list[Chunk] = []
    for s, (sizes, labels, _) in scans.items():
        check_labels(labels, num_classes, s, "set data.num_classes, or fix the label")
        starts[s] = [0, *np.cumsum(sizes, dtype=np.int64).tolist()]
        chunks += [Chunk(s, a, b) for a, b in zip(starts[s], starts[s][1:], strict=False) if b > a]
    size = cfg.image_size
    if size is None and chunks:
        c = chunks[0]
        stop = min(c.stop, c.start + PROBE_IMAGES)
        blobs, _ = read_parquet_rows(c.source, c.start, stop, starts[c.source], columns)
        size = probe_size(
            zip(blobs, (f"{c.source} row {r}" for r in range(c.start, stop)), strict=False),
            cfg.on_bad_image,
        )
    channels = next(iter(scans.values()))[2]
    info = DatasetInfo(name, num_classes, size or 0, channels, cfg.keep_aspect)
    return _ParquetDataset(info, split, chunks, starts, columns, cfg.on_bad_image)


def scan_parquet(
    source: str, image_column: str, label_column: str
) -> tuple[list[int], np.ndarray, int]:
    """Checks a parquet file's columns and reads its labels.

    Returns:
        The row count of each row group, the labels int64 (N,), and the image channels (the
        file's `empssl.channels` metadata, else 3).
    """
    fs, path = storage.filesystem(source)

    def scan() -> tuple[pa.Schema, list[int], pa.ChunkedArray | None]:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            has_labels = label_column in schema.names
            return schema, sizes, pf.read(columns=[label_column]).column(0) if has_labels else None

    try:  # an outage is waited out; what the bytes say is the data's fault
        schema, sizes, labels = storage.retrying(f"read {source}", scan)
    except storage.StorageUnavailableError:
        raise
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
        raise DatasetError(f"{source} is not a readable parquet file ({e}): replace it") from e
    for col, knob in ((image_column, "data.image_column"), (label_column, "data.label_column")):
        if col not in schema.names:
            raise DatasetError(
                f"{source} has no column {col!r} (it has "
                f"{', '.join(schema.names)}): set {knob} to the right one"
            )
    if not _is_image_column(schema.field(image_column).type):
        raise DatasetError(
            f"{source}: column {image_column!r} is {schema.field(image_column).type}"
            ", not encoded image bytes: set data.image_column to the JPEG/PNG bytes"
        )
    if labels is None or not pa.types.is_integer(labels.type):
        raise DatasetError(
            f"{source}: column {label_column!r} is {schema.field(label_column).type}"
            ", not integers: set data.label_column to the integer class ids"
        )
    if labels.null_count:
        row = np.flatnonzero(pc.is_null(labels).to_numpy())[0]
        raise DatasetError(f"{source} row {row} has a null {label_column!r}: label it or drop it")
    channels = int((schema.metadata or {}).get(CHANNELS_KEY, b"3"))
    return sizes, labels.to_numpy().astype(np.int64), channels


def read_parquet_rows(
    source: str, start: int, stop: int, starts: list[int], columns: list[str]
) -> tuple[list[bytes | None], np.ndarray]:
    """Reads rows [start, stop) of one parquet file, which must lie in one row group.

    Args:
        starts: first row of each row group, then the file's row count.
        columns: [image column, label column].

    Returns:
        The encoded images (None where null) and the labels int64 (stop - start,).
    """
    g = bisect.bisect_right(starts, start) - 1
    if not starts[g] <= start < stop <= starts[g + 1]:
        raise ValueError(f"rows {start}..{stop} of {source} are not inside one row group")
    fs, path = storage.filesystem(source)

    def read() -> pa.Table:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read_row_group(g, columns=columns)

    try:  # an outage is waited out; what the bytes say is the data's fault
        table = storage.retrying(f"read {source}", read)
    except storage.StorageUnavailableError:
        raise
    except (OSError, ValueError) as e:
        raise DatasetError(
            f"{source} row {start}: row group {g} cannot be read ({e}): the file "
            "is corrupt, replace it"
        ) from e
    table = table.slice(start - starts[g], stop - start)
    images = table.column(0).combine_chunks()
    if pa.types.is_struct(images.type):
        images = images.field("bytes")
    return images.to_pylist(), table.column(1).to_numpy().astype(np.int64)


def _parquet_sources(root: str, split: str) -> tuple[list[str], bool]:
    """-> the split's *.parquet files (paths or URIs, sorted), and whether root has split dirs."""
    fs, path = storage.filesystem(root)
    prefix = storage.uri_prefix(root)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        return [prefix + path], False
    if kind != pafs.FileType.Directory:
        raise DatasetError(
            f"parquet: {root} does not exist: set data.root to a directory, file "
            "or URI of .parquet files"
        )
    sub = split_dir(path, split, lambda p: fs.get_file_info(p).type == pafs.FileType.Directory)
    infos = fs.get_file_info(pafs.FileSelector(sub or path, recursive=True))
    files = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.endswith(".parquet")
        and not os.path.basename(i.path).startswith((".", "_"))
    ]
    return [prefix + f for f in sorted(files)], sub is not None


def _is_image_column(kind: pa.DataType) -> bool:
    # A struct with a "bytes" field is how Hugging Face datasets store an Image feature.
    return (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)
    )
