"""The actor pool's upper bound is cut to what the cluster's nodes and node types can hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from empssl_ray.config import ConfigError, RayConfig
from empssl_ray.pool_cap import (
    actor_ask,
    actors_on,
    cap_pool,
    launcher_node_types,
    pool_capacity,
)

AUGMENT = {"CPU": 0.5, "augment": 1.0}


def test_an_actor_fits_a_node_by_its_scarcest_resource() -> None:
    assert actors_on({"CPU": 8, "augment": 2}, AUGMENT) == 2  # augment, not CPU, decides
    assert actors_on({"CPU": 8, "GPU": 1}, AUGMENT) == 0  # a GPU node's spare CPUs: none
    assert actors_on({"CPU": 2}, {"CPU": 0.5}, spare_cpus=0.75) == 2


def test_capacity_counts_node_types_at_their_most_not_only_the_nodes_up_now() -> None:
    nodes = [{"CPU": 0}, {"CPU": 4, "GPU": 1, "trainer": 1}, {"CPU": 2, "augment": 2}]
    types = [({"CPU": 4, "GPU": 1, "trainer": 1}, 1), ({"CPU": 2, "augment": 2}, 3)]
    assert pool_capacity(AUGMENT, nodes, None) == 2  # no autoscaler: the nodes there are
    assert pool_capacity(AUGMENT, nodes, types) == 6  # 3 augment nodes of 2


def test_the_pool_is_capped_with_a_line_and_an_impossible_one_refused() -> None:
    cfg = RayConfig(aug_min_actors=1, aug_max_actors=56, aug_resources={"augment": 1})
    line = cap_pool(cfg, 6)
    assert cfg.aug_max_actors == 6
    assert line is not None and "ray.aug_max_actors=56 lowered to 6" in line
    assert cap_pool(cfg, 6) is None and cap_pool(cfg, None) is None  # fits; may still grow
    with pytest.raises(ConfigError, match="ray.aug_min_actors=1 cannot work.*at most 0"):
        cap_pool(cfg, 0)
    on_trainer = RayConfig(patches_on_trainer=True, aug_max_actors=56)
    assert cap_pool(on_trainer, 0) is None  # no pool to cap
    assert actor_ask(cfg) == {"CPU": cfg.aug_cpus_per_actor, "augment": 1}


@pytest.mark.usefixtures("ray_session")
def test_an_embedded_ray_holds_what_its_cores_leave_beside_the_trainers(monkeypatch) -> None:
    from empssl_ray.config import PretrainConfig
    from empssl_ray.on_ray import session

    monkeypatch.setattr(session, "_started_here", True)
    cfg = PretrainConfig()
    cfg.ray.num_workers, cfg.ray.cpus_per_worker, cfg.ray.read_cpus = 2, 0.25, 0.25
    cfg.ray.aug_cpus_per_actor, cfg.ray.aug_max_actors = 0.5, 8
    assert session.autoscaler_node_types() is None  # a local Ray has no autoscaler
    capacity = session.cluster_pool_capacity(cfg)
    assert capacity == 2  # (2 CPUs - 0.75 held) / 0.5 each
    monkeypatch.setattr(session, "_started_here", False)
    assert session.cluster_pool_capacity(cfg) is None  # joined: nodes may join by hand


def test_a_launcher_config_gives_its_node_types_at_their_most() -> None:
    import yaml

    shipped = yaml.safe_load(Path(__file__).parents[1].joinpath("cluster/aws.yaml").read_text())
    types = launcher_node_types(shipped)
    assert ({"CPU": 16.0, "augment": 14.0, "memory": 21474836480.0}, 4) in types
    assert ({"CPU": 0.0}, 1) in types  # the head: Ray's default max_workers for it is 0
    ask = actor_ask(RayConfig(aug_cpus_per_actor=1.0, aug_resources={"augment": 1}))
    assert pool_capacity(ask, [], types) == 56  # 4 augment nodes of 14 (docs/cluster.md)
    capped = {**shipped, "max_workers": 2}  # the cluster's limit bounds every type
    assert pool_capacity(ask, [], launcher_node_types(capped)) == 28


def test_the_autoscaling_config_is_found_by_the_gcs_port_its_monitor_serves(tmp_path) -> None:
    from empssl_ray.on_ray import session

    config = tmp_path / "autoscaling.yaml"
    config.write_text("available_node_types: {}\n")
    # A stand-in for the head's monitor process: only its command line matters.
    args = ["--gcs-address=127.0.0.1:40123", f"--autoscaling-config={config}"]
    monitor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])
    try:
        assert session.autoscaling_config_path("10.0.0.5:40123") == config
        assert session.autoscaling_config_path("127.0.0.1:40124") is None  # another cluster
    finally:
        monitor.kill()
        monitor.wait()


def test_a_kuberay_pod_reads_its_raycluster_s_worker_groups(tmp_path, monkeypatch) -> None:
    import yaml
    from ray.autoscaler._private.kuberay import node_provider

    from empssl_ray.on_ray import session

    shipped = Path(__file__).parents[1] / "cluster/kuberay/raycluster.yaml"
    cr = next(d for d in yaml.safe_load_all(shipped.read_text()) if d["kind"] == "RayCluster")
    asked = []

    def get(client, path: str) -> dict:  # the API server's answer: the shipped RayCluster
        asked.append((client._namespace, path))
        return {**cr, "metadata": {**cr["metadata"], "namespace": client._namespace}}

    monkeypatch.setattr(node_provider.KubernetesHttpApiClient, "get", get)
    namespace = tmp_path / "namespace"
    namespace.write_text("ml\n")
    monkeypatch.setattr(session, "POD_NAMESPACE", namespace)
    types = session.kuberay_node_types("empssl")
    assert asked == [("ml", "rayclusters/empssl")]
    ask = actor_ask(RayConfig(aug_cpus_per_actor=1.0, aug_resources={"augment": 1}))
    assert pool_capacity(ask, [], types) == 56  # 4 cpu-augment pods of 14
    monkeypatch.setattr(session, "POD_NAMESPACE", tmp_path / "absent")
    assert session.kuberay_node_types("empssl") is None  # not in a pod: no cap
