"""Ray's own autoscaler under a submitted run, on one machine; run as a subprocess.

A head started with `ray start --head --autoscaling-config` and Ray's fake multi-node provider
(the real autoscaler; its nodes are local processes), with the node types of a shipped cluster
config (`cluster/aws.yaml` by default) scaled to this machine: the head at CPU 0, the trainer
type, the augment type with `min_workers: 0`. Data and outputs on the loopback S3.

A run is submitted with `ray job submit` whose augmentation is slow (EMPSSL_FAULT_SLOW_AUGMENT_S)
while a flag file exists: the autoscaler must launch the trainer node and augment nodes on
demand, and the pool grow onto several of them. Once it has, the flag goes (demand drops):
the pool must shrink and an idle augment node be removed while the run still trains. The run
must finish. Prints one JSON line of what it saw; every process it starts is stopped in
`finally` (the head's process tree, then any process of its private temp dir).

    python tests/autoscaler_scenario.py <work dir> <s3:// data> <s3:// storage> [cluster yaml]
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEAD_ID = "ab" * 28  # the provider's node ids are 56 hex digits
HEAD_TYPE = "ray.head.default"  # the fake provider tags its head with this type name
CUTTER = "MapWorker(MapBatches(PatchCutter))"
PENDING = ("DEPENDENCIES_UNREADY", "PENDING_CREATION")
WAIT_AFTER_RUN_S = 180
# What one fake node of a type may hold on 2 cores; keys absent here keep the shipped value.
SCALED = {"CPU": 2, "GPU": 1, "trainer": 1, "augment": 2, "memory": 2 * 1024**3}
MOST_NODES = {"trainer": 1, "augment": 2}
# More actors than the augment nodes hold (2 nodes x 2): the job's preflight must cap the pool
# from the autoscaling config the head runs with.
ASKED_ACTORS, HELD_ACTORS = 6, 4
CAP_LINE = f"ray.aug_max_actors={ASKED_ACTORS} lowered to {HELD_ACTORS}"
# How Ray's autoscaler names a request it does not place: the request's shapes, each `{..}*n`.
UNPLACED = re.compile(r"No available node types can fulfill [^{]*((?:\{[^{}]*\}\*\d+(?:, )?)+)")
T0 = time.time()


LOG: list[str] = []  # the scenario's own lines, returned with what it saw


def log(what: str) -> None:
    LOG.append(f"[{time.time() - T0:6.1f} s] {what}")
    print(LOG[-1], flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def role(resources: dict) -> str:
    """A node type's role by the custom resource it carries."""
    return next((r for r in ("trainer", "augment") if r in resources), "other")


def autoscaling_config(shipped: Path, gcs_port: int) -> dict:
    """The shipped config's node types (same names and resource keys, amounts scaled down),
    under the fake provider. A type that declares no `memory` keeps declaring none."""
    cfg = yaml.safe_load(shipped.read_text())
    types = {}
    for name, spec in cfg["available_node_types"].items():
        resources = {k: min(v, SCALED.get(k, v)) for k, v in spec["resources"].items()}
        head = name == cfg["head_node_type"]
        types[HEAD_TYPE if head else name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": 0,
            "max_workers": 0 if head else MOST_NODES.get(role(resources), 1),
        }
    return {
        "cluster_name": "fake-" + shipped.stem,
        "max_workers": sum(t["max_workers"] for t in types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.5,
        "provider": {
            "type": "external",
            "module": "tests.autoscaler_provider.MemoryFakeProvider",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,
            "head_node_id": HEAD_ID,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "auth": {"ssh_user": "nobody"},
        "file_mounts": {},
        "cluster_synced_files": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def stop_tree(head: subprocess.Popen, temp_dir: str) -> None:
    """Ends the head's process group, then every process still naming our temp dir (the
    GCS server outlives its group; fake nodes are the autoscaler's children)."""
    import psutil

    if head.poll() is None:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    ours = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in proc.info["cmdline"] or []):
            ours.append(proc)
    for proc in ours:
        proc.terminate()
    _, alive = psutil.wait_procs(ours, timeout=15)
    for proc in alive:
        proc.kill()


def main(work: Path, data: str, store: str, shipped: Path) -> dict:
    token = work / "auth_token"
    token.write_text(uuid.uuid4().hex)
    token.chmod(0o600)
    temp_dir = tempfile.mkdtemp(prefix="as", dir="/tmp")  # short: Unix socket paths
    gcs_port, dash_port = free_port(), free_port()
    config = work / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(autoscaling_config(shipped, gcs_port)))
    head_type = yaml.safe_load(config.read_text())["head_node_type"]
    os.environ.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        PATH=f"{BIN}:{os.environ['PATH']}",
        PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}",
    )
    head_env = dict(
        os.environ,
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        RAY_enable_autoscaler_v2="1",
        RAY_CLOUD_INSTANCE_ID=HEAD_ID,
        RAY_OVERRIDE_NODE_ID_FOR_TESTING=HEAD_ID,
        RAY_NODE_TYPE_NAME=head_type,
    )
    with open(work / "head.log", "w") as head_log:  # the child keeps its own copy
        head = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                "--num-cpus=0",
                f"--port={gcs_port}",
                f"--temp-dir={temp_dir}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}",
                f"--autoscaling-config={config}",
            ],
            env=head_env,
            start_new_session=True,
            stdout=head_log,
            stderr=subprocess.STDOUT,
        )
    seen: dict = {"node_types": yaml.safe_load(config.read_text())["available_node_types"]}
    try:
        seen.update(watch_a_run(work, data, store, gcs_port, dash_port))
        seen["autoscaler_unplaced"] = unplaced_shapes(Path(temp_dir))
    finally:
        import ray

        ray.shutdown()
        stop_tree(head, temp_dir)
        log("cluster stopped")
    return seen


def unplaced_shapes(temp_dir: Path) -> list[dict]:
    """Every request shape the autoscaler logged as one it could not place (its events and
    logs under the head's temp dir), once each."""
    shapes: list[dict] = []
    for path in temp_dir.glob("session_*/logs/**/*"):
        if not path.is_file():
            continue
        for found in UNPLACED.finditer(path.read_text(errors="replace")):
            for shape in re.findall(r"\{[^{}]*\}", found.group(1)):
                if (parsed := ast.literal_eval(shape)) not in shapes:
                    shapes.append(parsed)
    return shapes


def infeasible_requests(gcs_address: str) -> dict[str, list[dict]]:
    """What Ray's autoscaler reports that no node type can hold, by kind: tasks and actors,
    placement groups, and resource requests (`request_resources`, Ray Data's included)."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply  # type: ignore[attr-defined]

    reply = GetClusterStatusReply()
    reply.ParseFromString(GcsClient(gcs_address).get_cluster_status(timeout_s=10))
    state = reply.autoscaling_state
    return {
        "tasks": [dict(r.resources_bundle) for r in state.infeasible_resource_requests],
        "placement_groups": [
            dict(r.resources_bundle)
            for gang in state.infeasible_gang_resource_requests
            for r in gang.requests
        ],
        "resource_requests": [
            dict(r.request.resources_bundle)
            for constraint in state.infeasible_cluster_resource_constraints
            for r in constraint.resource_requests
        ],
    }


def watch_a_run(work: Path, data: str, store: str, gcs_port: int, dash_port: int) -> dict:
    import ray
    from ray.util.state import list_actors

    from tests.cluster_scenario import job_client, submit, wait_for

    address = f"http://127.0.0.1:{dash_port}"
    wait_for(lambda: job_client(address) is not None, 90, "the head's jobs API")
    client = job_client(address)
    ray.init(address=f"127.0.0.1:{gcs_port}", logging_level=logging.ERROR)
    flag = work / "slow-augmentation"
    flag.touch()
    job_id = submit(
        address,
        "jobs/pretrain.py",
        "experiment=smoke",
        "run.name=autoscaled",
        "data=parquet",
        f"data.root={data}",
        f"run.storage_path={store}/runs",
        "run.evaluate=false",
        "run.progress=false",
        "optim.epochs=16",
        "ray.num_workers=1",
        "ray.cpus_per_worker=1",
        "++ray.trainer_resources={trainer: 1}",
        "++ray.aug_resources={augment: 1}",
        "ray.aug_min_actors=1",
        f"ray.aug_max_actors={ASKED_ACTORS}",
        "ray.aug_cpus_per_actor=0.5",
        "ray.aug_batch_size=4",
        "eval.monitor_test=0",
        env={
            "EMPSSL_FAULT_SLOW_AUGMENT_S": "0.4",
            "EMPSSL_FAULT_SLOW_AUGMENT_WHILE": str(flag),
            "EMPSSL_FAULT_DIR": str(work),
            # Ray Data's resource request outlives a run whose stream is not shut down
            # gracefully by this long (default 180 s); shorter here, to keep the test short.
            "RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S": "60",
        },
    )
    seen: dict = {"samples": [], "pending_since": {}, "longest_pending_s": 0.0}
    seen.update(infeasible={}, pending_asks=[], actor_states=[])
    states: dict[str, str] = {}

    def sample() -> dict:
        nodes = {
            n["NodeID"]: role(n["Resources"])
            for n in ray.nodes()
            if n["Alive"] and role(n["Resources"]) != "other"
        }
        cutters = [a for a in list_actors(limit=10_000, detail=True) if a.class_name == CUTTER]
        now = round(time.time() - T0, 1)
        alive = [a for a in cutters if a.state == "ALIVE"]
        pending = {a.actor_id for a in cutters if a.state in PENDING}
        for actor in cutters:  # what a waiting actor asks for, once per distinct shape
            ask = dict(actor.required_resources or {})
            if actor.state in PENDING and ask not in seen["pending_asks"]:
                seen["pending_asks"].append(ask)
        for actor in cutters:  # each actor's state changes, with its node
            where = f"{actor.state} on {(actor.node_id or '-')[-6:]}"
            if states.get(actor.actor_id) != where:
                states[actor.actor_id] = where
                seen["actor_states"].append(f"{now} s {actor.actor_id[:8]} {where}")
        for kind, shapes in infeasible_requests(f"127.0.0.1:{gcs_port}").items():
            for shape in shapes:
                if shape not in seen["infeasible"].setdefault(kind, []):
                    seen["infeasible"][kind].append(shape)
                    log(f"infeasible {kind}: {shape}")
        since = seen["pending_since"]
        for waiting in pending:  # how long each actor has waited to be placed and started
            since.setdefault(waiting, now)
            seen["longest_pending_s"] = max(seen["longest_pending_s"], now - since[waiting])
        row = {
            "t": now,
            "trainer_nodes": sum(r == "trainer" for r in nodes.values()),
            "augment_nodes": sum(r == "augment" for r in nodes.values()),
            "cutters": len(alive),
            "cutter_nodes": len({a.node_id for a in alive}),
            "pending": len(pending),
            "job": str(client.get_job_status(job_id).value),
        }
        seen["samples"].append(row)
        return row

    deadline = time.time() + 600
    while time.time() < deadline:
        row = sample()
        if "demand_dropped_at" not in seen and row["cutter_nodes"] >= 2:
            log(f"pool on {row['cutter_nodes']} augment nodes: demand drops")
            flag.unlink()
            seen["demand_dropped_at"] = row["t"]
        if client.get_job_status(job_id).is_terminal():
            break
        time.sleep(2)
    seen["job_status"] = str(client.get_job_status(job_id).value)
    seen["job_ended_at"] = round(time.time() - T0, 1)
    logs = client.get_job_logs(job_id)
    seen["job_logs"] = logs[-8000:]
    seen["infeasible_in_logs"] = "infeasible" in logs.lower()
    seen["pool_capped"] = CAP_LINE in logs
    log(f"job {seen['job_status']}")
    # After the run, the idle nodes go: the idle timeout, plus Ray Data's last resource request
    # expiring where the run's end did not cancel it.
    end = time.time() + WAIT_AFTER_RUN_S
    while time.time() < end:
        row = sample()
        if row["augment_nodes"] + row["trainer_nodes"] == 0:
            break
        time.sleep(3)
    del seen["pending_since"]
    seen["log"] = LOG
    return seen


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    shipped = Path(sys.argv[4]) if len(sys.argv) > 4 else REPO / "cluster" / "aws.yaml"
    result = main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], shipped)
    print("SCENARIO " + json.dumps(result, default=str), flush=True)
