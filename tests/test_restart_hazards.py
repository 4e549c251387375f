"""What a long run meets at scale, each held alone: a NaN inside an epoch, a store that refuses
rather than misses, a preemption inside a sweep, step records and counters across a restart,
node clocks, and the global batch at another worker count. No Ray cluster is started."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from empssl_ray.config import ConfigError
from empssl_ray.data import storage
from empssl_ray.data.read_plan import StreamPosition
from empssl_ray.launch import compose
from empssl_ray.method.training import NonFiniteLossError, Trainer
from empssl_ray.runs.checkpoints import (
    CHECKPOINT_FILE,
    ResumePoint,
    checkpoint_name,
    prune_checkpoints,
    resume_point,
    save_checkpoint,
)
from empssl_ray.runs.metrics import METRICS_FILE
from tests.test_engine import batches, tiny_config


def hooks(run_dir: str, world: int = 1) -> Any:
    from empssl_ray.on_ray.reporting import RayHooks

    cfg = tiny_config()
    position = StreamPosition(rows=64, epoch_rows=48)
    return RayHooks(cfg, run_dir, 3, 0, world, position, {})


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Ray Train's report, caught: what each checkpoint would hand Ray (no Train session)."""
    import ray.train

    caught: list[dict[str, Any]] = []

    def report(metrics: dict, checkpoint: Any = None, checkpoint_dir_name: Any = None) -> None:
        caught.append({"metrics": dict(metrics), "name": checkpoint_dir_name, "saved": checkpoint})

    monkeypatch.setattr(ray.train, "report", report)
    return caught


def one_step(trainer: Trainer, hook: Any) -> None:
    batch = batches(1)[0]
    trainer.run_epoch(
        [{**batch, "epoch": torch.zeros(16, dtype=torch.int64), "id": torch.arange(16)}],
        after_step=lambda b: hook.on_batch(trainer, b),
        log_every=100,  # no report reads the loss: only the checkpoint's own check
    )


def test_a_checkpoint_inside_an_epoch_never_saves_nan_weights(tmp_path: Path, reports) -> None:
    """The loss is read every log_every steps; a checkpoint can come between: it checks the
    epoch's losses and the weights first, and saves nothing poisoned."""
    hook = hooks(str(tmp_path))
    trainer = Trainer(tiny_config(), in_channels=3, image_size=32, steps_total=8)
    one_step(trainer, hook)
    hook.checkpoint(trainer, {"kind": "checkpoint"})
    assert len(reports) == 1 and reports[0]["saved"] is not None
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))  # a NaN update, loss not yet read
    with pytest.raises(NonFiniteLossError, match="weights became NaN"):
        hook.checkpoint(trainer, {"kind": "checkpoint"})
    assert len(reports) == 1  # nothing reported, nothing saved
    trainer.epoch_sums[0] = float("nan")  # a step's loss NaN between two reports
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        trainer.check_finite()


def test_step_records_reach_the_store_with_each_checkpoint(s3: str, reports) -> None:
    """A checkpoint inside an epoch pushes the step records up to it: a crash after it loses
    none (the restart truncates the history to the checkpoint and never logs them again)."""
    run_dir = f"{s3}/hazards/metrics-push"
    hook = hooks(run_dir)
    trainer = Trainer(tiny_config(), in_channels=3, image_size=32, steps_total=8)
    hook.on_epoch_start(trainer)
    hook.on_step(trainer, {"loss": -1.0, "step": 1, "epoch": 0})
    hook.checkpoint(trainer, {"kind": "checkpoint"})
    text = storage.read_text(storage.join(run_dir, METRICS_FILE))
    assert [json.loads(line)["step"] for line in text.splitlines()] == [1]
    assert json.loads(text.splitlines()[0])["workers"] == 1


def test_checkpoints_sort_by_step_whatever_the_node_clock(tmp_path: Path, monkeypatch) -> None:
    """Rank 0 on a node whose clock is 2 hours behind: its newer checkpoint is still the newest,
    and pruning keeps it."""
    import time as clock

    real = clock.time()
    names = []
    for step, skew in ((10, 0.0), (20, -7200.0), (30, -7200.0)):
        monkeypatch.setattr(clock, "time", lambda skew=skew: real + skew)
        names.append(checkpoint_name(step))
        folder = tmp_path / names[-1]
        folder.mkdir()
        save_checkpoint({"epoch": 0, "step": step}, str(folder))
    times = [name.split("_", 2)[2] for name in names]
    assert times[1] < times[0]  # the clock alone would order them wrongly...
    assert resume_point(str(tmp_path)).step == 30  # ...the step orders them right
    prune_checkpoints(str(tmp_path), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_a_store_that_refuses_is_not_taken_for_a_missing_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 403 (or a KMS denial) on the newest checkpoint is one StorageError line, never a
    silent resume from an older checkpoint or from step 0."""
    for step in (4, 8):
        folder = tmp_path / checkpoint_name(step)
        folder.mkdir()
        save_checkpoint({"epoch": 0, "step": step}, str(folder))
    newest = checkpoint_name(8)[:21]  # "checkpoint_0000000008"
    real = storage.retrying

    def refusing(what: str, operation: Any) -> Any:
        if newest in what:
            raise OSError("AWS Error ACCESS_DENIED during GetObject operation: 403 Forbidden")
        return real(what, operation)

    monkeypatch.setattr(storage, "retrying", refusing)
    with pytest.raises(storage.StorageError, match="cannot (read|look up) .*403 Forbidden"):
        resume_point(str(tmp_path))
    monkeypatch.setattr(storage, "retrying", real)
    assert resume_point(str(tmp_path)).step == 8


@pytest.mark.parametrize(
    "message,transient",
    [
        ("google::cloud::Status(UNAVAILABLE: connection lost)", True),
        ("GCS request failed: DEADLINE_EXCEEDED", True),
        ("AWS Error ACCESS_DENIED: 403", False),
    ],
)
def test_gcs_outages_are_waited_out(message: str, transient: bool) -> None:
    assert storage.is_transient(OSError(message)) is transient


def test_counts_after_a_restart_inside_one_fit_are_not_counted_twice() -> None:
    """A drained node's worker group restarts inside the same fit, from a checkpoint whose
    counts already hold this fit's images: only the counts since the start are added."""
    from empssl_ray.on_ray.stream import Tally

    tally = Tally()
    tally.add("augmented_images", 100)  # the first worker group, up to its checkpoint
    saved = tally.get()  # what that checkpoint holds
    tally.set_start("resume from that checkpoint")
    tally.add("augmented_images", 30)
    assert saved["augmented_images"] + tally.since_start()["augmented_images"] == 130
    assert tally.get()["augmented_images"] == 130  # the tally's own total stays


def test_a_sweep_passes_tune_only_reports_with_its_objective(monkeypatch) -> None:
    """A preemption checkpoint inside an epoch reports no knn_acc; Tune would fail the trial
    on it (strict metric check), so it is not forwarded. Epoch reports are."""
    from ray.tune.integration import ray_train

    forwarded: list[dict] = []

    class Queue:
        def put(self, item: dict) -> None:
            forwarded.append(item)

    def init(self: Any) -> None:
        self._training_actor_item_queue = Queue()

    monkeypatch.setattr(ray_train.TuneReportCallback, "__init__", init)
    from empssl_ray.on_ray.tune import objective_reports

    callback = objective_reports("knn_acc")
    callback.after_report(None, [{"kind": "checkpoint", "epoch": 0, "step": 7}], None)
    callback.after_report(None, [{"kind": "epoch", "epoch": 1, "knn_acc": 0.4}], None)
    assert forwarded == [{"kind": "epoch", "epoch": 1, "knn_acc": 0.4}]


def test_the_global_batch_is_the_same_at_every_worker_count() -> None:
    """optim.batch_size is the global batch: refused where a worker count the run may have
    cannot share it (100 on 3 workers trained 99), accepted where every count can."""
    from empssl_ray.on_ray.train import steps_per_epoch, worker_range
    from empssl_ray.rules import validate

    with pytest.raises(ConfigError, match=r"^optim.batch_size=100 cannot work: it must be a mult"):
        validate(compose("pretrain", ["ray.num_workers=3"]))
    with pytest.raises(ConfigError, match=r"^optim.batch_size=100 cannot work"):
        validate(compose("pretrain", ["ray.min_workers=2", "ray.num_workers=4"]))  # 3 cannot
    elastic = compose("pretrain", ["ray.min_workers=4", "ray.num_workers=5"])
    validate(elastic)
    assert worker_range(elastic) == (4, 5)
    assert worker_range(compose("pretrain", ["ray.num_workers=2"])) == 2
    # Steps per epoch depend on the split and the global batch only.
    assert steps_per_epoch(1_281_167, elastic) == 12_811


def test_a_resume_with_another_epoch_length_is_refused_in_one_line() -> None:
    """A rerun of a run with another optim.batch_size would count the saved schedule and
    position in other steps: one line says so."""
    from empssl_ray.on_ray.train import check_schedule

    cfg = compose("pretrain", ["optim.batch_size=64", "run.name=long"])
    saved = StreamPosition(rows=1000, epoch_rows=960).state()
    check_schedule(saved, 15, cfg)  # 15 x 64 = 960: the same epochs
    with pytest.raises(ConfigError, match=r"^run.name=long was checkpointed with epochs of 960"):
        check_schedule(saved, 7, compose("pretrain", ["optim.batch_size=128", "run.name=long"]))


def test_the_position_file_stays_small_at_imagenet_scale(tmp_path: Path) -> None:
    """position.pt of a run mid-epoch over 1.28M rows: one epoch's bits, about 160 KB."""
    position = StreamPosition(rows=1_281_167, epoch_rows=1_281_100)
    position.add(np.zeros(600_000, int), np.arange(600_000))
    save_checkpoint({"epoch": 0, "step": 1}, str(tmp_path), position.state())
    size = (tmp_path / "position.pt").stat().st_size
    assert 160_000 < size < 170_000, size
    assert (tmp_path / CHECKPOINT_FILE).exists()
    assert ResumePoint(str(tmp_path / CHECKPOINT_FILE)).position() is not None
