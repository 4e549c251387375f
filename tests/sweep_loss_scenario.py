"""A sweep that loses a node, on a local multi-node cluster; run as a subprocess (its Ray
processes never mix with the test session's).

Head (the sweep's driver and the trials' drivers: spot losses never reach it) + a "trainer"
node; data and outputs on S3. A two-trial sweep runs one trial at a time; in the first trial's
second epoch its trainer node is lost without notice (its processes killed) and a new one joins.
The trial resumes from its checkpoint and ends, the second trial runs, the sweep completes and
writes best.yaml. Prints one JSON line of what it saw; every process it starts belongs to the
Cluster object and is stopped in `finally`.

    python tests/sweep_loss_scenario.py <work dir> <s3:// data> <s3:// storage>
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 8  # 512 images, batches of 64
LOSE_AT_STEP = STEPS_PER_EPOCH + 3  # inside the first trial's second epoch

START = time.monotonic()


def log(text: str) -> None:
    print(f"[{time.monotonic() - START:6.1f} s] {text}", flush=True)


def main(work: Path, data: str, store: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from empssl_ray.data import storage
    from empssl_ray.launch import compose
    from empssl_ray.runs.metrics import read_metrics
    from jobs.tune import main as tune_main
    from tests.drain_scenario import newest_step, start_in_thread, wait_for_step

    record = work / "trained"
    os.environ.update(EMPSSL_FAULT_RECORD_TRAINED=str(record), EMPSSL_FAULT_DIR=str(work))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    seen: dict = {}
    try:
        node = cluster.add_node(num_cpus=1, resources={"trainer": 1})
        ray.init(address=cluster.address, logging_level=logging.ERROR)
        log("cluster up")
        cfg = compose(
            "tune",
            [
                "experiment=tune-demo",
                "data=parquet",
                f"data.root={data}",
                f"sweep.storage_path={store}/sweeps",
                "sweep.name=lossy",
                "sweep.scheduler=fifo",
                "sweep.budget=0",  # optim.epochs (2) per trial, not the preset's equal budget
                "sweep.num_samples=1",  # the grid's two patch counts: two trials
                "sweep.max_concurrent_trials=1",
                "sweep.trial_max_failures=2",
                "run.progress=false",
                "++ray.trainer_resources={trainer: 1}",
            ],
        )
        thread, result = start_in_thread(tune_main, cfg)
        wait_for_step(record, LOSE_AT_STEP)
        seen["lost_at_step"] = newest_step(record)
        cluster.remove_node(node, allow_graceful=False)  # no notice, no drain
        log(f"lost the trainer node without notice at step {seen['lost_at_step']}")
        cluster.add_node(num_cpus=1, resources={"trainer": 1})
        log("a new trainer node joined")
        thread.join(timeout=420)
        if "out" not in result:
            raise RuntimeError(f"the sweep did not finish: {result.get('error', 'still running')}")
        out = result["out"]
        log("the sweep finished")
        seen["best_yaml"] = out.get("best_yaml")
        seen["results_csv"] = storage.read_text(f"{out['sweep_dir']}/results.csv")
        trials = storage.join(out["sweep_dir"], "trials")
        seen["trial_epochs"] = {
            e.name: [r["epoch"] for r in read_metrics(e.location) if r["kind"] == "epoch"]
            for e in storage.list_dir(trials)
            if e.is_dir
        }
        seen["attempts"] = len(list(record.glob("trained-*.txt")))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return seen


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    result = main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
    print("SCENARIO " + json.dumps(result, default=str), flush=True)
