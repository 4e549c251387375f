"""Any registered dataset as sharded Parquet, on local disk or object storage.

This is how a dataset gets where every node of a cluster can stream it: `data=parquet
data.root=<out>` reads the result back. Layout: `<out>/<split>/part-NNNNN.parquet`, columns
`image` (PNG bytes: lossless, so pixels round-trip exactly) and `label` (int64); a grayscale
dataset records `empssl.channels=1` in the schema metadata so it is read back as one channel.
Training rows are written in a shuffled order. With `data.keep_aspect=true` each image keeps its
own shape and its resolution up to `data.image_size` on its longer side (read it back with the
same two settings).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from empssl_ray.config import DataConfig
from empssl_ray.data import storage
from empssl_ray.data.datasets import SPLITS, ImageDataset, open_dataset
from empssl_ray.data.datasets.parquet import CHANNELS_KEY
from empssl_ray.data.read_plan import epoch_plan, load_pieces, split_slices

ROW_GROUP_ROWS = 1_000  # a row group is what one read task decodes: small enough to spread


def encode_png(image: np.ndarray) -> bytes:
    """One uint8 image (C, H, W), C = 1 or 3, as PNG bytes."""
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(location: str, images: list[bytes], labels: list[int], channels: int) -> None:
    table = pa.table(
        {"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64())}
    )
    table = table.replace_schema_metadata({CHANNELS_KEY: str(channels).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    storage.write_bytes(location, buf.getvalue())


def encoded_rows(
    dataset: ImageDataset, bar: Any, shuffle_seed: int | None
) -> Iterator[tuple[bytes, int]]:
    """(PNG bytes, label) of every row of a split, a block at a time (bounded memory); with a
    seed, in a shuffled order (slices permuted, rows shuffled inside each row group's worth)."""
    pieces = split_slices(dataset, ROW_GROUP_ROWS)
    for block, seed in epoch_plan(pieces, ROW_GROUP_ROWS, shuffle_seed, epoch=0):
        rows, _ = load_pieces(block, dataset, seed)
        extents = rows.get("extent")  # letterboxed (data.keep_aspect): store the image's pixels
        for k, (image, label) in enumerate(zip(rows["image"], rows["label"], strict=True)):
            if extents is not None:
                image = image[:, : extents[k][0], : extents[k][1]]
            yield encode_png(image), int(label)
        bar.update(sum(stop - start for _, start, stop, _ in block))


def prepare(
    data: DataConfig, out: str, rows_per_file: int = 10_000, progress: bool = True, seed: int = 0
) -> dict[str, int]:
    """Writes both splits of `data` (its train_limit / test_limit subsets) as Parquet at `out`.

    The training rows are written in a shuffled order (`seed`): the training stream shuffles
    row groups and rows within blocks, so a class-sorted source (an image folder) must not stay
    sorted. Test rows keep their order.

    Returns:
        Rows written per split.
    """
    from tqdm.auto import tqdm

    out = storage.resolve(out)
    written = {}
    for split in SPLITS:
        dataset = open_dataset(data, split)
        with tqdm(
            total=len(dataset), desc=f"{split} -> parquet", unit="img", disable=not progress
        ) as bar:
            rows = encoded_rows(dataset, bar, seed if split == "train" else None)
            for shard in itertools.count():
                part = list(itertools.islice(rows, rows_per_file))
                if not part:
                    break
                images, labels = zip(*part, strict=True)
                write_shard(
                    storage.join(out, split, f"part-{shard:05d}.parquet"),
                    list(images),
                    list(labels),
                    dataset.info.channels,
                )
        written[split] = len(dataset)
    return written
