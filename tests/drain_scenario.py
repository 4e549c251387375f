"""A spot preemption, with Ray's own drain API, on a local multi-node cluster; run as a
subprocess (its Ray processes never mix with the test session's).

Head + an "augment" node + a "trainer" node; data and outputs on S3. A one-epoch run trains; at
step 5 the trainer node is drained with reason preemption and a deadline (what a cloud's reclaim
notice turns into), then removed once the deadline passes, and a new trainer node joins. Ray
Train restarts the worker group itself; the run resumes inside its only epoch, from the newest
checkpoint (written just in time on the notice), and finishes. Prints one JSON line of what it
saw; every process it starts belongs to the Cluster object and is stopped in `finally`.

    python tests/drain_scenario.py <work dir> <s3:// data> <s3:// storage>
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRAIN_AT_STEP = 5
DEADLINE_S = 6.0


START = time.monotonic()


def log(text: str) -> None:
    print(f"[{time.monotonic() - START:6.1f} s] {text}", flush=True)


def newest_step(folder: Path) -> int:
    import numpy as np

    steps = [0]
    for f in folder.glob("trained-*.txt"):
        rows = np.loadtxt(f, dtype=np.int64, ndmin=2)
        steps += [int(rows[:, 0].max())] if len(rows) else []
    return max(steps)


def drain(node_id: str, seconds: float) -> bool:
    """Ray's drain API, reason preemption, deadline `seconds` from now (as a reclaim notice)."""
    import ray
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)  # type: ignore[attr-defined]
    accepted, _ = gcs.drain_node(
        node_id,
        autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),  # type: ignore[attr-defined]
        "spot reclaim (test)",
        int(time.time() * 1000 + seconds * 1000),
    )
    return bool(accepted)


def main(work: Path, data: str, store: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from empssl_ray.launch import compose
    from empssl_ray.runs.metrics import read_metrics
    from jobs.pretrain import main as pretrain_main

    record = work / "trained"
    os.environ.update(EMPSSL_FAULT_RECORD_TRAINED=str(record), EMPSSL_FAULT_DIR=str(work))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    seen: dict = {}
    try:
        cluster.add_node(num_cpus=1, resources={"augment": 1})
        first = cluster.add_node(num_cpus=1, resources={"trainer": 1})
        ray.init(address=cluster.address, logging_level=logging.ERROR)
        log("cluster up")
        cfg = compose(
            "pretrain",
            [
                "experiment=smoke",
                "data=parquet",
                f"data.root={data}",
                f"run.storage_path={store}/runs",
                "run.name=drained",
                "run.progress=false",
                "run.evaluate=false",
                "optim.epochs=1",
                "optim.batch_size=32",  # 16 steps in the only epoch
                "ray.num_workers=1",
                "ray.cpus_per_worker=0.5",
                "ray.read_cpus=0.25",
                "ray.aug_cpus_per_actor=0.5",
                "++ray.trainer_resources={trainer: 1}",
                "++ray.aug_resources={augment: 1}",
                "eval.monitor_test=0",
            ],
        )

        # The run trains in a thread; nodes are added and removed from this (main) thread,
        # where Ray's node processes can install their signal handlers.
        result: dict = {}

        def train() -> None:
            try:
                result["summary"] = pretrain_main(cfg)
            except BaseException as error:  # reported below, with the scenario's output
                result["error"] = repr(error)

        thread = threading.Thread(target=train, daemon=True)
        thread.start()
        deadline = time.monotonic() + 300
        while newest_step(record) < DRAIN_AT_STEP and time.monotonic() < deadline:
            time.sleep(0.2)
        seen["drained_at_step"] = newest_step(record)
        seen["drain_accepted"] = drain(first.node_id, DEADLINE_S)
        log(f"drained the trainer node at step {seen['drained_at_step']}")
        time.sleep(DEADLINE_S + 1)
        cluster.remove_node(first)  # the instance is gone
        log(f"removed it at step {newest_step(record)}")
        cluster.add_node(num_cpus=1, resources={"trainer": 1})  # the autoscaler's new one
        log("a new trainer node joined")
        thread.join(timeout=300)
        if "summary" not in result:
            raise RuntimeError(f"the run did not finish: {result.get('error', 'still running')}")
        summary = result["summary"]
        log(f"the run finished at step {summary['final'].get('step')}")
        seen["final"] = summary["final"]
        seen["metrics"] = read_metrics(f"{store}/runs/drained")
        seen["trained"] = {
            f.name: f.read_text().splitlines() for f in sorted(record.glob("trained-*.txt"))
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    return seen


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    result = main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
    print("SCENARIO " + json.dumps(result, default=str), flush=True)
