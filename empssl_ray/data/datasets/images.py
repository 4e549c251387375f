"""Encoded images (JPEG, PNG, ... as files or as Parquet bytes) to uint8 arrays with Pillow.

Used by the imagefolder and parquet formats. Every failure is a `DatasetError` naming the file
(and row) at fault.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from empssl_ray.data.datasets.base import DatasetError, check_on_bad

PROBE_IMAGES = 16  # images `probe_size` is given when the first ones are bad and on_bad_image=skip
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
