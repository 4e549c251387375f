"""The Ray pipeline end to end on a local Ray: training, faults, resume, evaluation, bad data.

The expensive run (2 workers, 2 epochs, a trainer killed mid-epoch 2, evaluation) is shared by
the tests that inspect its outputs.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from empssl_ray.data import storage
from empssl_ray.data.datasets import open_dataset
from empssl_ray.faults import Faults
from empssl_ray.launch import compose
from empssl_ray.on_ray.tracking import RUN_DIR_TAG
from empssl_ray.runs.metrics import read_metrics
from tests.conftest import SHARED_CIFAR, ray_state, s3_keys, write_image_parquet

pytestmark = pytest.mark.usefixtures("ray_session")

DRIVER_MIB = 48  # the driver's memory bound over an evaluation (docs/cluster.md)


def epoch_records(run_dir: str) -> list[int]:
    return [r["epoch"] for r in read_metrics(run_dir) if r["kind"] == "epoch"]


@pytest.fixture(scope="module")
def smoke_run(ray_session, s3, mlflow_server, tmp_path_factory):
    """The smoke preset with its data and every output on the loopback S3 endpoint, tracked in
    the loopback MLflow server."""
    from empssl_ray.config import DataConfig
    from empssl_ray.data.prepare import prepare
    from jobs.pretrain import main

    data = f"{s3}/pipeline/fashion-mnist"
    prepare(
        DataConfig(name="fashion-mnist", train_limit=540, test_limit=256),
        data,
        rows_per_file=200,
        progress=False,
    )
    work = tmp_path_factory.mktemp("work")
    cfg = compose(
        "pretrain",
        [
            "experiment=smoke",
            "data=parquet",
            f"data.root={data}",
            "data.train_limit=540",
            f"run.storage_path={s3}/pipeline/runs",
            "run.progress=false",
            "run.checkpoint_every_steps=3",
            # One epoch per Ray Data execution, as a split of ImageNet's size streams.
            "ray.blocks_per_execution=1",
            "tracking.backend=mlflow",
            f"tracking.uri={mlflow_server}",
            "tracking.experiment=pipeline",
        ],
    )
    # 540 images: 8 steps of 64 an epoch, 28 left out of each epoch's plan. Rank 0 dies
    # abruptly twice: at step 9, just after epoch 1's end (its checkpoint is the epoch's), and
    # at step 14, in the middle of epoch 2, after the checkpoint of step 12. Fault markers need
    # a local folder (object stores have no atomic create-if-absent); every rank records the
    # rows each step trained on.
    os.environ.update(
        EMPSSL_FAULT_KILL_TRAINER_AT_STEP="9,14",
        EMPSSL_FAULT_DIR=str(work),
        EMPSSL_FAULT_RECORD_TRAINED=str(work / "trained"),
    )
    cwd = os.getcwd()
    os.chdir(work)  # a relative "s3:" folder written by mistake would appear here
    try:
        summary = main(cfg)
    finally:
        os.chdir(cwd)
        for key in ("KILL_TRAINER_AT_STEP", "DIR", "RECORD_TRAINED"):
            del os.environ[f"EMPSSL_FAULT_{key}"]
    return cfg, summary, f"{s3}/pipeline/runs/smoke", work


def test_run_on_s3_survives_a_killed_trainer_without_redoing_epochs(smoke_run) -> None:
    from empssl_ray.runs.checkpoints import latest_checkpoint, load_checkpoint

    _, summary, run_dir, work = smoke_run
    assert (work / "fault-kill_trainer_at_step-9.fired").exists()
    assert (work / "fault-kill_trainer_at_step-14.fired").exists()
    assert epoch_records(run_dir) == [1, 2]  # epoch 1 was not redone after the restart
    assert summary["final"]["epoch"] == 2 and summary["final"]["step"] == 16
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["epoch"] == 2 and state["step"] == 16 and state["config"]["run"]["name"] == "smoke"
    assert {"model", "optimizer", "scheduler"} <= set(state)


def test_a_restart_inside_an_epoch_trains_every_image_once_and_logs_every_step_once(
    smoke_run,
) -> None:
    _, summary, run_dir, work = smoke_run
    # Every rank's (step, epoch, id) per process: the killed attempt's rows up to the step of
    # the checkpoint it resumed from count, the later ones were trained again after it.
    attempts = {}
    for f in (work / "trained").glob("trained-*.txt"):
        attempts[f.name] = np.loadtxt(f, dtype=np.int64).reshape(-1, 3)
    firsts = sorted({int(rows[:, 0].min()) for rows in attempts.values()})
    # Three starts: step 1, after epoch 1's checkpoint (step 8), and after step 12's, inside
    # epoch 2 (not at its start).
    assert firsts == [1, 9, 13], firsts
    kept = []
    for rows in attempts.values():  # each attempt's rows up to where the next one resumed
        later = [f for f in firsts if f > rows[:, 0].min()]
        kept.append(rows[rows[:, 0] < later[0]] if later else rows)
    pairs = [tuple(p) for p in np.concatenate(kept)[:, 1:].tolist()]
    assert len(pairs) == len(set(pairs)) == 2 * 512  # each image at most once an epoch
    for epoch in (0, 1):  # each epoch trains all it planned: 512 of the 540 rows
        trained = {i for e, i in pairs if e == epoch}
        assert len(trained) == 512 and trained <= set(range(540))
    assert len({i for _, i in pairs}) > 512  # each epoch left other rows out
    steps = [r["step"] for r in read_metrics(run_dir) if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 16  # each step once, in order
    # Checkpoints pruned across the restart; the counters carried on from the checkpoint.
    folders = {k.split("/")[3] for k in s3_keys(run_dir) if k.endswith("/checkpoint.pt")}
    assert len(folders) == 2, folders
    assert summary["final"]["augmented_images"] >= 2 * 512


def test_the_killed_and_resumed_run_is_one_tracked_run_with_every_step_once(
    smoke_run, mlflow_server
) -> None:
    from mlflow.tracking import MlflowClient

    _, summary, run_dir, _ = smoke_run
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("pipeline")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the restart at step 10 continued it
    run_id = runs[0].info.run_id
    assert runs[0].data.params["optim.epochs"] == "2" and runs[0].data.tags[RUN_DIR_TAG] == run_dir
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 16, steps  # each step once
    assert [m.step for m in client.get_metric_history(run_id, "epoch/loss")] == [8, 16]
    evaluated = summary["eval"]["pretrained"]["probe_acc"]
    assert runs[0].data.metrics["eval/pretrained/probe_acc"] == pytest.approx(evaluated)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"eval.json", "curves.png", "embeddings-pretrained.png", "encoder.pt"} <= artifacts


def test_run_writes_everything_to_the_bucket_and_nothing_local(smoke_run) -> None:
    _, summary, run_dir, work = smoke_run
    keys = s3_keys(run_dir)
    for name in ("metrics.jsonl", "metrics.csv", "curves.png", "summary.json", "eval.json"):
        assert f"pipeline/runs/smoke/{name}" in keys, name
    assert any("/tensorboard/events.out.tfevents." in k for k in keys)
    assert any(k.endswith("/checkpoint.pt") for k in keys)
    assert not list(work.rglob("s3:*")) and not list(Path.cwd().glob("s3:*"))
    records = read_metrics(run_dir)
    epochs = [r for r in records if r["kind"] == "epoch"]
    for key in (
        "loss",
        "tcr",
        "invariance",
        "lr",
        "patches_per_s",
        "data_wait_frac",
        "knn_acc",
        "skipped_images",
    ):
        assert key in epochs[-1], key
    assert 0 <= epochs[-1]["data_wait_frac"] <= 1 and epochs[-1]["skipped_images"] == 0
    assert any(r["kind"] == "step" for r in records)
    written = json.loads(storage.read_text(f"{run_dir}/eval.json"))
    assert written["checkpoint"].startswith(f"{run_dir}/checkpoint_")
    m = written["pretrained"]
    # Well above chance (10 classes): a label misaligned with its image would not get there.
    assert m["probe_acc"] > 0.3 and m["knn_acc"] > 0.3, m
    assert m["num_train"] == 540 and m["num_test"] == 256


def test_evaluate_job_reevaluates_the_run_from_s3(smoke_run) -> None:
    from jobs.evaluate import main

    cfg, _, run_dir, _ = smoke_run
    ev = compose(
        "evaluate",
        [
            "experiment=smoke",
            "data=parquet",
            f"data.root={cfg.data.root}",
            f"run.storage_path={cfg.run.storage_path}",
            "run.progress=false",
            "eval.probe_epochs=5",
            f"output={run_dir}/eval-again.json",
        ],
    )
    results = main(ev)
    written = json.loads(storage.read_text(f"{run_dir}/eval-again.json"))
    assert written["checkpoint"].startswith(f"{run_dir}/checkpoint_")
    assert written["pretrained"]["probe_acc"] == results["pretrained"]["probe_acc"]
    assert results["pretrained"]["num_test"] == 256


def test_transfer_evaluation_on_another_dataset(smoke_run, tmp_path: Path) -> None:
    """Pretrained on 1-channel 28x28 Fashion-MNIST, evaluated on 3-channel 16x16 images."""
    from jobs.evaluate import main

    cfg, _, run_dir, _ = smoke_run
    other = write_image_parquet(tmp_path / "rgb")
    ev = compose(
        "evaluate",
        [
            "experiment=smoke",
            "data=parquet",
            f"data.root={cfg.data.root}",
            f"run.storage_path={cfg.run.storage_path}",
            "run.progress=false",
            "eval.probe_epochs=5",
            "eval.probe_batch_size=32",
            "eval_data=parquet",
            f"eval_data_root={other}",
            f"output={tmp_path / 'transfer.json'}",
        ],
    )
    results = main(ev)
    written = json.loads((tmp_path / "transfer.json").read_text())
    assert written["pretrain_data"] == "parquet" and written["eval_data"] == "parquet"
    assert written["pretrained"]["num_train"] == 96 and written["pretrained"]["num_test"] == 48
    assert results["pretrained"]["probe_acc"] == written["pretrained"]["probe_acc"]


def test_evaluation_through_shards_matches_the_in_memory_path(tmp_path: Path) -> None:
    """Embeddings go to float16 Parquet shards, probe and kNN run in a task on a worker: the
    same figures as the in-memory path on the same embeddings."""
    from empssl_ray.evaluation.probe import evaluate_features
    from empssl_ray.evaluation.shards import embedding_files, read_embeddings
    from jobs.evaluate import main

    ev = compose(
        "evaluate",
        [
            "experiment=smoke",
            "random_init=true",
            "run.progress=false",
            "eval.probe_epochs=5",
            "eval.batch_size=16",
            "run.name=shards",
            f"run.storage_path={tmp_path}",
        ],
    )
    results = main(ev)["random init"]
    features = tmp_path / "shards" / "features" / "random-init"
    assert len(embedding_files(str(features / "train"))) == 2  # 512 images, blocks of 256
    train, test = read_embeddings(str(features / "train")), read_embeddings(str(features / "test"))
    assert train[0].dtype == torch.float16 and len(train[0]) == 512 and len(test[0]) == 256
    again = evaluate_features(*train, *test, ev.eval, ev.run.seed)
    for key in ("probe_acc", "probe_10pct_acc", "knn_acc"):  # float reductions: one image
        assert abs(again[key] - results[key]) <= 1 / 256, key
    picture = tmp_path / "shards" / "embeddings-random-init.png"  # beside curves.png
    assert picture.read_bytes().startswith(b"\x89PNG")


def test_evaluation_keeps_the_features_off_the_driver(tmp_path: Path) -> None:
    """The bound docs/cluster.md states: the driver's resident memory grows by less than
    DRIVER_MIB over an evaluation whose float16 training features alone are more than twice
    that (8,000 x 8,192 x 2 bytes = 125 MiB), measured with the process's own counters. A
    smaller evaluation first pays the one-time imports and Ray's start-up in the driver."""
    import threading

    from jobs.evaluate import main

    page = os.sysconf("SC_PAGE_SIZE")

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page / 2**20

    def evaluate(train: int) -> dict[str, Any]:
        overrides = [
            "experiment=smoke",
            "random_init=true",
            "run.progress=false",
            f"data.train_limit={train}",
            "data.test_limit=1000",
            "model.prefeature_dim=8192",
            "eval.num_patches=1",
            "eval.probe_epochs=1",
            "eval.batch_size=500",
            f"run.name=bounded-{train}",
            f"run.storage_path={tmp_path}",
        ]
        return main(compose("evaluate", overrides))["random init"]

    evaluate(1000)
    before, peak, done = rss_mib(), [0.0], threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_mib())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = evaluate(8000)
    finally:
        done.set()
        watcher.join()
    assert results["num_train"] == 8000 and results["num_test"] == 1000
    features_mib = 8000 * 8192 * 2 / 2**20
    assert peak[0] - before < DRIVER_MIB < features_mib / 2, (before, peak[0])


def test_rerun_with_the_same_name_resumes(smoke_run) -> None:
    from jobs.pretrain import main

    cfg, _, run_dir, _ = smoke_run
    cfg.optim.epochs, cfg.run.evaluate = 3, False
    summary = main(cfg)
    assert epoch_records(run_dir) == [1, 2, 3]  # only the new epoch ran
    assert summary["final"]["step"] == 24


def test_evaluate_job_on_a_random_init_encoder(tmp_path: Path) -> None:
    from jobs.evaluate import main

    ev = compose(
        "evaluate",
        [
            "experiment=smoke",
            "random_init=true",
            "run.progress=false",
            f"output={tmp_path / 'e.json'}",
            "eval.probe_epochs=5",
        ],
    )
    results = main(ev)
    written = json.loads((tmp_path / "e.json").read_text())
    assert written["checkpoint"] == "random init"
    assert written["random init"]["probe_acc"] == results["random init"]["probe_acc"]
    assert results["random init"]["num_train"] == 512
    assert results["random init"]["num_test"] == 256


def local_cfg(tmp_path: Path, *extra: str):
    """One CPU worker on a small parquet dataset (one bad image): the cheap way to test failures.

    Not Ray Train's local mode (num_workers=0): it keeps no checkpoints on storage.
    """
    data = write_image_parquet(tmp_path / "data", bad_rows=(5,))
    return compose(
        "pretrain",
        [
            "experiment=smoke",
            "data=parquet",
            f"data.root={data}",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=local",
            "ray.num_workers=1",
            "ray.max_failures=2",  # user errors must end the run anyway, at the first attempt
            "optim.batch_size=16",
            "patches.size=16",
            "run.progress=false",
            "eval.monitor_test=0",
            "eval.probe_batch_size=32",  # 96 training images: the preflight refuses 100
            *extra,
        ],
    )


def test_bad_image_stops_with_one_line_naming_the_file(tmp_path: Path, capsys) -> None:
    from empssl_ray.config import DataConfig, PatchConfig, RayConfig
    from empssl_ray.launch import user_errors
    from empssl_ray.on_ray.stream import patch_stream

    data = DataConfig(name="parquet", root=str(write_image_parquet(tmp_path, bad_rows=(5,))))
    ds, _, _ = patch_stream(
        open_dataset(data, "train"), PatchConfig(num_patches=2), RayConfig(aug_max_actors=1), 0
    )
    with pytest.raises(SystemExit) as exit_info, user_errors():
        ds.materialize()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # Ray's own progress logs come first in this process
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: DatasetError:") and "part-0.parquet" in last


def test_skips_bad_images_then_stops_on_nan_keeping_the_checkpoint(
    tmp_path: Path, fault_env, capsys
) -> None:
    from empssl_ray.launch import user_errors
    from jobs.pretrain import main

    fault_env(NAN_AT_EPOCH=1)  # epoch 1 trains, epoch 2 starts with NaN weights
    cfg = local_cfg(tmp_path, "optim.epochs=2", "data.on_bad_image=skip")
    with pytest.raises(SystemExit), user_errors():
        main(cfg)
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert err[-1].startswith("error: NonFiniteLossError: loss is nan"), err[-1]
    assert "restarting" not in out.out  # ended after one attempt, with max_failures=2
    run_dir = str(tmp_path / "runs/local")
    # One bad image a read of the split. The count is cumulative, and epoch 2's read (started
    # early by the prefetcher) may already have skipped it when epoch 1 reports.
    skipped = [r["skipped_images"] for r in read_metrics(run_dir) if r["kind"] == "epoch"]
    assert len(skipped) == 1 and skipped[0] in (1, 2), skipped
    ckpts = glob.glob(f"{run_dir}/checkpoint_*/checkpoint.pt")
    assert len(ckpts) == 1
    state = torch.load(ckpts[0], weights_only=False)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_bad_image_in_training_ends_the_run_at_once(tmp_path: Path, capsys) -> None:
    from empssl_ray.launch import user_errors
    from jobs.pretrain import main

    cfg = local_cfg(tmp_path, "optim.epochs=1")  # data.on_bad_image=error, max_failures=2
    with pytest.raises(SystemExit), user_errors():
        main(cfg)
    out = capsys.readouterr()
    last = out.err.strip().splitlines()[-1]
    assert last.startswith("error: DatasetError:") and "part-0.parquet" in last, last
    assert "restarting" not in out.out


def drain_ids_or_report(ds: Any, seconds: float, before: str) -> np.ndarray:
    """Every "id" of the stream; a stall fails with the cluster's state, not a bare timeout."""
    import threading

    parts: list[np.ndarray] = []
    reader = threading.Thread(
        target=lambda: parts.extend(
            b["id"] for b in ds.iter_batches(batch_size=100, batch_format="numpy")
        ),
        daemon=True,
    )
    reader.start()
    reader.join(seconds)
    if reader.is_alive():
        pytest.fail(
            f"stalled after {sum(len(p) for p in parts)} rows\nbefore: {before}\nnow: {ray_state()}"
        )
    return np.concatenate(parts)


@pytest.mark.timeout(240)  # a stalled pool fails here, not at the suite's 600 s
def test_killed_augmentation_actor_loses_no_image(tmp_path: Path) -> None:
    """The pool is 1..2 actors, as the defaults. The stream needs read_cpus + one actor's CPUs
    free: this drill once stalled for good after a failed run's actor pool outlived it (now
    released by `fit_and_release`; `all_cpus_free_for_ray_tests` catches any other leak)."""
    import ray

    from empssl_ray.config import DataConfig, PatchConfig, RayConfig
    from empssl_ray.on_ray.stream import RowCounter, patch_stream

    data = DataConfig(name="fashion-mnist", train_limit=600)
    ray_cfg = RayConfig(
        aug_min_actors=1, aug_max_actors=2, aug_cpus_per_actor=0.5, aug_batch_size=50
    )
    counter = RowCounter.remote()
    faults = Faults({"KILL_AUGMENT_AFTER": "3"}, str(tmp_path))
    ds, _, rows = patch_stream(
        open_dataset(data, "train"),
        PatchConfig(num_patches=2, size=8),
        ray_cfg,
        seed=0,
        faults=faults,
        counter=counter,
        carry=("id",),
    )
    before = ray_state()
    ids = drain_ids_or_report(ds, seconds=180, before=before)
    assert os.path.exists(tmp_path / "fault-kill_augment_after.fired")  # an actor did die
    # Every image of the epoch arrives. A batch the dead actor had already streamed out can
    # arrive twice (Ray Data re-runs the whole task), never zero times.
    assert rows == 600 and set(ids.tolist()) == set(range(600))
    assert ray.get(counter.get.remote())["augmented_images"] >= 600


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="shared CIFAR-10 parquet not present")
def test_parquet_subset_is_the_same_rows_in_the_driver_and_in_ray_data() -> None:
    """The shared test file is in class order: "the first N rows to arrive" would be 2 classes."""
    from empssl_ray.config import DataConfig
    from empssl_ray.data.datasets import load_split
    from empssl_ray.on_ray.read import read_images

    data = DataConfig(name="parquet", root=str(SHARED_CIFAR), test_limit=2000)
    images, labels = load_split(data, "test")
    ds, _, rows = read_images(open_dataset(data, "test"), read_cpus=0.5, block_rows=256)
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    order = np.argsort(np.concatenate([p["id"] for p in parts]))  # the driver's row order
    assert rows == 2000 and len(order) == 2000
    assert np.array_equal(np.concatenate([p["label"] for p in parts])[order], labels)
    assert np.array_equal(np.concatenate([p["image"] for p in parts])[order], images)
    assert set(labels.tolist()) == set(range(10))


def test_training_stream_shuffles_each_epoch_without_an_all_to_all() -> None:
    """Every image once per epoch, a new order each epoch, the same order for the same seed, no
    operator in the plan that waits for the whole split (asserted on the plan itself), and all
    epochs in one execution: the actor pool starts once, not once per epoch."""
    import ray
    from ray.data._internal.logical.operators.all_to_all_operator import AbstractAllToAll

    from empssl_ray.config import DataConfig, PatchConfig, RayConfig
    from empssl_ray.on_ray.stream import RowCounter, patch_stream

    data = DataConfig(name="fashion-mnist", train_limit=600)
    ray_cfg = RayConfig(aug_max_actors=1, aug_cpus_per_actor=0.5, read_cpus=0.25, aug_batch_size=10)

    def stream(seed: int, epochs: range) -> tuple[Any, dict[int, list[int]], dict[str, int]]:
        counter = RowCounter.remote()
        ds, _, _ = patch_stream(
            open_dataset(data, "train"),
            PatchConfig(num_patches=2, size=8),
            ray_cfg,
            seed=seed,
            counter=counter,
            carry=("id", "epoch"),
            epochs=epochs,
        )
        ds.context.execution_options.preserve_order = True  # the planned order, as planned
        ids: dict[int, list[int]] = {}
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for epoch, i in zip(b["epoch"].tolist(), b["id"].tolist(), strict=True):
                ids.setdefault(epoch, []).append(i)
        return ds, ids, ray.get(counter.get.remote())

    ds, ids, counts = stream(seed=3, epochs=range(2))
    ops, todo = [], [ds._logical_plan.dag]
    while todo:
        op = todo.pop()
        ops.append(type(op).__name__)
        assert not isinstance(op, AbstractAllToAll), op
        todo += op.input_dependencies
    assert "MapBatches(PatchCutter)" in " ".join(str(o) for o in [ds._logical_plan.dag])
    assert sorted(ids) == [0, 1]
    assert sorted(ids[0]) == list(range(600)) == sorted(ids[1])
    assert ids[0] != ids[1]
    assert counts["patch_cutters_started"] == 1  # one pool for both epochs
    _, again, _ = stream(seed=3, epochs=range(1, 2))  # a run resumed at epoch 1
    assert again[1] == ids[1]


def test_a_large_split_streams_its_epochs_in_windows() -> None:
    """Where one execution would plan too many blocks (ray.blocks_per_execution), each
    execution holds a window of epochs (here one): iterating the windows gives every image of
    each epoch's plan once, and each window's last batch says its epoch is delivered."""
    import ray

    from empssl_ray.config import DataConfig, PatchConfig, RayConfig
    from empssl_ray.on_ray import read as ray_read
    from empssl_ray.on_ray.stream import RowCounter, patch_stream, training_windows

    data = DataConfig(name="fashion-mnist", train_limit=300)
    ray_cfg = RayConfig(
        aug_max_actors=1,
        aug_cpus_per_actor=0.5,
        read_cpus=0.25,
        aug_batch_size=10,
        blocks_per_execution=1,  # fewer than one epoch's blocks
    )
    counter = RowCounter.remote()
    split = open_dataset(data, "train")
    ds, _, _ = patch_stream(
        split,
        PatchConfig(num_patches=2, size=8),
        ray_cfg,
        seed=0,
        counter=counter,
        carry=("id", "epoch"),
        epochs=range(3),
        epoch_rows=280,  # whole batches of 40: 20 rows left out of each epoch's plan
    )
    windows = training_windows(split, ray_cfg, range(3))
    assert windows == [[0], [1], [2]]
    batches = ray_read.iterate_epochs(
        lambda: ds.iter_batches(batch_size=None, batch_format="numpy"), 10**6, windows
    )
    ids: dict[int, list[int]] = {}
    delivered = []
    for b in batches:
        delivered.append(b[ray_read.DELIVERED])
        for epoch, i in zip(b["epoch"].tolist(), b["id"].tolist(), strict=True):
            ids.setdefault(epoch, []).append(i)
    assert sorted(ids) == [0, 1, 2]
    assert all(len(ids[e]) == len(set(ids[e])) == 280 for e in ids)
    assert len(set(ids[0]) | set(ids[1]) | set(ids[2])) > 280  # other rows left out each epoch
    assert delivered[-1] == 3 and sorted(delivered) == delivered  # each window, in order
    # One pool per execution: three windows, and no execution after the last.
    assert ray.get(counter.get.remote())["patch_cutters_started"] == 3
