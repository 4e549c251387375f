"""Ray's own autoscaler (fake multi-node provider: the real autoscaler, nodes as local
processes) with the node types of cluster/aws.yaml, under a run submitted with `ray job submit`
(tests/autoscaler_scenario.py, in a subprocess; about 6 min). `-m cluster` (make test-cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_scenario

LIMIT_S = 900
# The scenario's own limit governs (its first test waits for the whole scenario).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(LIMIT_S + 180)]
SCENARIO = Path(__file__).with_name("autoscaler_scenario.py")
# An actor waits for its node to be launched and to start (a few seconds on a cloud, tens of
# seconds for a fake node on 2 busy cores), never for a node no type can give.
LONGEST_PENDING_S = 90


@pytest.fixture(scope="module")
def scenario(s3, tmp_path_factory) -> dict:
    from empssl_ray.config import DataConfig
    from empssl_ray.data.prepare import prepare

    work = tmp_path_factory.mktemp("autoscaler")
    data = f"{s3}/autoscaler/fashion-mnist"
    prepare(DataConfig(name="fashion-mnist", train_limit=512, test_limit=256), data, 32, False)
    result = run_scenario(SCENARIO, [str(work), data, f"{s3}/autoscaler"], LIMIT_S)
    print_timeline(result)
    return result


def print_timeline(result: dict) -> None:
    """One line per change of the cluster's shape, then the actors' states and the scenario's
    own lines (pytest -s shows them)."""
    keys = ("trainer_nodes", "augment_nodes", "cutters", "cutter_nodes", "pending", "job")
    last = None
    for row in result["samples"]:
        shape = tuple(row[k] for k in keys)
        if shape != last:
            print(f"{row['t']:7.1f} s  " + "  ".join(f"{k}={row[k]}" for k in keys))
            last = shape
    print("\n".join(result["actor_states"] + result["log"]))
    print(f"unplaced by the autoscaler (at max_workers or never): {result['autoscaler_unplaced']}")


def holds(node: dict, shape: dict) -> bool:
    return all(node.get(k, 0) >= v for k, v in shape.items() if v > 0)


def test_the_run_finishes_under_the_autoscaler(scenario: dict) -> None:
    assert scenario["job_status"] == "SUCCEEDED", scenario["job_logs"][-3000:]
    # The pool was capped from the autoscaling config the head runs with.
    assert scenario["pool_capped"], scenario["job_logs"][:3000]


def test_no_request_asks_for_what_no_node_type_holds(scenario: dict) -> None:
    # Ray's autoscaler (v2) reports as unplaced, and Ray warns the driver of "infeasible" tasks
    # for, what no node type holds but also what waits while the cluster is at its
    # `max_workers`. So every shape it named, and every actor's ask, must fit some node type.
    types = [t["resources"] for t in scenario["node_types"].values() if t["max_workers"] > 0]
    named = scenario["autoscaler_unplaced"] + scenario["infeasible"].get("tasks", [])
    asks = named + scenario["pending_asks"]
    unholdable = [s for s in asks if not any(holds(t, s) for t in types)]
    assert unholdable == [], (types, named)
    # Ray's warning comes from the autoscaler's report, whose shapes were checked above.
    assert not scenario["infeasible_in_logs"] or scenario["autoscaler_unplaced"]


def test_nodes_are_launched_on_demand_and_the_pool_grows_onto_them(scenario: dict) -> None:
    samples = scenario["samples"]
    assert samples[0]["trainer_nodes"] + samples[0]["augment_nodes"] == 0  # all from zero
    assert max(s["trainer_nodes"] for s in samples) == 1
    assert max(s["augment_nodes"] for s in samples) >= 2
    assert max(s["cutters"] for s in samples) >= 2
    assert max(s["cutter_nodes"] for s in samples) >= 2
    assert scenario["longest_pending_s"] <= LONGEST_PENDING_S


def test_idle_augment_nodes_go_during_the_run_and_all_nodes_after_it(scenario: dict) -> None:
    samples, dropped = scenario["samples"], scenario["demand_dropped_at"]
    before = [s for s in samples if s["t"] <= dropped]
    after = [s for s in samples if s["t"] > dropped and s["job"] == "RUNNING"]
    # The pool shrinks with the demand and an augment node left idle is removed while the
    # run still trains, not only at its end.
    assert min(s["cutters"] for s in after) < max(s["cutters"] for s in before)
    assert min(s["augment_nodes"] for s in after) < max(s["augment_nodes"] for s in before)
    last = samples[-1]
    assert last["augment_nodes"] == last["trainer_nodes"] == 0, last
