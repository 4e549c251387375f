"""Turns a registered dataset into sharded Parquet, locally or on object storage, so that every
node of a cluster can stream it.

    python jobs/prepare.py data=fashion-mnist out=s3://bucket/fashion-mnist
    python jobs/prepare.py data=cifar10 out=gs://bucket/cifar10 prepare.rows_per_file=5000
    python jobs/pretrain.py data=parquet data.root=s3://bucket/fashion-mnist ...   # reads it
"""

from __future__ import annotations

from typing import Any

from empssl_ray.config import ConfigError
from empssl_ray.data.prepare import prepare
from empssl_ray.job_config import PrepareJobConfig
from empssl_ray.launch import start


def main(cfg: PrepareJobConfig) -> dict[str, Any]:
    """Writes <out>/train and <out>/test; returns the rows per split."""
    if not cfg.out:
        raise ConfigError("out is not set: pass out=DIR or out=s3://bucket/name")
    if cfg.prepare.rows_per_file < 1:
        raise ConfigError(f"prepare.rows_per_file={cfg.prepare.rows_per_file} must be >= 1")
    rows = prepare(cfg.data, cfg.out, cfg.prepare.rows_per_file, cfg.prepare.progress)
    print(
        f"wrote {rows['train']} train and {rows['test']} test images to {cfg.out}; read them "
        f"with data=parquet data.root={cfg.out}"
    )
    return rows


if __name__ == "__main__":
    start("prepare", PrepareJobConfig, main)
