"""jobs/prepare.py's core: a registered dataset as sharded Parquet, locally or on S3."""

from __future__ import annotations

import numpy as np
import pytest

from empssl_ray.config import DataConfig
from empssl_ray.data.datasets import DatasetError, load_split, open_dataset
from empssl_ray.data.prepare import prepare
from tests.conftest import s3_keys


def test_fashion_mnist_round_trips_through_s3_with_training_rows_shuffled(s3: str) -> None:
    source = DataConfig(name="fashion-mnist", train_limit=300, test_limit=100)
    out = f"{s3}/prepared/fashion-mnist"
    assert prepare(source, out, rows_per_file=128, progress=False) == {"train": 300, "test": 100}
    keys = sorted(k.split("fashion-mnist/")[1] for k in s3_keys(out))
    assert keys == [
        "test/part-00000.parquet",
        "train/part-00000.parquet",
        "train/part-00001.parquet",
        "train/part-00002.parquet",
    ]
    back = DataConfig(name="parquet", root=out)
    assert open_dataset(back, "train").info.channels == 1  # grey stays one channel
    x, y = load_split(back, "test")
    sx, sy = load_split(source, "test")
    assert np.array_equal(x, sx) and np.array_equal(y, sy)  # PNG: lossless, test rows in order
    x, y = load_split(back, "train")
    sx, sy = load_split(source, "train")
    assert not np.array_equal(y, sy)  # shuffled...
    flat = {(bytes(a), int(b)) for a, b in zip(x, y, strict=True)}
    assert flat == {(bytes(a), int(b)) for a, b in zip(sx, sy, strict=True)}  # ...same rows


def test_local_only_formats_refuse_a_uri_root_naming_prepare() -> None:
    with pytest.raises(DatasetError, match=r"jobs/prepare.py data=cifar10 out=s3://b/c"):
        open_dataset(DataConfig(name="cifar10", root="s3://b/c"), "train")
