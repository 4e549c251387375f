"""`ray job submit` to a local multi-node cluster with data and outputs on a loopback S3:
placement by resources, nodes joining and leaving mid-run, the preflight refusal, a sweep with an
actor pool per trial. The cluster lives in a subprocess (tests/cluster_scenario.py) so its Ray
processes never mix with the test session's Ray, and all of them stop with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_scenario

# `make test-cluster` runs it. The scenario's own limit (run_scenario stops its cluster there)
# comes before pytest's, which would end the test with the cluster still running.
LIMIT_S = 900
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(LIMIT_S + 180)]

SCENARIO = Path(__file__).with_name("cluster_scenario.py")


@pytest.fixture(scope="module")
def scenario(s3, tmp_path_factory) -> dict:
    from empssl_ray.config import DataConfig
    from empssl_ray.data.prepare import prepare

    work = tmp_path_factory.mktemp("cluster")
    data = f"{s3}/cluster/fashion-mnist"
    prepare(
        DataConfig(name="fashion-mnist", train_limit=512, test_limit=256),
        data,
        rows_per_file=32,
        progress=False,
    )  # 16 files: 16 blocks for the pool to share
    seen = run_scenario(SCENARIO, [str(work), data, f"{s3}/cluster"], LIMIT_S)
    seen["work"] = work
    return seen


def test_local_storage_on_a_multinode_cluster_is_refused_in_seconds(scenario: dict) -> None:
    assert scenario["refused_status"] == "FAILED"
    assert scenario["refused_after_s"] < 90
    assert "error: ConfigError: run.storage_path=" in scenario["refused_logs"]
    assert "is on this machine's disk" in scenario["refused_logs"]
    assert "Traceback" not in scenario["refused_logs"]
    assert scenario["trainers_before_main_job"] == 0  # no training worker ever started
    assert not (scenario["work"] / "local-runs").exists()


def test_job_submitted_with_token_auth_succeeds_with_everything_on_s3(scenario: dict) -> None:
    assert scenario["status"] == "SUCCEEDED", scenario["logs_tail"]
    epochs = [r["epoch"] for r in scenario["epoch_records"]]
    assert epochs == list(range(1, scenario["expected_epochs"] + 1))
    assert {"metrics.jsonl", "curves.png", "summary.json"} <= set(scenario["run_files"])
    assert any(name.startswith("checkpoint_") for name in scenario["run_files"])
    assert not (scenario["work"] / "runs").exists()  # nothing on the local disk


def test_actors_and_trainers_land_on_their_node_types(scenario: dict) -> None:
    assert scenario["trainer_nodes"] == ["trainer"]
    assert set(scenario["augment_nodes"]) <= {"augment-a", "augment-b"}


def test_pool_grows_onto_a_joining_node_and_survives_one_leaving(scenario: dict) -> None:
    # Node B joined mid-run and the pool ran actors on A and B at once; then node A left
    # mid-run (its actor restarted on B), and the job went on.
    epochs = scenario["expected_epochs"]
    assert scenario["augment_nodes_at_peak"] == ["augment-a", "augment-b"]
    assert scenario["pool_on_both_during_epoch"] <= epochs
    assert scenario["removed_during_epoch"] <= epochs  # a node left while the job still ran
    # The job log says so in a line of ours each, and holds none of Ray's report lines.
    assert any(line.startswith("a node joined: ") for line in scenario["node_lines"])
    assert any(line.startswith("a node left: ") for line in scenario["node_lines"])
    assert scenario["ray_lines"] == []
    # Every epoch trained on all 512 images (8 full batches of 64 split over the trainers: a
    # lost block leaves an epoch short), and every image was cut into patches at least once per
    # epoch, the node loss included (a batch retried after its actor died counts twice).
    records = scenario["epoch_records"]
    assert [r["steps"] for r in records] == [8] * epochs
    assert records[-1]["augmented_images"] >= epochs * 512


def test_shared_filesystem_flag_lets_local_paths_run(scenario: dict) -> None:
    assert scenario["shared_status"] == "SUCCEEDED"
    assert scenario["shared_eval_written"]


def test_sweep_submitted_as_a_job_runs_two_trials_with_their_own_pools(scenario: dict) -> None:
    import io

    import pandas as pd

    assert scenario["sweep_status"] == "SUCCEEDED", scenario["sweep_logs_tail"]
    table = pd.read_csv(io.StringIO(scenario["sweep_results"]))
    assert len(table) == 2 and table["error"].isna().all() and (table["epochs"] >= 1).all()
    # Two trials at once, each with its trainer and its own augmentation actor.
    assert scenario["sweep_peak"]["trainers"] >= 2 and scenario["sweep_peak"]["cutters"] >= 2
    assert set(scenario["sweep_augment_nodes"]) <= {"augment-a", "augment-b"}
    assert len(scenario["sweep_trial_runs"]) == 2  # each trial's run on S3


def test_best_trial_yaml_starts_a_run(scenario: dict) -> None:
    assert scenario["best_epochs"] == [1]
