"""Experiment tracking: the tracked run of a run dir, reopened by every start; W&B offline run
files; the preflight naming the missing extra. (A tracked run through Ray Train, killed and
resumed, and a sweep's runs: tests/test_ray_pipeline.py and tests/test_ray_tune.py.)"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from empssl_ray.config import ConfigError, PretrainConfig
from empssl_ray.launch import compose
from empssl_ray.on_ray.tracking import Tracker, flat_params, numeric
from empssl_ray.rules import validate


def tracked(backend: str, **settings: str) -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.run.name = "tracked"
    cfg.tracking.backend = backend
    for key, value in settings.items():
        setattr(cfg.tracking, key, value)
    return cfg


def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a W&B run file (`run-<id>.wandb`): a 7-byte header, then LevelDB-log
    blocks of 32 KiB holding records (checksum, length, type) cut into fragments."""
    blob, block, pos, parts = path.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(blob):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", blob[pos : pos + 7])
        parts += blob[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or a record's last fragment
            yield parts
            parts = b""


def wandb_history(folder: Path) -> list[dict]:
    """The metric rows (history records) of every offline run file under a W&B folder."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        for data in wandb_records(path):
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows


def test_parameters_are_the_config_flattened_and_metrics_its_numbers() -> None:
    params = flat_params(compose("pretrain", ["experiment=smoke", "optim.lr=0.25"]))
    assert params["optim.lr"] == 0.25 and params["run.name"] == "smoke"
    assert isinstance(params["eval.label_fractions"], str)  # lists as text
    assert numeric({"loss": 1.5, "step": 3, "kind": "step", "ok": True, "x": "a"}, "e/") == {
        "e/loss": 1.5
    }


def test_a_missing_backend_is_one_line_naming_the_extra(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"^tracking.backend='wandb' .*empssl-ray\[mlflow\]"):
        validate(tracked("wandb"))


def test_every_start_of_a_run_continues_its_mlflow_run(mlflow_server: str) -> None:
    """Reopened by the id a checkpoint kept, or found again by the run dir's tag."""
    from mlflow.tracking import MlflowClient

    cfg = tracked("mlflow", uri=mlflow_server, experiment="reopen")
    first = Tracker(cfg, "s3://b/runs/tracked")
    first.log([(1, {"loss": 3.0}), (2, {"loss": 2.0}), (2, {"epoch/loss": 2.5})])
    first.close()
    again = Tracker(cfg, "s3://b/runs/tracked")  # a restart before any checkpoint held the id
    assert again.run_id == first.run_id
    again.log([(3, {"loss": 1.0})])
    again.log_files({"eval.json": b"{}"})
    again.close()
    Tracker(cfg, "s3://b/runs/tracked", first.run_id).close()  # the checkpoint's id
    other = Tracker(cfg, "s3://b/runs/another")
    other.close()
    assert other.run_id != first.run_id
    client = MlflowClient(mlflow_server)
    history = [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")]
    assert sorted(history) == [(1, 3.0), (2, 2.0), (3, 1.0)]
    run = client.get_run(first.run_id)
    assert run.data.params["run.name"] == "tracked" and run.data.metrics["epoch/loss"] == 2.5
    assert [a.path for a in client.list_artifacts(first.run_id)] == ["eval.json"]


def test_wandb_offline_writes_its_run_files_with_the_metrics(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tracked("wandb", experiment="offline", wandb_dir=str(tmp_path))
    tracker = Tracker(cfg, str(tmp_path / "runs" / "tracked"))
    tracker.log([(1, {"loss": 3.0}), (2, {"loss": 2.0}), (2, {"epoch/knn_acc": 0.25})])
    tracker.log_files({"eval.json": b"{}"})
    tracker.close()
    again = Tracker(cfg, str(tmp_path / "runs" / "tracked"))
    assert again.run_id == tracker.run_id  # the same W&B run id at every start
    again.close()
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in wandb_history(tmp_path)]
    assert rows == [{"loss": 3.0}, {"loss": 2.0, "epoch/knn_acc": 0.25}]


def test_mlflow_as_a_user_first_tries_it_gets_one_store_or_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tracking.uri: one SQLite file beside the run's storage, the same path for the driver
    and every worker (MLflow's own default lives in each process's working directory, and a run
    ended in 'Run with id=... not found'). A file:// store (MLflow 3 refuses it under a Ray
    Train traceback) and a run on object storage without a URI: one line saying what to pass."""
    from empssl_ray.on_ray.tracking import mlflow_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = compose("pretrain", ["tracking.backend=mlflow", f"run.storage_path={tmp_path}/runs"])
    uri = mlflow_uri(cfg)
    assert uri == f"sqlite:///{tmp_path}/runs/mlflow.db"
    cfg.tracking.uri = "sqlite:///rel/mlflow.db"  # relative: made absolute in the driver
    assert mlflow_uri(cfg) == f"sqlite:///{tmp_path}/rel/mlflow.db"
    for store in (f"file://{tmp_path}/mlruns", "mlruns"):
        cfg.tracking.uri = store
        with pytest.raises(ConfigError, match=r"^tracking.uri=.*refuses a file store; pass"):
            mlflow_uri(cfg)
    on_s3 = compose("pretrain", ["tracking.backend=mlflow", "run.storage_path=s3://b/runs"])
    with pytest.raises(ConfigError, match=r"^tracking.backend=mlflow with run.storage_path=s3"):
        mlflow_uri(on_s3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_uri(on_s3) == "http://127.0.0.1:5000"
    # The default store works from any working directory: a run tracked there is found again
    # from another one, as a restarted worker would.
    (tmp_path / "runs").mkdir()
    cfg.tracking.uri = uri
    first = Tracker(cfg, f"{tmp_path}/runs/smoke")
    first.log([(1, {"loss": -1.0})])
    first.close()
    monkeypatch.chdir(tmp_path / "runs")
    again = Tracker(cfg, f"{tmp_path}/runs/smoke")
    assert again.run_id == first.run_id
    again.close()
