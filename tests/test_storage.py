"""The storage layer on a local folder and on a loopback S3 endpoint (moto's server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from empssl_ray.data import storage
from empssl_ray.runs.checkpoints import (
    CheckpointNotFoundError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from empssl_ray.runs.metrics import MetricsLogger, read_metrics
from tests.conftest import s3_keys


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3") + f"/storage-{os.getpid()}-{tmp_path.name}"


def test_files_round_trip_and_list(root: str) -> None:
    storage.write_text(storage.join(root, "a", "b.txt"), "hello")
    storage.write_bytes(storage.join(root, "a", "c.bin"), b"\0\1")
    assert storage.read_text(storage.join(root, "a", "b.txt")) == "hello"
    assert storage.exists(storage.join(root, "a", "c.bin"))
    assert not storage.exists(storage.join(root, "a", "missing"))
    assert [e.name for e in storage.list_dir(storage.join(root, "a"))] == ["b.txt", "c.bin"]
    assert storage.list_dir(storage.join(root, "none")) == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "a", "missing"))


def test_latest_checkpoint_is_the_newest_on_any_storage(root: str) -> None:
    run = storage.join(root, "run")
    with pytest.raises(CheckpointNotFoundError, match="pretrain first"):
        latest_checkpoint(run)
    for i, name in enumerate(
        ("checkpoint_2026-11-30_00-21-06.9", "checkpoint_2026-11-30_00-21-21.2")
    ):
        local = Path(storage.LocalMirror(storage.join(run, name)).path)
        save_checkpoint({"step": i, "epoch": i}, str(local))
        storage.copy_file(str(local / "checkpoint.pt"), storage.join(run, name, "checkpoint.pt"))
    newest = latest_checkpoint(run)
    assert newest.endswith("00-21-21.2/checkpoint.pt") and newest.startswith(root)
    assert load_checkpoint(newest)["step"] == 1
    assert load_checkpoint(storage.join(run, "checkpoint_2026-11-30_00-21-06.9"))["step"] == 0


def test_metrics_logger_mirrors_to_the_run_dir_and_resumes_its_history(root: str) -> None:
    run = storage.join(root, "logged")
    logger = MetricsLogger(run)
    logger.log("epoch", {"step": 1, "epoch": 1, "loss": 2.0})
    logger.flush()
    logger.close()
    again = MetricsLogger(run)  # a resumed run appends to the same history
    again.log("epoch", {"step": 2, "epoch": 2, "loss": 1.5})
    again.close()
    assert [r["loss"] for r in read_metrics(run)] == [2.0, 1.5]
    for name in ("metrics.csv", "curves.png", "metrics.jsonl"):
        assert storage.exists(storage.join(run, name)), name
    assert [e for e in storage.list_dir(storage.join(run, "tensorboard"))]
    if storage.is_uri(root):
        assert not os.path.exists(logger.mirror.path)  # the local stand-in is gone
        assert any(k.endswith("curves.png") for k in s3_keys(run))


def test_uri_handling_is_the_same_for_every_scheme() -> None:
    # gs:// takes the S3 code path through pyarrow; no GCS emulator is at hand, so only the URI
    # arithmetic is checked for it.
    for uri in ("s3://bucket/runs", "gs://bucket/runs"):
        assert storage.is_uri(uri) and storage.resolve(uri) == uri
        assert storage.join(uri, "smoke", "eval.json") == f"{uri}/smoke/eval.json"
        assert storage.uri_prefix(uri) == uri.split("//")[0] + "//"
    assert storage.resolve("runs") == os.path.abspath("runs") and not storage.is_uri("/tmp/x")
    with pytest.raises(storage.StorageError, match="cannot open nope://x"):
        storage.filesystem("nope://x")


def test_checkpoint_state_survives_a_round_trip_through_s3(s3: str, tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(4.0)}, "step": 3, "epoch": 1}
    save_checkpoint(state, str(tmp_path))
    target = f"{s3}/roundtrip/checkpoint_x/checkpoint.pt"
    storage.copy_file(str(tmp_path / "checkpoint.pt"), target)
    assert torch.equal(load_checkpoint(target)["model"]["w"], torch.arange(4.0))
