"""Trainers that shrink and grow (ray.min_workers) on a local multi-node cluster; run as a
subprocess (its Ray processes never mix with the test session's).

Head + an "augment" node + three "trainer" nodes; data and outputs on S3. An elastic run
(ray.min_workers=2, ray.num_workers=3, a global batch of 48 that 2 and 3 workers both share)
trains on three workers; at step ELASTIC_LOSS_AT a trainer node is lost without notice and the
run goes on with two (it does not wait for a replacement); at step ELASTIC_GROW_AT a trainer
node joins again and the run grows back to three. Prints one JSON line of what it saw; every
process it starts belongs to the Cluster object and is stopped in `finally`.

    python tests/elastic_scenario.py <work dir> <s3:// data> <s3:// storage>
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.drain_scenario import (  # noqa: E402
    finished,
    log,
    newest_step,
    start_in_thread,
    wait_for_step,
)

ELASTIC_LOSS_AT = 6
ELASTIC_GROW_AT = 16  # steps trained on two workers before a third node comes back
TRAINER_NODE: dict[str, Any] = {"num_cpus": 1, "resources": {"trainer": 1}}


def main(work: Path, data: str, store: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from empssl_ray.launch import compose
    from jobs.pretrain import main as pretrain_main

    record = work / "trained"
    os.environ.update(
        EMPSSL_FAULT_RECORD_TRAINED=str(record),
        EMPSSL_FAULT_DIR=str(work),
        EMPSSL_FAULT_SLOW_AUGMENT_S="0.3",  # steps slow enough for a resize to happen mid-run
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    seen: dict = {}
    try:
        cluster.add_node(num_cpus=1, resources={"augment": 1})
        trainers = [cluster.add_node(**TRAINER_NODE) for _ in range(3)]
        ray.init(address=cluster.address, logging_level=logging.ERROR)
        log("cluster up: three trainer nodes")
        cfg = compose(
            "pretrain",
            [
                "experiment=smoke",
                "data=parquet",
                f"data.root={data}",
                "data.train_limit=960",
                f"run.storage_path={store}/runs",
                "run.name=elastic",
                "run.progress=false",
                "run.evaluate=false",
                "run.log_every_steps=1",
                "run.checkpoint_every_steps=2",
                "optim.epochs=2",
                "optim.batch_size=48",  # 20 steps an epoch, 24 or 16 images a worker
                "ray.num_workers=3",
                "ray.min_workers=2",
                "ray.elastic_check_s=5",
                "ray.cpus_per_worker=0.5",
                "ray.read_cpus=0.25",
                "ray.aug_cpus_per_actor=0.5",
                "ray.aug_batch_size=16",
                "ray.max_failures=2",
                "++ray.trainer_resources={trainer: 1}",
                "++ray.aug_resources={augment: 1}",
                "eval.monitor_test=0",
            ],
        )
        thread, result = start_in_thread(pretrain_main, cfg)
        wait_for_step(record, ELASTIC_LOSS_AT)
        cluster.remove_node(trainers.pop(), allow_graceful=False)  # a spot loss, no notice
        seen["lost_at_step"] = newest_step(record)
        log(f"lost a trainer node at step {seen['lost_at_step']}: two left")
        wait_for_step(record, ELASTIC_GROW_AT)
        trainers.append(cluster.add_node(**TRAINER_NODE))
        seen["joined_at_step"] = newest_step(record)
        log(f"a trainer node joined at step {seen['joined_at_step']}")
        seen.update(finished(thread, result, f"{store}/runs/elastic", record, 400))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return seen


if __name__ == "__main__":
    out = main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
    print("SCENARIO " + json.dumps(out, default=str), flush=True)
