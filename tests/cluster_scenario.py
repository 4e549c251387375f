"""A multi-node Ray cluster on loopback, driven through the jobs API; run as a subprocess.

Head (no CPUs, jobs API, token auth) + an "augment" node + a "trainer" node. It submits
jobs/pretrain.py with `ray job submit`, adds a second augment node once training has started,
waits until the actor pool runs on both augment nodes, removes the first one, waits for the job,
and prints one JSON line of what it saw. Every process it starts belongs to the Cluster object
and is stopped in `finally` (also on Ctrl-C / SIGINT). The token is a file in the work dir, so
~/.ray is left alone.

    python tests/cluster_scenario.py <work dir>
"""

from __future__ import annotations

import json
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
    out = subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True,
                         timeout=timeout, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} failed: {out.stderr[-2000:]}")
    return out.stdout


def job_client(address: str):  # type: ignore[no-untyped-def]
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


def epochs_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"kind": "epoch"' in line)


T0 = time.time()


def log(what: str) -> None:
    """Milestones with seconds since start: where the minutes go when this runs slowly."""
    print(f"[{time.time() - T0:6.1f} s] {what}", flush=True)


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            log(f"done waiting for {what}")
            return
        time.sleep(1)
    raise TimeoutError(f"timed out waiting for {what}")


def main(work: Path) -> dict:
    # Token auth on every process, and the venv's python for the job's entrypoint.
    token = work / "auth_token"
    token.write_text(uuid.uuid4().hex)
    token.chmod(0o600)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                      PATH=f"{BIN}:{os.environ['PATH']}")
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": DASHBOARD_PORT})
    seen: dict = {}
    try:
        aug_a = cluster.add_node(num_cpus=1, resources={"augment": 1})
        trainer = cluster.add_node(num_cpus=1, resources={"trainer": 2})
        ray.init(address=cluster.address, logging_level="ERROR")
        address = f"http://127.0.0.1:{DASHBOARD_PORT}"
        run_dir = work / "runs" / "cluster"
        # The SDK for everything but the submit under test: a `ray` CLI process costs seconds of
        # CPU here, and on success the CLI's status line says "succeeded", on stderr.
        # The head's dashboard comes up a few seconds after the head: wait for it.
        wait_for(lambda: job_client(address) is not None, 60, "the jobs API")
        client = job_client(address)
        # Each augmentation batch of 2 images takes 0.15 s longer (256 an epoch, in 16 blocks): the
        # pool's demand then outlasts an actor's start-up, as it does with real images.
        slow = json.dumps({"env_vars": {"EMPSSL_FAULT_SLOW_AUGMENT_S": "0.15"}})
        submit = submit_when_ready(
            "job", "submit", "--address", address, "--working-dir", str(REPO), "--no-wait",
            "--runtime-env-json", slow,
            "--", "python", "jobs/pretrain.py", "experiment=smoke", "run.name=cluster",
            f"run.storage_path={work / 'runs'}", "run.evaluate=false", f"optim.epochs={EPOCHS}",
            "++ray.trainer_resources={trainer: 1}", "++ray.aug_resources={augment: 1}",
            "ray.aug_min_actors=1", "ray.aug_max_actors=2", "ray.aug_cpus_per_actor=0.5",
            "ray.aug_batch_size=2", "eval.monitor_test=0")
        job_id = re.findall(r"raysubmit_[A-Za-z0-9]+", submit)[0]
        log(f"submitted {job_id}")
        seen["job_id"] = job_id
        try:
            wait_for(lambda: (run_dir / "metrics.jsonl").exists(), 200, "the first step")
        except TimeoutError:
            print(client.get_job_logs(job_id)[-6000:], flush=True)
            raise
        # Joins mid-run, with room for two actors: the pool grows onto it, and when node A
        # leaves, A's actor restarts here (on a cloud the autoscaler would add a node instead).
        log("adding augment node B")
        aug_b = cluster.add_node(num_cpus=1, resources={"augment": 2})
        seen["b_joined_during_epoch"] = epochs_done(run_dir) + 1

        names = {aug_a.node_id: "augment-a", aug_b.node_id: "augment-b",
                 trainer.node_id: "trainer", cluster.head_node.node_id: "head"}

        def nodes_of(class_name: str, **filters: str) -> list[str]:
            actors = list_actors(filters=[(k, "=", v) for k, v in filters.items()], limit=10_000)
            # An actor that never started has no node.
            return sorted({names.get(a.node_id, a.node_id) for a in actors
                           if a.class_name == class_name and a.node_id})

        def pool_on_both() -> bool:
            seen["augment_nodes_at_peak"] = nodes_of(CUTTER, state="ALIVE")
            return {"augment-a", "augment-b"} <= set(seen["augment_nodes_at_peak"])

        wait_for(pool_on_both, 120, "augmentation actors on both augment nodes at once")
        seen["pool_on_both_during_epoch"] = epochs_done(run_dir) + 1
        log("removing augment node A")
        cluster.remove_node(aug_a)  # leaves mid-run: its actors die with it
        seen["removed_during_epoch"] = epochs_done(run_dir) + 1

        try:
            wait_for(lambda: client.get_job_status(job_id).is_terminal(), 180, "the job to end")
        except TimeoutError:
            print(client.get_job_logs(job_id)[-6000:], flush=True)
            raise
        seen["status"] = str(client.get_job_status(job_id).value)
        # Where they ran, dead ones included (a restarted actor shows its latest node).
        seen["augment_nodes"] = nodes_of(CUTTER)
        seen["trainer_nodes"] = nodes_of("RayTrainWorker")
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        seen["epoch_records"] = [r for r in records if r["kind"] == "epoch"]
        seen["expected_epochs"] = EPOCHS
        seen["logs_tail"] = client.get_job_logs(job_id)[-1500:]
    finally:
        ray.shutdown()
        cluster.shutdown()
    return seen


if __name__ == "__main__":
    print("SCENARIO " + json.dumps(main(Path(sys.argv[1])), default=str), flush=True)
