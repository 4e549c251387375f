"""`ray job submit` to a local multi-node cluster: placement by resources, nodes joining and
leaving mid-run. The cluster lives in a subprocess (tests/cluster_scenario.py) so its Ray
processes never mix with the test session's Ray, and all of them stop with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# In the default suite; `make test-cluster` runs it alone. About 3 minutes on 2 cores.
pytestmark = pytest.mark.cluster
LIMIT_S = 330  # the budget is 6 minutes for these tests on 2 cores

SCENARIO = Path(__file__).with_name("cluster_scenario.py")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> dict:  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("cluster")
    proc = subprocess.Popen([sys.executable, str(SCENARIO), str(work)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: its `finally` stops the cluster
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            out, _ = proc.communicate(timeout=30)
        pytest.fail(f"cluster scenario took over {LIMIT_S} s:\n{out[-4000:]}")
    lines = [x for x in out.splitlines() if x.startswith("SCENARIO ")]
    assert proc.returncode == 0 and lines, out[-4000:]
    return json.loads(lines[-1][len("SCENARIO "):])


def test_job_submitted_with_token_auth_succeeds(scenario: dict) -> None:
    assert scenario["status"] == "SUCCEEDED", scenario["logs_tail"]
    epochs = [r["epoch"] for r in scenario["epoch_records"]]
    assert epochs == list(range(1, scenario["expected_epochs"] + 1))


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
    # Every epoch trained on all 512 images (8 full batches of 64 split over the trainers: a
    # lost block leaves an epoch short), and every image was cut into patches at least once per
    # epoch, the node loss included (a batch retried after its actor died counts twice).
    records = scenario["epoch_records"]
    assert [r["steps"] for r in records] == [8] * epochs
    assert records[-1]["augmented_images"] >= epochs * 512
