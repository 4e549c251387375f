"""A real sweep on the local Ray: 4 trials, 2 at a time, ASHA early stops, outputs, resume."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest

from empssl_ray.config import ConfigError
from empssl_ray.data import storage
from empssl_ray.job_config import SearchParam
from empssl_ray.launch import compose
from empssl_ray.on_ray.tune import validate_space
from tests.conftest import s3_keys


@pytest.mark.parametrize(
    "space,message",
    [
        ({"model.backbone": SearchParam("choice", ["resnet18-cifar"])}, "unknown key"),
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


def test_a_model_based_search_refuses_a_grid_and_names_its_choices() -> None:
    from empssl_ray.job_config import SweepConfig
    from empssl_ray.on_ray.tune import searcher

    grid = {"patches.num_patches": SearchParam("grid", [2, 8])}
    with pytest.raises(ConfigError, match="is a grid: use kind: choice"):
        searcher(SweepConfig(search="optuna", space=grid))
    with pytest.raises(ConfigError, match="choose random or optuna"):
        searcher(SweepConfig(search="bayes", space=grid))
    assert searcher(SweepConfig(search="random", space=grid)) is None


@pytest.fixture(scope="module")
def sweep(ray_session, s3, mlflow_server):
    """The tune-demo sweep with the sweep and every trial on the loopback S3 endpoint, tracked
    in the loopback MLflow server."""
    from jobs.tune import main

    overrides = [
        "experiment=tune-demo",
        f"sweep.storage_path={s3}/sweeps",
        "run.progress=false",
        "tracking.backend=mlflow",
        f"tracking.uri={mlflow_server}",
    ]
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
    assert all(" | knn_acc " in line and "% of budget | loss " in line for line in reports)
    assert "Trial status" not in out["console"] and "Current time" not in out["console"]
    for banner in ("Configuration for experiment", "View detailed results", "TensorBoard"):
        assert banner not in out["console"], banner


def test_sweep_tables_every_trial_and_asha_keeps_one_to_the_end(sweep) -> None:
    cfg, out, _ = sweep
    assert out["sweep_dir"].startswith("s3://")
    table = pd.read_csv(io.StringIO(storage.read_text(f"{out['sweep_dir']}/results.csv")))
    assert len(table) == 4 and table["error"].isna().all()
    assert table["trial"].str.len().max() <= 12  # Tune's short ids, not its folder names
    # Sorted by the objective, best first; compute recorded per trial.
    objective = table["knn_acc"]
    assert list(objective) == sorted(objective, reverse=True)
    # Which trials ASHA stops depends on the draws and on the order they reach its rung (the
    # first to arrive always goes on), so only what holds for any outcome is asserted: every
    # trial spent at least the grace fraction, and those that ran on spent the same budget,
    # 2 patches as 8, within one batch's worth.
    budget = cfg.sweep.budget * 1e6
    assert (table["budget_spent"] >= cfg.sweep.grace_fraction - 1e-9).all()
    finished = table[table["budget_spent"] > 0.99]
    assert len(finished) >= 1
    one_batch = cfg.optim.batch_size * finished["patches.num_patches"]
    assert ((finished["patch_forwards"] - budget).abs() <= one_batch).all()
    assert len(storage.read_bytes(f"{out['sweep_dir']}/sweep.png")) > 0
    keys = s3_keys(out["sweep_dir"])
    assert sum(k.endswith("/metrics.jsonl") for k in keys) == 4  # every trial's run on S3


# tune-demo's budget, 4,096 patch-forwards, in steps of 64 images: 8 at 8 patches, 32 at 2.
BUDGET_STEPS = {8: 8, 2: 32}


def test_trials_of_an_equal_budget_end_their_schedules_at_their_own_last_step(sweep) -> None:
    from empssl_ray.runs.checkpoints import latest_checkpoint, load_checkpoint

    cfg, out, _ = sweep
    table = pd.read_csv(io.StringIO(storage.read_text(f"{out['sweep_dir']}/results.csv")))
    patches = set()
    for row in table[table["budget_spent"] > 0.99].itertuples():
        state = load_checkpoint(latest_checkpoint(f"{out['sweep_dir']}/trials/trial-{row.trial}"))
        assert state["step"] == BUDGET_STEPS[state["config"]["patches"]["num_patches"]]
        assert max(state["scheduler"]["_last_lr"]) == 0.0  # the cosine reached 0 there
        patches.add(state["config"]["patches"]["num_patches"])
    assert patches  # (which patch counts ran to the end depends on ASHA's draws)


def test_each_trial_is_a_tracked_run_of_the_sweeps_experiment(sweep, mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    _, out, _ = sweep
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tune-demo")  # the sweep's name
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name LIKE 'trial-%'")
    assert len(runs) == 4
    table = pd.read_csv(io.StringIO(storage.read_text(f"{out['sweep_dir']}/results.csv")))
    assert sorted(r.data.params["patches.num_patches"] for r in runs) == sorted(
        str(n) for n in table["patches.num_patches"]
    )
    for run in runs:  # every epoch the trial ran, once
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/knn_acc")]
        assert epochs == sorted(set(epochs)) and len(epochs) >= 1


def test_best_yaml_starts_a_pretrain_run(sweep, tmp_path) -> None:
    from empssl_ray.config import PretrainConfig
    from empssl_ray.runs.metrics import read_metrics
    from jobs.pretrain import main

    sweep_cfg, out, _ = sweep
    # Hydra reads config folders from local disk: fetch it first, as its header says.
    best = storage.read_text(out["best_yaml"])
    assert "after copying s3://" in best
    (tmp_path / "best.yaml").write_text(best)
    as_found = compose("best", [], config_dir=str(tmp_path), schema=PretrainConfig)
    # The winner's length is the budget it won at: its own steps.
    assert as_found.optim.max_steps == BUDGET_STEPS[as_found.patches.num_patches]
    cfg = compose(
        "best",
        [
            f"run.storage_path={tmp_path}",
            "optim.max_steps=0",  # one epoch, to be quick
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


def test_trials_of_equal_seconds_train_the_steps_their_own_step_time_allows(
    ray_session, tmp_path
) -> None:
    """Two widths, 4 s of training each: the narrow model's step is cheaper, so it trains more
    steps; each trial's steps are its budget over its measured step time, its schedule ends
    there, and the table says each spent its whole budget."""
    from empssl_ray.method.step_budget import PLAN_FILE
    from empssl_ray.runs.checkpoints import latest_checkpoint, load_checkpoint
    from jobs.tune import main

    cfg = compose(
        "tune",
        [
            "experiment=smoke",  # tune-demo's trial resources, another space and budget
            "ray.num_workers=1",
            "ray.cpus_per_worker=0.5",
            "ray.patches_on_trainer=true",
            "ray.max_failures=0",
            "data.train_limit=4096",  # epochs of 64 steps: a few monitor reports, not dozens
            f"sweep.storage_path={tmp_path}",
            "sweep.name=seconds",
            "sweep.budget_s=4",
            "sweep.scheduler=fifo",
            "sweep.num_samples=1",
            "sweep.max_concurrent_trials=1",
            "run.progress=false",
            "+sweep.space={model.width: {kind: grid, values: [4, 16]}}",
        ],
    )
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        out = main(cfg)
    rows = {row["model.width"]: row for row in out["rows"]}
    assert sorted(rows) == [4, 16] and all(r["error"] is None for r in rows.values())
    steps = {}
    for width, row in rows.items():
        run = tmp_path / "seconds" / "trials" / f"trial-{row['trial']}"
        plan = json.loads((run / PLAN_FILE).read_text())
        assert plan["seconds"] == 4 and plan["steps"] == max(1, int(4 / plan["step_s"]))
        state = load_checkpoint(latest_checkpoint(str(run)))
        assert state["step"] == plan["steps"]  # it trained its plan
        assert max(state["scheduler"]["_last_lr"]) == 0.0  # and its cosine ended there
        assert row["budget_spent"] == pytest.approx(1.0)
        steps[width] = plan["steps"]
    assert steps[4] > steps[16], steps  # equal seconds buy the cheaper model more steps
    assert "time_s" in console.getvalue()  # the final table shows each trial's time


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


@pytest.mark.drills  # a fault drill (2 min 20 s): with the others, after the suite
@pytest.mark.timeout(600)
def test_a_model_based_search_resumes_after_its_driver_is_killed(ray_session, tmp_path) -> None:
    """Optuna's TPE proposes 3 trials at equal budget, a trial at a time; the sweep's driver (a
    `jobs/tune.py` process joined to the session's Ray) is killed while the third trains.
    Rerunning it resumes the sweep and its searcher: the two finished trials are not run again,
    and the sweep ends with 3 trials."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import ray

    from jobs.tune import main

    overrides = [
        "experiment=tune-demo",
        f"sweep.storage_path={tmp_path}",
        "sweep.name=tpe",
        "sweep.search=optuna",
        "sweep.space={patches.num_patches: {kind: choice, values: [2, 8]}}",
        "sweep.num_samples=3",
        "sweep.scheduler=fifo",
        "sweep.budget=0.002048",  # 16 steps at 2 patches (2 epochs), 4 at 8
        "run.progress=false",
    ]
    address = ray.get_runtime_context().gcs_address
    repo = Path(__file__).resolve().parents[1]
    driver = subprocess.Popen(
        [sys.executable, str(repo / "jobs" / "tune.py"), *overrides, f"ray.address={address}"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: list[str] = []
    done: set[str] = set()
    try:
        assert driver.stdout is not None
        deadline = time.time() + 420
        for line in driver.stdout:
            seen.append(line)
            if line.startswith("trial ") and "100% of budget" in line:
                done.add(line.split()[1])
            if len(done) == 2 or time.time() > deadline:
                break
        assert len(done) == 2, "".join(seen[-30:])
        time.sleep(8)  # the third trial starting (a TorchTrainer takes longer to start)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver dies mid-sweep
        driver.wait(timeout=60)

    trials = tmp_path / "tpe" / "trials"

    def metrics_files() -> dict[str, int]:
        return {
            d.name: (d / "metrics.jsonl").stat().st_mtime_ns
            for d in trials.iterdir()
            if (d / "metrics.jsonl").exists()
        }

    before = metrics_files()
    out = main(compose("tune", overrides))
    assert len(out["rows"]) == 3 and all(r["error"] is None for r in out["rows"])
    after = metrics_files()
    for trial in done:
        assert after[f"trial-{trial}"] == before[f"trial-{trial}"], trial  # not trained again
    assert {r["patches.num_patches"] for r in out["rows"]} <= {2, 8}
