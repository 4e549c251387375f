"""A multi-node Ray cluster on loopback, driven through the jobs API; run as a subprocess.

Head (no CPUs, jobs API, token auth) + an "augment" node + a "trainer" node; data and outputs
on S3 (the AWS_* variables of this process point every node at the same endpoint), so no node
reads another's disk. Phases, each a `ray job submit`:
1. a run with a local storage path: refused in seconds, before any training worker starts;
2. the run on S3: a second augment node joins once training has started, the actor pool grows
   onto it, the first node leaves, and the job still finishes every epoch;
3. local paths with run.shared_filesystem=true: they run;
4. a sweep (jobs/tune.py), two trials at once, each with its own augmentation actor pool;
then the best trial's YAML starts a run. It prints one JSON line of what it saw. Every process
it starts belongs to the Cluster object and is stopped in `finally` (also on Ctrl-C / SIGINT).
The token is a file in the work dir, so ~/.ray is left alone.

    python tests/cluster_scenario.py <work dir> <s3:// data> <s3:// storage>
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DASHBOARD_PORT = 8277
EPOCHS = 2  # node B joins during epoch 1; node A leaves during epoch 1 or 2
CUTTER = "MapWorker(MapBatches(PatchCutter))"  # Ray Data's actor class for the PatchCutter pool


def ray_cli(*args: str, timeout: float = 120) -> str:
    out = subprocess.run(
        [str(BIN / "ray"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
    if out.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} failed: {out.stderr[-2000:]}")
    return out.stdout


def job_client(address: str):
    """A JobSubmissionClient once the head's dashboard answers (it reads the same token)."""
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
        client.list_jobs()
        return client
    except Exception:  # connection refused or 5xx while the head's dashboard starts
        return None


def submit_when_ready(*args: str, attempts: int = 10) -> str:
    """`ray job submit`, retried while the head answers "No available agent" (still starting)."""
    for _ in range(attempts):
        try:
            return ray_cli(*args)
        except RuntimeError as exc:
            if "No available agent" not in str(exc):
                raise
            time.sleep(3)
    return ray_cli(*args)


T0 = time.time()


def log(what: str) -> None:
    """Milestones with seconds since start: where the minutes go when this runs slowly."""
    print(f"[{time.time() - T0:6.1f} s] {what}", flush=True)


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            log(f"done waiting for {what}")
            return
        time.sleep(1)
    raise TimeoutError(f"timed out waiting for {what}")


def submit(address: str, *args: str, env: dict[str, str] | None = None) -> str:
    """`ray job submit --no-wait` of `args` with the repo as working dir; returns the job id."""
    extra = ["--runtime-env-json", json.dumps({"env_vars": env})] if env else []
    out = submit_when_ready(
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--no-wait",
        *extra,
        "--",
        "python",
        *args,
    )
    job_id = re.findall(r"raysubmit_[A-Za-z0-9]+", out)[0]
    log(f"submitted {job_id}: {' '.join(args[:2])}")
    return job_id


def main(work: Path, data: str, store: str) -> dict:
    """Runs every phase against one cluster; `data` and `store` are s3:// URIs (the AWS_*
    variables of this process reach every node it starts)."""
    # Token auth on every process, and the venv's python for the job's entrypoint.
    token = work / "auth_token"
    token.write_text(uuid.uuid4().hex)
    token.chmod(0o600)
    os.environ.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PATH=f"{BIN}:{os.environ['PATH']}"
    )
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from empssl_ray.data import storage
    from empssl_ray.runs.metrics import read_metrics

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": DASHBOARD_PORT,
        },
    )
    seen: dict = {}
    try:
        aug_a = cluster.add_node(num_cpus=1, resources={"augment": 1})
        trainer = cluster.add_node(num_cpus=1, resources={"trainer": 2})
        ray.init(address=cluster.address, logging_level=logging.ERROR)
        address = f"http://127.0.0.1:{DASHBOARD_PORT}"
        names = {
            aug_a.node_id: "augment-a",
            trainer.node_id: "trainer",
            cluster.head_node.node_id: "head",  # type: ignore[attr-defined]
        }

        def actors(class_name: str, **filters: str) -> list:
            found = list_actors(filters=[(k, "=", v) for k, v in filters.items()], limit=10_000)
            return [a for a in found if a.class_name == class_name and a.node_id]

        def nodes_of(class_name: str, **filters: str) -> list[str]:
            # An actor that never started has no node.
            return sorted({names.get(a.node_id, a.node_id) for a in actors(class_name, **filters)})

        # The SDK for everything but the submits under test: a `ray` CLI process costs seconds
        # of CPU here, and on success the CLI's status line says "succeeded", on stderr.
        wait_for(lambda: job_client(address) is not None, 60, "the jobs API")
        client = job_client(address)

        def wait_job(job_id: str, timeout: float) -> str:
            try:
                wait_for(
                    lambda: client.get_job_status(job_id).is_terminal(),
                    timeout,
                    f"job {job_id} to end",
                )
            except TimeoutError:
                print(client.get_job_logs(job_id)[-6000:], flush=True)
                raise
            return str(client.get_job_status(job_id).value)

        s3_data = ["data=parquet", f"data.root={data}"]
        placement = ["++ray.trainer_resources={trainer: 1}", "++ray.aug_resources={augment: 1}"]

        # 1. A local storage path on a multi-node cluster: refused before any worker starts.
        start = time.time()
        job_id = submit(
            address,
            "jobs/pretrain.py",
            "experiment=smoke",
            *s3_data,
            *placement,
            f"run.storage_path={work / 'local-runs'}",
        )
        seen["refused_status"] = wait_job(job_id, 120)
        seen["refused_after_s"] = time.time() - start
        seen["refused_logs"] = client.get_job_logs(job_id)[-3000:]
        seen["trainers_before_main_job"] = len(actors("RayTrainWorker"))

        # 2. The run on S3: node B joins, the pool grows onto it, node A leaves.
        run_dir = f"{store}/runs/cluster"
        # Each augmentation batch of 2 images takes 0.15 s longer (256 an epoch, in 16 blocks):
        # the pool's demand then outlasts an actor's start-up, as it does with real images.
        job_id = submit(
            address,
            "jobs/pretrain.py",
            "experiment=smoke",
            "run.name=cluster",
            *s3_data,
            f"run.storage_path={store}/runs",
            "run.evaluate=false",
            f"optim.epochs={EPOCHS}",
            *placement,
            "ray.aug_min_actors=1",
            "ray.aug_max_actors=2",
            "ray.aug_cpus_per_actor=0.5",
            "ray.aug_batch_size=2",
            "eval.monitor_test=0",
            env={"EMPSSL_FAULT_SLOW_AUGMENT_S": "0.15"},
        )
        seen["job_id"] = job_id

        def epochs_done() -> int:
            return sum(1 for r in read_metrics(run_dir) if r["kind"] == "epoch")

        try:
            wait_for(
                lambda: actors("RayTrainWorker", state="ALIVE") and actors(CUTTER, state="ALIVE"),
                200,
                "training to start",
            )
        except TimeoutError:
            print(client.get_job_logs(job_id)[-6000:], flush=True)
            raise
        # Joins mid-run, with room for two actors: the pool grows onto it, and when node A
        # leaves, A's actor restarts here (on a cloud the autoscaler would add a node instead).
        log("adding augment node B")
        aug_b = cluster.add_node(num_cpus=1, resources={"augment": 2})
        names[aug_b.node_id] = "augment-b"
        seen["b_joined_during_epoch"] = epochs_done() + 1

        def pool_on_both() -> bool:
            seen["augment_nodes_at_peak"] = nodes_of(CUTTER, state="ALIVE")
            return {"augment-a", "augment-b"} <= set(seen["augment_nodes_at_peak"])

        wait_for(pool_on_both, 120, "augmentation actors on both augment nodes at once")
        seen["pool_on_both_during_epoch"] = epochs_done() + 1
        log("removing augment node A")
        cluster.remove_node(aug_a)  # leaves mid-run: its actors die with it
        seen["removed_during_epoch"] = epochs_done() + 1
        seen["status"] = wait_job(job_id, 180)
        # Where they ran, dead ones included (a restarted actor shows its latest node).
        seen["augment_nodes"] = nodes_of(CUTTER)
        seen["trainer_nodes"] = nodes_of("RayTrainWorker")
        seen["epoch_records"] = [r for r in read_metrics(run_dir) if r["kind"] == "epoch"]
        seen["expected_epochs"] = EPOCHS
        seen["run_files"] = [e.name for e in storage.list_dir(run_dir)]
        logs = client.get_job_logs(job_id)
        seen["logs_tail"] = logs[-1500:]
        seen["node_lines"] = [line for line in logs.splitlines() if line.startswith("a node ")]
        seen["ray_lines"] = [line for line in logs.splitlines() if "Reporting training" in line]

        # 3. The same local paths run once the user says every node mounts them.
        shared = work / "shared-runs"
        job_id = submit(
            address,
            "jobs/evaluate.py",
            "experiment=smoke",
            "random_init=true",
            "run.shared_filesystem=true",
            f"run.storage_path={shared}",
            f"output={shared / 'eval.json'}",
            "eval.probe_epochs=2",
            *placement,
            "ray.aug_cpus_per_actor=0.5",
        )
        seen["shared_status"] = wait_job(job_id, 180)
        seen["shared_eval_written"] = (shared / "eval.json").exists()

        # 4. A sweep as users run it: two trials at once, each cutting its patches on its own
        # actor pool on the augment node; sweep and trial runs on S3.
        sweep_dir = f"{store}/sweeps/cluster-sweep"
        job_id = submit(
            address,
            "jobs/tune.py",
            "experiment=tune-demo",
            "sweep.name=cluster-sweep",
            f"sweep.storage_path={store}/sweeps",
            "sweep.num_samples=1",
            "sweep.budget=0",  # optim.epochs (2) per trial, not the preset's equal budget
            "sweep.max_concurrent_trials=2",  # the cluster's nodes hold both at once
            *s3_data,
            *placement,
            "ray.patches_on_trainer=false",
            "ray.aug_min_actors=1",
            "ray.aug_max_actors=1",
            "ray.aug_cpus_per_actor=0.25",
            "ray.cpus_per_worker=0.25",
            "ray.read_cpus=0.1",
            "ray.aug_batch_size=8",
            # 64 batches an epoch, 0.05 s longer each: pools live long enough to be seen at once.
            env={"EMPSSL_FAULT_SLOW_AUGMENT_S": "0.05"},
        )
        peak = {"cutters": 0, "trainers": 0}

        def sweep_ended() -> bool:
            peak["cutters"] = max(peak["cutters"], len(actors(CUTTER, state="ALIVE")))
            peak["trainers"] = max(peak["trainers"], len(actors("RayTrainWorker", state="ALIVE")))
            return client.get_job_status(job_id).is_terminal()

        try:
            wait_for(sweep_ended, 300, "the sweep job to end")
        except TimeoutError:
            print(client.get_job_logs(job_id)[-6000:], flush=True)
            raise
        seen["sweep_status"] = str(client.get_job_status(job_id).value)
        seen["sweep_logs_tail"] = client.get_job_logs(job_id)[-1500:]
        seen["sweep_peak"] = peak
        seen["sweep_augment_nodes"] = nodes_of(CUTTER)
        seen["sweep_results"] = storage.read_text(f"{sweep_dir}/results.csv")
        seen["sweep_trial_runs"] = [e.name for e in storage.list_dir(f"{sweep_dir}/trials")]

        # 5. The best trial's YAML starts a run (Ray Train's local mode, data still on S3).
        best = work / "best"
        best.mkdir()
        (best / "best.yaml").write_text(storage.read_text(f"{sweep_dir}/best.yaml"))
        seen["best_epochs"] = run_best(best, f"{store}/best-runs")
    finally:
        ray.shutdown()
        cluster.shutdown()
    return seen


def run_best(folder: Path, storage_path: str) -> list[int]:
    """jobs/pretrain.py's main on the best trial's YAML; returns the epochs it recorded."""
    from empssl_ray.config import PretrainConfig
    from empssl_ray.launch import compose
    from empssl_ray.runs.checkpoints import run_dir_of
    from empssl_ray.runs.metrics import read_metrics
    from jobs.pretrain import main as pretrain_main

    cfg = compose(
        "best",
        [
            f"run.storage_path={storage_path}",
            "optim.epochs=1",
            "run.evaluate=false",
            "ray.num_workers=0",
            "run.progress=false",
        ],
        config_dir=str(folder),
        schema=PretrainConfig,
    )
    pretrain_main(cfg)
    return [r["epoch"] for r in read_metrics(run_dir_of(cfg)) if r["kind"] == "epoch"]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    result = main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
    print("SCENARIO " + json.dumps(result, default=str), flush=True)
