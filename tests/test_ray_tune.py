"""A real sweep on the local Ray: 4 trials, 2 at a time, ASHA early stops, outputs, resume."""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import pytest

from empssl_ray.config import ConfigError, SearchParam
from empssl_ray.data import storage
from empssl_ray.launch import compose
from empssl_ray.on_ray.tune import validate_space
from tests.conftest import s3_keys


@pytest.mark.parametrize(
    "space,message",
    [
        ({"model.width": SearchParam("choice", [8])}, "unknown key"),
        ({"optim.lr": SearchParam("choice", [])}, "non-empty"),
        ({"loss.eps": SearchParam("uniform", low=-0.1, high=0.2)}, "out of range"),
        ({"patches.num_patches": SearchParam("grid", [1, 4])}, "must be >= 2"),
        ({"optim.lr": SearchParam("loguniform", low=0.0, high=1.0)}, "low > 0"),
        ({"optim.lr": SearchParam("normal", low=0.1, high=1.0)}, "unknown kind"),
        ({}, "empty"),
    ],
)
def test_bad_search_spaces_fail_before_any_trial(space, message) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_space(space)


@pytest.fixture(scope="module")
def sweep(ray_session, s3):
    """The tune-demo sweep with the sweep and every trial on the loopback S3 endpoint."""
    from jobs.tune import main

    overrides = ["experiment=tune-demo", f"sweep.storage_path={s3}/sweeps", "run.progress=false"]
    cfg = compose("tune", overrides)
    console = io.StringIO()  # what the driver prints: TrialConsole's lines, the final table
    with contextlib.redirect_stdout(console):
        out = main(cfg)
    return cfg, {**out, "console": console.getvalue()}, overrides


def test_sweep_console_is_a_line_per_trial_epoch(sweep) -> None:
    cfg, out, _ = sweep
    lines = out["console"].splitlines()
    reports = [line for line in lines if line.startswith("trial ") and " | " in line]
    assert len({line.split()[1] for line in reports}) == 4, out["console"]
    assert all(f"/{cfg.optim.epochs} | knn_acc_per_mpatch " in line for line in reports)
    assert "Trial status" not in out["console"] and "Current time" not in out["console"]


def test_sweep_tables_every_trial_and_asha_keeps_one_to_the_end(sweep) -> None:
    cfg, out, _ = sweep
    assert out["sweep_dir"].startswith("s3://")
    table = pd.read_csv(io.StringIO(storage.read_text(f"{out['sweep_dir']}/results.csv")))
    assert len(table) == 4 and table["error"].isna().all()
    # Sorted by the objective, best first; compute recorded per trial.
    objective = table["knn_acc_per_mpatch"]
    assert list(objective) == sorted(objective, reverse=True)
    assert (table["patch_forwards"] > 0).all()
    # Which trials ASHA stops depends on the draws and on the order they reach its rung (the
    # first to arrive always goes on), so only what holds for any outcome is asserted: each
    # trial ran from the grace period up to the last epoch, one ran them all, and compute
    # follows the epochs run (the same steps per epoch for every trial).
    epochs = table["epochs"]
    assert epochs.between(cfg.sweep.grace_period, cfg.optim.epochs).all()
    assert (epochs == cfg.optim.epochs).any()
    per_epoch_and_patch = table["patch_forwards"] / (epochs * table["patches.num_patches"])
    assert per_epoch_and_patch.nunique() == 1
    assert len(storage.read_bytes(f"{out['sweep_dir']}/sweep.png")) > 0
    keys = s3_keys(out["sweep_dir"])
    assert sum(k.endswith("/metrics.jsonl") for k in keys) == 4  # every trial's run on S3


def test_best_yaml_starts_a_pretrain_run(sweep, tmp_path) -> None:
    from empssl_ray.config import PretrainConfig
    from empssl_ray.runs.metrics import read_metrics
    from jobs.pretrain import main

    _, out, _ = sweep
    # Hydra reads config folders from local disk: fetch it first, as its header says.
    best = storage.read_text(out["best_yaml"])
    assert "after copying s3://" in best
    (tmp_path / "best.yaml").write_text(best)
    cfg = compose(
        "best",
        [
            f"run.storage_path={tmp_path}",
            "optim.epochs=1",
            "run.evaluate=false",
            "ray.num_workers=0",
        ],
        config_dir=str(tmp_path),
        schema=PretrainConfig,
    )
    assert cfg.patches.num_patches in (2, 8)
    main(cfg)
    assert [
        r["epoch"] for r in read_metrics(str(tmp_path / cfg.run.name)) if r["kind"] == "epoch"
    ] == [1]


def test_rerunning_the_sweep_resumes_without_rerunning_trials(sweep) -> None:
    from jobs.tune import main

    _, out, overrides = sweep

    def metrics_files() -> dict[str, int | None]:
        trials = storage.list_dir(f"{out['sweep_dir']}/trials")
        return {e.name: storage.modified_ns(f"{e.location}/metrics.jsonl") for e in trials}

    before = metrics_files()
    assert len(before) == 4
    again = main(compose("tune", overrides))
    assert len(again["rows"]) == 4
    assert metrics_files() == before  # no trial trained again
