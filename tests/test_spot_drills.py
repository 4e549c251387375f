"""What a spot cloud does to a run, with data and outputs on the loopback S3: the object store
going away mid-run and coming back (on the session's Ray), and a trainer node drained by Ray's
drain API with reason preemption, removed and replaced (a multi-node cluster in a subprocess,
tests/drain_scenario.py). Both check every image trained once and every step logged once.
`-m drills` (make test-drills): about 3 minutes together on 2 cores, run by CI after the suite."""

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
from tests.conftest import run_scenario
from tests.forwarder import Forwarder

pytestmark = pytest.mark.drills
DRAIN_SCENARIO = Path(__file__).with_name("drain_scenario.py")
DRAIN_LIMIT_S = 420


def trained_steps(folder: Path) -> int:
    """The newest step any rank recorded (EMPSSL_FAULT_RECORD_TRAINED), 0 before the first."""
    newest = 0
    for f in folder.glob("trained-*.txt"):
        rows = np.loadtxt(f, dtype=np.int64, ndmin=2)
        if len(rows):
            newest = max(newest, int(rows[:, 0].max()))
    return newest


def once_per_epoch(attempts: dict[str, list[str]]) -> tuple[int, list[tuple[int, int]]]:
    """The step a restart resumed from, and the (epoch, id) rows the model kept: a killed
    attempt's rows up to that step, and every row of the attempt that resumed."""
    rows = {
        name: np.array([line.split() for line in lines], dtype=np.int64).reshape(-1, 3)
        for name, lines in attempts.items()
    }
    firsts = sorted({int(r[:, 0].min()) for r in rows.values() if len(r)})
    assert len(firsts) == 2, firsts  # the first start, and one restart
    resumed_at = firsts[1] - 1
    kept = [r if r[:, 0].min() > resumed_at else r[r[:, 0] <= resumed_at] for r in rows.values()]
    return resumed_at, [tuple(p) for p in np.concatenate(kept)[:, 1:].tolist()]


@pytest.mark.timeout(DRAIN_LIMIT_S + 180)
def test_a_drained_trainer_node_resumes_inside_the_only_epoch(s3: str, tmp_path: Path) -> None:
    from empssl_ray.data.prepare import prepare

    data = f"{s3}/drain/data"
    prepare(DataConfig(name="fashion-mnist", train_limit=512, test_limit=256), data, 64, False)
    seen = run_scenario(DRAIN_SCENARIO, [str(tmp_path), data, f"{s3}/drain"], DRAIN_LIMIT_S)
    assert seen["drain_accepted"] and seen["drained_at_step"] >= 5
    assert seen["final"]["epoch"] == 1 and seen["final"]["step"] == 16
    resumed_at, pairs = once_per_epoch(seen["trained"])
    assert 0 < resumed_at < 16  # inside the only epoch, not at its start
    assert len(pairs) == len(set(pairs)) == 512 and {i for _, i in pairs} == set(range(512))
    steps = [r["step"] for r in seen["metrics"] if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 16


@pytest.mark.usefixtures("ray_session")
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
