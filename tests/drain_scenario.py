"""A spot preemption, with Ray's own drain API, on a local multi-node cluster; run as a
subprocess (its Ray processes never mix with the test session's).

Head + an "augment" node + a "trainer" node; data and outputs on S3. A one-epoch run trains; at
step 5 the trainer node is drained with reason preemption and a deadline (what a cloud's reclaim
notice turns into), then removed once the deadline passes, and a new trainer node joins. Ray
Train restarts the worker group itself; the run resumes inside its only epoch, from the newest
checkpoint (written just in time on the notice), and finishes. Prints one JSON line of what it
saw; every process it starts belongs to the Cluster object and is stopped in `finally`.

With `losses` as the mode, the trainer node is instead lost three times without notice (its
processes killed, as a launcher cluster loses a spot instance), at steps 4, 8 and 12 of a run
that checkpoints every 2 steps and allows `ray.max_failures=2`: each loss made progress since
the last, so none counts, and the run finishes.

    python tests/drain_scenario.py <work dir> <s3:// data> <s3:// storage> [drain|losses]
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DRAIN_AT_STEP = 5
DEADLINE_S = 6.0
LOSSES_AT_STEPS = (4, 8, 12)


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


def start_in_thread(main: Callable[[Any], Any], cfg: Any) -> tuple[threading.Thread, dict]:
    """Runs `main(cfg)` in a daemon thread; its return value lands in the dict as "out", or its
    error as "error". Nodes are added and removed from the main thread, where Ray's node
    processes can install their signal handlers."""
    result: dict = {}

    def run() -> None:
        try:
            result["out"] = main(cfg)
        except BaseException as error:  # reported by the caller, with the scenario's output
            result["error"] = repr(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def finished(
    thread: threading.Thread, result: dict, run_dir: str, record: Path, timeout: float
) -> dict:
    """What a scenario's run left once its thread ends: its final metrics, its metrics.jsonl,
    and the rows every rank recorded; a RuntimeError when it did not finish in `timeout`."""
    from empssl_ray.runs.metrics import read_metrics

    thread.join(timeout=timeout)
    if "out" not in result:
        raise RuntimeError(f"the run did not finish: {result.get('error', 'still running')}")
    final = result["out"]["final"]
    log(f"the run finished at step {final.get('step')}")
    trained = {f.name: f.read_text().splitlines() for f in sorted(record.glob("trained-*.txt"))}
    return {"final": final, "metrics": read_metrics(run_dir), "trained": trained}


def wait_for_step(record: Path, step: int) -> None:
    deadline = time.monotonic() + 300
    while newest_step(record) < step and time.monotonic() < deadline:
        time.sleep(0.2)


def drain_and_replace(cluster: Any, node: Any, record: Path, seen: dict) -> Any:
    """Drains `node` with reason preemption at step DRAIN_AT_STEP, removes it once the notice's
    deadline passes, and adds its replacement (the autoscaler's new node), returned."""
    wait_for_step(record, DRAIN_AT_STEP)
    seen["drained_at_step"] = newest_step(record)
    seen["drain_accepted"] = drain(node.node_id, DEADLINE_S)
    log(f"drained the trainer node at step {seen['drained_at_step']}")
    time.sleep(DEADLINE_S + 1)
    cluster.remove_node(node)  # the instance is gone
    log(f"removed it at step {newest_step(record)}")
    replacement = cluster.add_node(num_cpus=1, resources={"trainer": 1})
    log("a new trainer node joined")
    return replacement


def main(work: Path, data: str, store: str, mode: str = "drain") -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from empssl_ray.launch import compose
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
                f"run.name={mode}",
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
                *(
                    ["run.checkpoint_every_steps=2", "ray.max_failures=2"]
                    if mode == "losses"
                    else []
                ),
            ],
        )

        thread, result = start_in_thread(pretrain_main, cfg)
        if mode == "drain":
            first = drain_and_replace(cluster, first, record, seen)
        else:
            for n, step in enumerate(LOSSES_AT_STEPS):
                wait_for_step(record, step)
                cluster.remove_node(first, allow_graceful=False)  # no notice, no drain
                seen.setdefault("lost_at_steps", []).append(newest_step(record))
                log(f"lost the trainer node without notice at step {newest_step(record)}")
                first = cluster.add_node(num_cpus=1, resources={"trainer": 1})
                log(f"trainer node {n + 2} joined")
        seen.update(finished(thread, result, f"{store}/runs/{mode}", record, 300))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return seen


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    mode = sys.argv[4] if len(sys.argv) > 4 else "drain"
    result = main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], mode)
    print("SCENARIO " + json.dumps(result, default=str), flush=True)
