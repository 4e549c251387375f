"""Any registered dataset as sharded Parquet, on local disk or object storage.

This is how a dataset gets where every node of a cluster can stream it: `data=parquet
data.root=<out>` reads the result back. Layout: `<out>/<split>/part-NNNNN.parquet`, columns
`image` (PNG bytes: lossless, so pixels round-trip exactly) and `label` (int64); a grayscale
dataset records `empssl.channels=1` in the schema metadata so it is read back as one channel.
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

from empssl_ray import storage
from empssl_ray.config import DataConfig
from empssl_ray.datasets import SPLITS, ImageDataset, open_dataset
from empssl_ray.image_decode import CHANNELS_KEY

ROW_GROUP_ROWS = 1_000  # a row group is what one read task decodes: small enough to spread


def encode_png(image: np.ndarray) -> bytes:
    """One uint8 image (C, H, W), C = 1 or 3, as PNG bytes."""
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(location: str, images: list[bytes], labels: list[int], channels: int) -> None:
    table = pa.table({"image": pa.array(images, pa.binary()),
                      "label": pa.array(labels, pa.int64())})
    table = table.replace_schema_metadata({CHANNELS_KEY: str(channels).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    storage.write_bytes(location, buf.getvalue())


def encoded_rows(dataset: ImageDataset, bar: Any) -> Iterator[tuple[bytes, int]]:
    """(PNG bytes, label) of every row of a split, chunk by chunk (bounded memory)."""
    for chunk in dataset.chunks:
        images, labels, _ = dataset.load_chunk(chunk)
        for image, label in zip(images, labels, strict=True):
            yield encode_png(image), int(label)
        bar.update(chunk.stop - chunk.start)


def prepare(data: DataConfig, out: str, rows_per_file: int = 10_000,
            progress: bool = True) -> dict[str, int]:
    """Writes both splits of `data` (its train_limit / test_limit subsets) as Parquet at `out`.

    Returns:
        Rows written per split.
    """
    from tqdm.auto import tqdm

    out = storage.resolve(out)
    written = {}
    for split in SPLITS:
        dataset = open_dataset(data, split)
        with tqdm(total=len(dataset), desc=f"{split} -> parquet", unit="img",
                  disable=not progress) as bar:
            rows = encoded_rows(dataset, bar)
            for shard in itertools.count():
                part = list(itertools.islice(rows, rows_per_file))
                if not part:
                    break
                images, labels = zip(*part, strict=True)
                write_shard(storage.join(out, split, f"part-{shard:05d}.parquet"), list(images),
                            list(labels), dataset.info.channels)
        written[split] = len(dataset)
    return written
