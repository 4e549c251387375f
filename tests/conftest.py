"""Shared fixtures: one local Ray for the whole run (a start costs ~10 s), config composition."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

CONF_DIR = str(Path(__file__).resolve().parents[1] / "empssl_ray" / "conf")
# CIFAR-10 as Parquet beside the repository; tests that need it skip without it.
SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A fresh local Ray (never a stale /tmp/ray cluster), shut down after the last test."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, logging_level="WARNING")
    yield
    ray.shutdown()


def compose(config_name: str, overrides: list[str]):  # type: ignore[no-untyped-def]
    """The typed config the job would get from `python jobs/<name>.py <overrides>`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from empssl_ray.config import (
        EvaluateConfig,
        PretrainConfig,
        TuneJobConfig,
        register_configs,
        to_dataclass,
    )

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=overrides)
    schema = {"pretrain": PretrainConfig, "evaluate": EvaluateConfig, "tune": TuneJobConfig}
    return to_dataclass(cfg, schema[config_name])


@pytest.fixture
def fault_env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Sets EMPSSL_FAULT_* variables for one test (the driver forwards them to workers)."""

    def set_faults(**faults: object) -> None:
        for key, value in faults.items():
            monkeypatch.setenv(f"EMPSSL_FAULT_{key}", str(value))

    return set_faults


def write_image_parquet(root: Path, n_train: int = 96, n_test: int = 48,
                        bad_rows: tuple[int, ...] = ()) -> Path:
    """A parquet dataset (train/, test/) of random 16x16 RGB PNGs; `bad_rows` of train are junk."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        blobs, labels = [], []
        for i in range(n):
            label = i % 4
            # Class-dependent colour so a probe has something to find.
            pixels = rng.integers(0, 64, (16, 16, 3)) + 48 * label
            buf = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
            blob = buf.getvalue()
            if split == "train" and i in bad_rows:
                blob = blob[: len(blob) // 3]  # truncated file
            blobs.append(blob)
            labels.append(label)
        os.makedirs(root / split, exist_ok=True)
        pq.write_table(pa.table({"image": blobs, "label": labels}), root / split / "part-0.parquet")
    return root
