"""A job's Ray session: joining a cluster or starting an embedded Ray, and the checks a driver
makes once Ray is up (where the job reads and writes, whether its CPUs can ever be held)."""

from __future__ import annotations

import os
from pathlib import Path

import ray
import yaml

from empssl_ray.config import PretrainConfig
from empssl_ray.console import verbose_wanted
from empssl_ray.on_ray.logs import quiet_ray, silence_driver
from empssl_ray.on_ray.tracking import mlflow_uri
from empssl_ray.pool_cap import actor_ask, cap_pool, launcher_node_types, pool_capacity
from empssl_ray.rules import check_capacity, check_locations

# Set by Ray's job supervisor in the environment of a `ray job submit` entrypoint.
JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# A Kubernetes pod's namespace, beside its service account's token.
POD_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


_started_here = False  # init_ray started an embedded Ray: no node will join it


def init_ray(address: str | None, verbose: bool = False) -> None:
    """Joins `address`, or the job's cluster (RAY_ADDRESS, set by `ray job submit`), or else
    starts an embedded local Ray. A bare ray.init() would instead try to join whatever cluster
    /tmp/ray last recorded, even a dead one.

    Args:
        verbose: Ray's own logs on the console (run.verbose, or EMPSSL_VERBOSE=1); otherwise
            the console shows only our progress (`ray_console`).
    """
    global _started_here
    if ray.is_initialized():
        return
    verbose = verbose_wanted(verbose)
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    _started_here = address == "local"
    # The dashboard stays on even locally: Ray Train V2 watches its controller through the
    # state API that the dashboard serves.
    ray.init(address=address, **quiet_ray(verbose))
    if not verbose:
        silence_driver()


def preflight(
    cfg: PretrainConfig, outputs: dict[str, str] | None = None, trains: bool = True
) -> None:
    """Storage locations (and, for a job that trains, the cluster's CPUs) checked in the driver
    once Ray is up, before any task starts; MLflow's store settled (`mlflow_uri`).

    Args:
        outputs: where the job writes, by config key; default {"run.storage_path": ...}.
        trains: the job runs `cfg`'s trainers and patch stream.
    """
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    check_locations(cfg, nodes, JOB_ENV_VAR in os.environ, outputs)
    # One MLflow store for the driver and every worker (the cfg travels to them with it).
    cfg.tracking.uri = mlflow_uri(cfg)
    if trains:
        have = ray.cluster_resources()
        can_grow = not _started_here
        note = check_capacity(cfg, have.get("CPU", 0.0), can_grow, have.get("GPU", 0.0))
        if note is not None:
            print(f"empssl-ray: note: {note}", flush=True)
        note = cap_pool(cfg.ray, cluster_pool_capacity(cfg))
        if note is not None:
            print(f"empssl-ray: {note}", flush=True)


def autoscaler_node_types() -> list[tuple[dict[str, float], int]] | None:
    """The node types the cluster's autoscaler may launch, as (resources, max_count), or None
    without an autoscaler: Ray's record in the GCS (the one Ray Data reads), else (Ray 2.60's
    launcher and KubeRay leave the record empty) the RayCluster of a KubeRay pod, or the config
    a launcher head's autoscaler runs with."""
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # an older or newer Ray without it: the launcher's config, if any
        config = None
    if config is not None and config.node_group_configs:
        return [(dict(g.resources), g.max_count) for g in config.node_group_configs]
    if os.environ.get("RAY_CLUSTER_NAME"):
        return kuberay_node_types(os.environ["RAY_CLUSTER_NAME"])
    path = autoscaling_config_path(ray.get_runtime_context().gcs_address)
    if path is None:
        return None
    try:
        return launcher_node_types(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return None  # unreadable or not a launcher config: no cap, as without one


def kuberay_node_types(cluster: str) -> list[tuple[dict[str, float], int]] | None:
    """The worker groups of RayCluster `cluster` (KubeRay names it in every pod's environment,
    RAY_CLUSTER_NAME) as (resources, max_count), read as Ray's KubeRay autoscaler reads them;
    None where the pod may not read it (the head pod's service account may: its autoscaler does).
    """
    try:
        from ray.autoscaler._private.kuberay import autoscaling_config, node_provider

        namespace = POD_NAMESPACE.read_text().strip()
        client = node_provider.KubernetesHttpApiClient(namespace=namespace)
        cr = client.get(f"rayclusters/{cluster}")
        return launcher_node_types(autoscaling_config._derive_autoscaling_config_from_ray_cr(cr))
    except Exception:  # not in a pod, no permission, no API server: no cap, as without one
        return None


def autoscaling_config_path(gcs_address: str) -> Path | None:
    """The autoscaling config of this cluster's autoscaler where it runs on this node (a
    launcher head, where a `ray job submit` entrypoint runs): the `--autoscaling-config` of the
    monitor process serving this cluster's GCS port; None elsewhere."""
    port = gcs_address.rsplit(":", 1)[-1].encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            if not any(a.startswith(b"--gcs-address=") and a.endswith(b":" + port) for a in args):
                continue
            for arg in args:
                if arg.startswith(b"--autoscaling-config="):
                    path = Path(os.fsdecode(arg.split(b"=", 1)[1])).expanduser()
                    if path.is_file():
                        return path
        except OSError:  # the process ended, or is not ours to read
            continue
    return None


def cluster_pool_capacity(cfg: PretrainConfig) -> int | None:
    """The most augmentation actors this cluster can hold (`pool_cap.pool_capacity`), or None
    where nodes may still join by hand (a joined cluster without an autoscaler)."""
    # An embedded Ray is this machine alone, whatever autoscaler may run beside it.
    node_types = None if _started_here else autoscaler_node_types()
    if node_types is None and not _started_here:
        return None
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    r = cfg.ray
    # The embedded Ray is one node shared with the trainers and the readers.
    reserved = r.num_workers * r.cpus_per_worker + r.read_cpus if _started_here else 0.0
    return pool_capacity(actor_ask(r), nodes, node_types, reserved)
