"""What a spot cloud does to a run, on a local Ray with data and outputs on the loopback S3:
the object store going away mid-run and coming back. (Node losses: tests/test_ray_pipeline.py
kills a trainer; tests/test_cluster_jobs.py drains and removes nodes.)"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from empssl_ray.config import DataConfig
from empssl_ray.data.prepare import prepare
from empssl_ray.launch import compose
from empssl_ray.runs.metrics import read_metrics
from tests.forwarder import Forwarder

pytestmark = pytest.mark.usefixtures("ray_session")


def trained_steps(folder: Path) -> int:
    """The newest step any rank recorded (EMPSSL_FAULT_RECORD_TRAINED), 0 before the first."""
    newest = 0
    for f in folder.glob("trained-*.txt"):
        rows = np.loadtxt(f, dtype=np.int64, ndmin=2)
        if len(rows):
            newest = max(newest, int(rows[:, 0].max()))
    return newest


def test_a_run_outlives_an_object_store_outage_mid_epoch(
    s3: str, s3_link: Forwarder, tmp_path: Path, fault_env
) -> None:
    """The store refuses every connection for 20 s during epoch 2 (after step 10 of 16), then
    answers again: the run finishes every epoch, each step once in its metrics, whether the
    outage was waited out or a worker failed on it and the run restarted."""
    from jobs.pretrain import main

    data = f"{s3}/outage-run/data"
    prepare(DataConfig(name="fashion-mnist", train_limit=512, test_limit=256), data, 200, False)
    cfg = compose(
        "pretrain",
        [
            "experiment=smoke",
            "data=parquet",
            f"data.root={data}",
            f"run.storage_path={s3}/outage-run/runs",
            "run.progress=false",
            "run.evaluate=false",
            "run.checkpoint_every_steps=4",
            "run.storage_retry_s=60",
            "ray.max_failures=3",
            "ray.aug_max_actors=1",
        ],
    )
    record = tmp_path / "trained"
    fault_env(RECORD_TRAINED=record, DIR=tmp_path)
    outage: dict[str, float] = {}

    def cut_mid_epoch_two() -> None:
        deadline = time.monotonic() + 600
        while trained_steps(record) < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        s3_link.close()
        outage["start"] = time.monotonic()
        time.sleep(20)
        s3_link.open()
        outage["end"] = time.monotonic()

    cutter = threading.Thread(target=cut_mid_epoch_two, daemon=True)
    cutter.start()
    try:
        summary = main(cfg)
    finally:
        cutter.join(timeout=60)
        s3_link.open()
    assert outage.get("end", 0) - outage.get("start", 0) >= 19  # the store was really away
    assert summary["final"]["epoch"] == 2 and summary["final"]["step"] == 16
    records = read_metrics(f"{s3}/outage-run/runs/smoke")
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(2, 17, 2))  # each step once, in order
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert os.path.isdir(record)
