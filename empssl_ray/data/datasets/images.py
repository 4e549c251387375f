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


def _decode_one(blob: bytes, mode: str, size: int | None, keep_aspect: bool) -> np.ndarray:
    """Decodes one blob to (H, W, C) uint8 in `mode`: resized to (size, size) when given, or
    with `keep_aspect` scaled to fit size x size (never enlarged) and its aspect kept."""
    with Image.open(io.BytesIO(blob)) as im:
        im.load()  # open() only parses the header: truncation shows up when pixels are read
        out = im.convert(mode)
    if size is not None and keep_aspect:
        w, h = out.size
        scale = size / max(w, h)
        if scale < 1:  # antialiased (Pillow filters when it shrinks): no detail is aliased in
            fit = (max(1, round(w * scale)), max(1, round(h * scale)))
            out = out.resize(fit, Image.Resampling.BICUBIC)
    elif size is not None and out.size != (size, size):
        out = out.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(out, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def letterbox(image: np.ndarray, side: int) -> np.ndarray:
    """(H, W, C) uint8 with H, W <= side -> (side, side, C): the image at the top left, its last
    row and column repeated beyond, so a crop's resampling taps at the image's edge read the
    edge's pixels as they would at a whole image's border."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, side - h), (0, side - w), (0, 0)), mode="edge")


def decode_images(
    blobs: Sequence[bytes | None],
    where: Sequence[str],
    channels: int,
    size: int | None,
    on_bad: str,
    keep_aspect: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        keep_aspect: (needs `size`) each image keeps its aspect ratio, scaled down to fit
            S x S where larger, and sits letterboxed in an S x S canvas (`letterbox`).

    Returns:
        images: uint8 (N_ok, C, S, S) (or (N_ok, C, H, W) as stored when size is None).
        keep: bool (N,), False where a blob was dropped.
        extents: int32 (N_ok, 2): each image's (height, width) in its canvas (S, S unless
            keep_aspect).

    Raises:
        DatasetError: bad `on_bad`/`channels`, an undecodable blob under on_bad="error", or stored
            sizes that differ while size is None.
    """
    check_on_bad(on_bad)
    if channels not in (1, 3):
        raise DatasetError(f"channels={channels} is not supported: use 1 (grayscale) or 3 (RGB)")
    if len(blobs) != len(where):
        raise ValueError(f"{len(blobs)} blobs but {len(where)} locations")
    if keep_aspect and size is None:
        raise DatasetError("data.keep_aspect=true needs data.image_size: the canvas side")
    mode = "L" if channels == 1 else "RGB"
    keep = np.ones(len(blobs), dtype=bool)
    arrays: list[np.ndarray] = []
    extents: list[tuple[int, int]] = []
    for i, blob in enumerate(blobs):
        try:
            if blob is None:
                raise ValueError("the value is null")
            arr = _decode_one(blob, mode, size, keep_aspect)
        except _DECODE_ERRORS as e:
            if on_bad == "error":
                raise DatasetError(
                    f"{where[i]} is not a readable image ({type(e).__name__}: {e}): replace or "
                    "delete it, or set data.on_bad_image=skip to drop bad images"
                ) from e
            keep[i] = False
            continue
        extents.append(arr.shape[:2])
        if keep_aspect:
            arr = letterbox(arr, size)  # type: ignore[arg-type]
        if arrays and arr.shape != arrays[0].shape:
            raise DatasetError(
                f"{where[i]} is {arr.shape[1]}x{arr.shape[0]} but earlier images are "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}: set data.image_size to resize them"
            )
        arrays.append(arr)
    extent = np.asarray(extents, dtype=np.int32).reshape(-1, 2)
    if not arrays:
        side = size or 0
        return np.zeros((0, channels, side, side), dtype=np.uint8), keep, extent
    # Stacking HWC then one transpose copies once; the result is contiguous CHW.
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)), keep, extent


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
        images, keep, _ = decode_images([blob], [where], 3, None, on_bad)
        if keep[0]:
            h, w = images.shape[2:]
            if h != w:
                raise DatasetError(
                    f"{where} is {w}x{h}, not square: set data.image_size=N to "
                    "resize all images to N x N (with data.keep_aspect=true to keep their shapes)"
                )
            return int(h)
        tried.append(where)
    raise DatasetError(f"none of {', '.join(tried)} decodes as an image: fix the data")
