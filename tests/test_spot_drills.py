"""What a spot cloud does to a run, with data and outputs on the loopback S3: the object store
going away mid-run and coming back, or going for good (on the session's Ray); a trainer node
drained by Ray's drain API with reason preemption, removed and replaced; the trainer node lost
without notice three times in one epoch; an elastic run that loses a trainer node and gains one;
a sweep whose trial loses its trainer node (multi-node clusters in subprocesses:
tests/drain_scenario.py, tests/elastic_scenario.py, tests/sweep_loss_scenario.py).
Each checks every image trained once per epoch and every step logged (or reported) once, or,
where no progress is possible, one line. `-m drills` (make test-drills): about 12 minutes
together on 2 cores, after the suite."""

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


def once_per_epoch(attempts: dict[str, list[str]]) -> tuple[list[int], list[tuple[int, int]]]:
    """The steps the restarts resumed from, and the (epoch, id) rows the model kept: each
    attempt's rows up to the step the next one resumed from, and every row of the last."""
    rows = [
        np.array([line.split() for line in lines], dtype=np.int64).reshape(-1, 3)
        for lines in attempts.values()
    ]
    rows = sorted((r for r in rows if len(r)), key=lambda r: int(r[:, 0].min()))
    resumed = [int(r[:, 0].min()) - 1 for r in rows[1:]]
    kept = [r[r[:, 0] <= step] for r, step in zip(rows, resumed, strict=False)] + rows[-1:]
    return resumed, [tuple(p) for p in np.concatenate(kept)[:, 1:].tolist()]


def attempt_spans(attempts: dict[str, list[str]]) -> dict[str, tuple[int, int, int]]:
    """Each attempt's first and last step and how many rows it trained (failure messages)."""
    spans = {}
    for name, lines in attempts.items():
        steps = [int(line.split()[0]) for line in lines]
        spans[name] = (min(steps, default=0), max(steps, default=0), len(steps))
    return spans


def assert_one_epoch_trained_once(seen: dict, restarts: int) -> list[int]:
    """The 16-step, 512-image epoch finished with every image once and every step logged
    once, across `restarts` restarts each resuming inside the epoch; returns their steps."""
    assert seen["final"]["epoch"] == 1 and seen["final"]["step"] == 16
    resumed, pairs = once_per_epoch(seen["trained"])
    attempts = attempt_spans(seen["trained"])
    assert len(resumed) == restarts and all(0 < step < 16 for step in resumed), (resumed, attempts)
    assert len(pairs) == len(set(pairs)) == 512, (len(set(pairs)), attempts, seen["log"])
    assert {i for _, i in pairs} == set(range(512)), (attempts, seen["log"])
    steps = [r["step"] for r in seen["metrics"] if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 16
    return resumed


@pytest.mark.timeout(DRAIN_LIMIT_S + 180)
def test_a_drained_trainer_node_resumes_inside_the_only_epoch(s3: str, tmp_path: Path) -> None:
    from empssl_ray.data.prepare import prepare

    data = f"{s3}/drain/data"
    prepare(DataConfig(name="fashion-mnist", train_limit=512, test_limit=256), data, 64, False)
    seen = run_scenario(DRAIN_SCENARIO, [str(tmp_path), data, f"{s3}/drain"], DRAIN_LIMIT_S)
    assert seen["drain_accepted"] and seen["drained_at_step"] >= 5
    assert_one_epoch_trained_once(seen, restarts=1)


@pytest.mark.timeout(DRAIN_LIMIT_S + 180)
def test_three_losses_without_notice_that_each_made_progress_use_no_failure_budget(
    s3: str, tmp_path: Path
) -> None:
    """A launcher cluster's spot losses: the trainer node killed without notice at steps 4, 8
    and 12 of the only epoch, with `ray.max_failures=2` and a checkpoint every 2 steps. Each
    loss made progress since the last start, so none counts, and the run finishes."""
    data = f"{s3}/losses/data"
    prepare(DataConfig(name="fashion-mnist", train_limit=512, test_limit=256), data, 64, False)
    args = [str(tmp_path), data, f"{s3}/losses", "losses"]
    seen = run_scenario(DRAIN_SCENARIO, args, DRAIN_LIMIT_S)
    assert len(seen["lost_at_steps"]) == 3, seen["lost_at_steps"]
    resumed = assert_one_epoch_trained_once(seen, restarts=3)
    assert resumed == sorted(resumed) and resumed[0] >= 2, resumed  # each from a newer checkpoint


ELASTIC_SCENARIO = Path(__file__).with_name("elastic_scenario.py")


def kept_by_attempt(attempts: dict[str, list[str]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Like `once_per_epoch` for several ranks an attempt: the steps each attempt began at, and
    the (epoch, id) rows kept (each rank's rows before the step the next attempt began at)."""
    rows = [
        np.array([line.split() for line in lines], dtype=np.int64).reshape(-1, 3)
        for lines in attempts.values()
        if lines
    ]
    firsts = sorted({int(r[:, 0].min()) for r in rows})
    kept = []
    for r in rows:
        later = [f for f in firsts if f > r[:, 0].min()]
        kept.append(r[r[:, 0] < later[0]] if later else r)
    return firsts, [tuple(p) for p in np.concatenate(kept)[:, 1:].tolist()]


@pytest.mark.timeout(DRAIN_LIMIT_S + 300)
def test_an_elastic_run_shrinks_on_a_lost_node_and_grows_when_one_joins(
    s3: str, tmp_path: Path
) -> None:
    """ray.min_workers=2, ray.num_workers=3 on three trainer nodes: one lost without notice at
    step 6, the run goes on with two at once (no replacement waited for); a node joins at step
    16 and the run grows back to three. The global batch stays 48, every image once an epoch,
    every step logged once, and each start resumes the newest checkpoint (no jump in loss)."""
    data = f"{s3}/elastic/data"
    prepare(DataConfig(name="fashion-mnist", train_limit=960, test_limit=256), data, 240, False)
    seen = run_scenario(ELASTIC_SCENARIO, [str(tmp_path), data, f"{s3}/elastic"], DRAIN_LIMIT_S)
    assert seen["final"]["step"] == 40 and seen["final"]["epoch"] == 2, seen["log"]
    steps = [r for r in seen["metrics"] if r["kind"] == "step"]
    assert [r["step"] for r in steps] == sorted({r["step"] for r in steps})  # each step once
    workers = [r["workers"] for r in steps]
    changes = [w for i, w in enumerate(workers) if i == 0 or w != workers[i - 1]]
    assert changes == [3, 2, 3], (changes, seen["log"])
    grew_at = next(r["step"] for r in steps if r["step"] > 6 and r["workers"] == 3)
    assert grew_at > seen["joined_at_step"], (grew_at, seen["log"])
    firsts, pairs = kept_by_attempt(seen["trained"])
    assert firsts[0] == 1 and len(firsts) == 3 and firsts[1] <= seen["lost_at_step"] + 1, firsts
    assert len(pairs) == len(set(pairs)) == 2 * 960  # each image once in each epoch
    loss = {r["step"]: r["loss"] for r in steps}
    for first in firsts[1:]:  # each start goes on from where the loss was, not from step 1's
        before, after = loss[first - 1], loss[first]
        assert abs(after - before) < abs(loss[1] - before), (first, before, after, loss[1])


def run_through_an_outage(
    s3: str,
    link: Forwarder,
    work: Path,
    fault_env,
    name: str,
    overrides: list[str],
    away_s: float = 40,
) -> tuple[dict, float, list[dict]]:
    """A 2-epoch smoke run on S3 (a checkpoint every 4 steps) whose store refuses every
    connection for `away_s` from step 10 of 16 on (0: until the run ends): its summary, the
    outage's length and its metrics records."""
    from jobs.pretrain import main

    data = f"{s3}/{name}/data"
    prepare(DataConfig(name="fashion-mnist", train_limit=512, test_limit=256), data, 200, False)
    cfg = compose(
        "pretrain",
        [
            "experiment=smoke",
            "data=parquet",
            f"data.root={data}",
            f"run.storage_path={s3}/{name}/runs",
            "run.progress=false",
            "run.evaluate=false",
            "run.checkpoint_every_steps=4",
            "ray.aug_max_actors=1",
            *overrides,
        ],
    )
    record = work / "trained"
    fault_env(RECORD_TRAINED=record, DIR=work)
    outage: dict[str, float] = {}
    run_ended = threading.Event()

    def cut_mid_epoch_two() -> None:
        deadline = time.monotonic() + 600
        while trained_steps(record) < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        link.close()
        outage["start"] = time.monotonic()
        run_ended.wait(away_s or None)
        link.open()
        outage["end"] = time.monotonic()

    cutter = threading.Thread(target=cut_mid_epoch_two, daemon=True)
    cutter.start()
    try:
        summary = main(cfg)
    finally:
        run_ended.set()
        cutter.join(timeout=60)
        link.open()
    assert os.path.isdir(record)
    away = outage.get("end", 0) - outage.get("start", 0)
    return summary, away, read_metrics(f"{s3}/{name}/runs/smoke")


def assert_two_epochs_each_step_once(summary: dict, records: list[dict]) -> None:
    assert summary["final"]["epoch"] == 2 and summary["final"]["step"] == 16
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(2, 17, 2))  # each step once, in order
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]


@pytest.mark.usefixtures("ray_session")
def test_a_run_outlives_an_object_store_outage_mid_epoch(
    s3: str, s3_link: Forwarder, tmp_path: Path, fault_env
) -> None:
    """The store is away for 40 s during epoch 2, within run.storage_retry_s: the run finishes
    every epoch, each step once in its metrics, whether the outage was waited out or a worker
    failed on it and the run restarted."""
    overrides = ["run.storage_retry_s=60", "ray.max_failures=3"]
    summary, away, records = run_through_an_outage(
        s3, s3_link, tmp_path, fault_env, "outage-run", overrides
    )
    assert away >= 39  # the store was really away
    assert_two_epochs_each_step_once(summary, records)


@pytest.mark.usefixtures("ray_session")
def test_an_outage_past_the_retry_window_ends_in_restarts_then_one_line(
    s3: str, s3_link: Forwarder, tmp_path: Path, fault_env, capsys
) -> None:
    """The store goes away for good during epoch 2, with run.storage_retry_s=5: the run
    restarts from its newest checkpoint (one line each) and, with no progress possible, ends
    after ray.max_failures restarts in one StorageError line, not a traceback."""
    from empssl_ray.launch import user_errors

    started = time.monotonic()
    overrides = ["run.storage_retry_s=5", "ray.max_failures=1"]
    with pytest.raises(SystemExit), user_errors():
        run_through_an_outage(s3, s3_link, tmp_path, fault_env, "outage-end", overrides, 0)
    out = capsys.readouterr()
    print(f"ended {time.monotonic() - started:.0f} s after the run began")
    last = out.err.strip().splitlines()[-1]
    assert last.startswith("error: StorageError:") and "storage" in last, out.err[-3000:]
    # The driver's own lines (Ray's workers' logs, "(RayTrainWorker pid=..) ..", stream to
    # this test's console; a job hides them unless run.verbose).
    assert not any(line.startswith("Traceback") for line in out.err.splitlines()), out.err
    assert "restarting" in out.out, out.out[-3000:]


SWEEP_SCENARIO = Path(__file__).with_name("sweep_loss_scenario.py")


@pytest.mark.timeout(DRAIN_LIMIT_S + 180)
def test_a_sweep_that_loses_a_trials_node_completes(s3: str, tmp_path: Path) -> None:
    """The first of two trials loses its trainer node without notice in its second epoch: it
    resumes from its checkpoint (each epoch reported once) and ends; the sweep completes."""
    data = f"{s3}/sweep-loss/data"
    prepare(DataConfig(name="fashion-mnist", train_limit=512, test_limit=256), data, 64, False)
    seen = run_scenario(SWEEP_SCENARIO, [str(tmp_path), data, f"{s3}/sweep-loss"], DRAIN_LIMIT_S)
    assert seen["lost_at_step"] > 8  # inside the first trial's second epoch
    assert seen["best_yaml"] and seen["best_yaml"].endswith("best.yaml")
    assert len(seen["trial_epochs"]) == 2, seen["trial_epochs"]
    assert all(epochs == [1, 2] for epochs in seen["trial_epochs"].values()), seen
    assert seen["attempts"] == 3  # two trials, and the first one's restart
    table = seen["results_csv"].splitlines()
    assert len(table) == 3 and "Error" not in seen["results_csv"], seen["results_csv"]
