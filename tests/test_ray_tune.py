"""A real sweep on the local Ray: 4 trials, 2 at a time, ASHA early stops, outputs, resume."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from empssl_ray.config import ConfigError, SearchParam
from empssl_ray.ray_tune import validate_space
from tests.conftest import compose


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
def test_bad_search_spaces_fail_before_any_trial(space, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        validate_space(space)


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):  # type: ignore[no-untyped-def]
    from jobs.tune import main

    storage = tmp_path_factory.mktemp("sweeps")
    overrides = ["experiment=tune-demo", f"sweep.storage_path={storage}", "run.progress=false"]
    cfg = compose("tune", overrides)
    return cfg, main(cfg), overrides


def test_sweep_runs_trials_in_parallel_and_asha_stops_some(sweep) -> None:  # type: ignore[no-untyped-def]
    cfg, out, _ = sweep
    table = pd.read_csv(os.path.join(out["sweep_dir"], "results.csv"))
    assert len(table) == 4 and table["error"].isna().all()
    # Sorted by the objective, best first; compute recorded per trial.
    objective = table["knn_acc_per_mpatch"]
    assert list(objective) == sorted(objective, reverse=True)
    assert (table["patch_forwards"] > 0).all()
    # The 8-patch trials spend 4x the compute of the 2-patch ones for similar accuracy: ASHA
    # stops at least one of them before the last epoch.
    assert (table["epochs"] < cfg.optim.epochs).any()
    assert table.loc[0, "patches.num_patches"] == 2
    assert os.path.getsize(os.path.join(out["sweep_dir"], "sweep.png")) > 0


def test_best_yaml_starts_a_pretrain_run(sweep, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from empssl_ray.config import PretrainConfig, register_configs, to_dataclass
    from empssl_ray.tracking import read_metrics
    from jobs.pretrain import main

    _, out, _ = sweep
    register_configs()
    with initialize_config_dir(config_dir=os.path.dirname(out["best_yaml"]), version_base=None):
        raw = hydra_compose(
            config_name="best",
            # Ray Train's local mode: the whole pretrain path without a worker group to start.
            overrides=[f"run.storage_path={tmp_path}", "optim.epochs=1", "run.evaluate=false",
                       "ray.num_workers=0"],
        )
    cfg = to_dataclass(raw, PretrainConfig)
    assert cfg.patches.num_patches == 2
    main(cfg)
    assert [
        r["epoch"] for r in read_metrics(str(tmp_path / cfg.run.name)) if r["kind"] == "epoch"
    ] == [1]


def test_rerunning_the_sweep_resumes_without_rerunning_trials(sweep) -> None:  # type: ignore[no-untyped-def]
    from jobs.tune import main

    _, out, overrides = sweep
    trials_dir = os.path.join(out["sweep_dir"], "trials")
    before = {
        d: os.path.getmtime(os.path.join(trials_dir, d, "metrics.jsonl"))
        for d in os.listdir(trials_dir)
    }
    again = main(compose("tune", overrides))
    assert len(again["rows"]) == 4
    after = {
        d: os.path.getmtime(os.path.join(trials_dir, d, "metrics.jsonl"))
        for d in os.listdir(trials_dir)
    }
    assert after == before  # no trial trained again
