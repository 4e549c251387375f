"""The driver's restarts when storage stays away past run.storage_retry_s (no Ray cluster):
setting up a fit in an outage is a restart with a pause and a line, and past ray.max_failures
restarts without progress a one-line StorageError, never a traceback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from empssl_ray.config import PretrainConfig
from empssl_ray.data.storage import StorageUnavailableError
from empssl_ray.errors import StorageError
from empssl_ray.on_ray import train

DOWN = "listing runs/smoke: object storage failed for 5 s (run.storage_retry_s) (refused)"


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """pretrain() with a fit whose set-up fails on storage `failures[0]` times, then returns."""
    pauses: list[float] = []
    failures = [0]

    def build_trainer(*_a, **_k):
        if failures[0] > 0:
            failures[0] -= 1
            raise StorageUnavailableError(DOWN)
        return "trainer"

    monkeypatch.setattr(train, "build_trainer", build_trainer)
    monkeypatch.setattr(train, "fit_and_release", lambda trainer: f"fitted {trainer}")
    monkeypatch.setattr(train.time, "sleep", pauses.append)
    cfg = PretrainConfig()
    cfg.run.storage_path, cfg.run.name, cfg.run.storage_retry_s = str(tmp_path), "smoke", 5
    cfg.ray.max_failures = 3
    info = SimpleNamespace(channels=1, image_size=28)
    splits = SimpleNamespace(train=SimpleNamespace(info=info))
    return cfg, splits, failures, pauses


def test_an_outage_while_a_fit_is_set_up_is_a_restart_with_a_pause(driver, capsys) -> None:
    cfg, splits, failures, pauses = driver
    failures[0] = 2
    assert train.pretrain(cfg, splits=splits) == "fitted trainer"
    lines = [line for line in capsys.readouterr().out.splitlines() if "restarting" in line]
    assert len(lines) == 2 and pauses == [2.0, 4.0]  # backing off while the store is away
    assert lines[0].startswith("empssl-ray: the run's storage failed (listing runs/smoke")
    assert (
        "restarting in 2 s from the newest checkpoint (restart 1 of ray.max_failures=3)"
        in (lines[0])
    )


def test_an_outage_that_outlasts_every_restart_ends_in_one_line(driver) -> None:
    cfg, splits, failures, _ = driver
    failures[0] = 10
    with pytest.raises(StorageError, match="gave up after 3 restarts without progress: rerun"):
        train.pretrain(cfg, splits=splits)
