"""Stored bytes to arrays: encoded images (JPEG/PNG/...), CIFAR pickles, IDX files, parquet rows.

`empssl_ray.datasets` decides which files make a split and cuts them into chunks; the format work
lives here to keep both modules short. `DatasetError` and `decode_images` are re-exported from
`empssl_ray.datasets`, where other modules import them. Every failure here is a `DatasetError`
naming the file (and row) at fault.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import io
import pickle
import struct
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from empssl_ray import storage
from empssl_ray.errors import UserError

ON_BAD_CHOICES = ("error", "skip")

# Pillow signals corrupt input with many exception types, depending on the format plugin and on
# where in the stream the damage sits; all of them mean "this blob is not a usable image".
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
)


class DatasetError(UserError, ValueError):
    """A problem with the user's data or data config; its message says what and how to fix it."""


def check_on_bad(on_bad: str) -> None:
    """Raises DatasetError unless `on_bad` is a known bad-image policy."""
    if on_bad not in ON_BAD_CHOICES:
        raise DatasetError(
            f"data.on_bad_image={on_bad!r} is not a policy: use 'error' (stop) or 'skip' (drop)"
        )


def _decode_one(blob: bytes, mode: str, size: int | None) -> np.ndarray:
    """Decodes one blob to (H, W, C) uint8 in `mode`, resized to (size, size) when given."""
    with Image.open(io.BytesIO(blob)) as im:
        im.load()  # open() only parses the header: truncation shows up when pixels are read
        out = im.convert(mode)
    if size is not None and out.size != (size, size):
        out = out.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(out, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_images(
    blobs: Sequence[bytes | None],
    where: Sequence[str],
    channels: int,
    size: int | None,
    on_bad: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes encoded images with Pillow into one uint8 batch.

    Grayscale, RGBA, palette, CMYK... images are converted to `channels` ("L" for 1, "RGB" for 3;
    alpha is dropped, not composited), so a folder mixing modes still yields one array.

    Args:
        blobs: N encoded images (any format Pillow reads); None counts as a bad image.
        where: N human-readable locations ("file.png", "part.parquet row 7") used in errors.
        channels: 1 or 3.
        size: side S every image is resized to (bilinear) when it differs; None keeps the stored
            size, which then must be the same for all images.
        on_bad: "error" raises on the first undecodable blob; "skip" drops it.

    Returns:
        images: uint8 (N_ok, C, S, S) (or (N_ok, C, H, W) as stored when size is None).
        keep: bool (N,), False where a blob was dropped.

    Raises:
        DatasetError: bad `on_bad`/`channels`, an undecodable blob under on_bad="error", or stored
            sizes that differ while size is None.
    """
    check_on_bad(on_bad)
    if channels not in (1, 3):
        raise DatasetError(f"channels={channels} is not supported: use 1 (grayscale) or 3 (RGB)")
    if len(blobs) != len(where):
        raise ValueError(f"{len(blobs)} blobs but {len(where)} locations")
    mode = "L" if channels == 1 else "RGB"
    keep = np.ones(len(blobs), dtype=bool)
    arrays: list[np.ndarray] = []
    for i, blob in enumerate(blobs):
        try:
            if blob is None:
                raise ValueError("the value is null")
            arr = _decode_one(blob, mode, size)
        except _DECODE_ERRORS as e:
            if on_bad == "error":
                raise DatasetError(
                    f"{where[i]} is not a readable image ({type(e).__name__}: {e}): replace or "
                    "delete it, or set data.on_bad_image=skip to drop bad images"
                ) from e
            keep[i] = False
            continue
        if arrays and arr.shape != arrays[0].shape:
            raise DatasetError(
                f"{where[i]} is {arr.shape[1]}x{arr.shape[0]} but earlier images are "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}: set data.image_size to resize them"
            )
        arrays.append(arr)
    if not arrays:
        side = size or 0
        return np.zeros((0, channels, side, side), dtype=np.uint8), keep
    # Stacking HWC then one transpose copies once; the result is contiguous CHW.
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)), keep


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


def read_file(path: str, on_bad: str) -> bytes | None:
    """The file's bytes; None (a bad image, dropped later) if unreadable and on_bad == "skip"."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        if on_bad == "skip":
            return None
        raise DatasetError(f"{path} cannot be read ({e}): fix its permissions or delete it") from e


def probe_size(candidates: Iterable[tuple[bytes | None, str]], on_bad: str) -> int:
    """Side of the first decodable (blob, where) candidate; it must be square.

    Raises:
        DatasetError: the image is not square (data.image_size is then needed), none decodes,
            or (on_bad == "error") the first one does not decode.
    """
    tried = []
    for blob, where in candidates:
        images, keep = decode_images([blob], [where], 3, None, on_bad)
        if keep[0]:
            h, w = images.shape[2:]
            if h != w:
                raise DatasetError(
                    f"{where} is {w}x{h}, not square: set data.image_size=N to "
                    "resize all images to N x N"
                )
            return int(h)
        tried.append(where)
    raise DatasetError(f"none of {', '.join(tried)} decodes as an image: fix the data")


def _is_image_column(kind: pa.DataType) -> bool:
    # A struct with a "bytes" field is how Hugging Face datasets store an Image feature.
    return (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)
    )


CHANNELS_KEY = b"empssl.channels"  # schema metadata jobs/prepare.py writes: 1 for grayscale


def scan_parquet(
    source: str, image_column: str, label_column: str
) -> tuple[list[int], np.ndarray, int]:
    """Checks a parquet file's columns and reads its labels.

    Returns:
        The row count of each row group, the labels int64 (N,), and the image channels (the
        file's `empssl.channels` metadata, else 3).
    """
    fs, path = storage.filesystem(source)
    try:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            has_labels = label_column in schema.names
            labels = pf.read(columns=[label_column]).column(0) if has_labels else None
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
    try:
        with fs.open_input_file(path) as f:
            table = pq.ParquetFile(f).read_row_group(g, columns=columns)
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
