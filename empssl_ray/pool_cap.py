"""The most augmentation actors a cluster can ever hold, from its nodes and node types (no Ray).

Ray Data sizes the actor pool from a budget of CPUs, GPUs and memory and does not see custom
resources such as `augment`: it would count a GPU node's spare CPUs as room for actors that can
only run on augment nodes, and an actor that can never be placed waits in PENDING_CREATION,
where it also stops the pool from shrinking. So the pool's upper bound is cut, at the run's
start, to what the cluster can hold: the node types at their `max_workers` (from Ray's record,
a KubeRay pod's RayCluster, or the autoscaling config a launcher head runs with), or, on a
cluster no node will join, the nodes there are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from empssl_ray.config import ConfigError, RayConfig


def actor_ask(ray_cfg: RayConfig) -> dict[str, float]:
    """What one augmentation actor asks of a node (Ray Data adds `memory` once it has seen
    output; cluster/ node types declare it, see tests/test_cluster_configs.py)."""
    return {"CPU": ray_cfg.aug_cpus_per_actor, **(ray_cfg.aug_resources or {})}


def actors_on(node: Mapping[str, float], ask: Mapping[str, float], spare_cpus: float = 0) -> int:
    """Actors of `ask` that fit on a node of `node` resources, `spare_cpus` of its CPUs kept
    for others."""
    room = {**node, "CPU": node.get("CPU", 0.0) - spare_cpus}
    fits = [room.get(k, 0.0) / v for k, v in ask.items() if v > 0]
    return max(0, math.floor(min(fits) + 1e-9)) if fits else 0


def pool_capacity(
    ask: Mapping[str, float],
    nodes: Iterable[Mapping[str, float]],
    node_types: Iterable[tuple[Mapping[str, float], int]] | None,
    reserved_cpus: float = 0.0,
) -> int:
    """The most actors of `ask` the cluster can hold at once.

    Args:
        ask: one actor's resources (`actor_ask`).
        nodes: the alive nodes' total resources.
        node_types: the autoscaler's node types as (resources, max_count); None = no autoscaler.
        reserved_cpus: CPUs the run's trainers and readers hold on the node (an embedded
            one-node Ray; 0 elsewhere, where they have nodes of their own).
    """
    alive = sum(actors_on(n, ask, reserved_cpus) for n in nodes)
    if node_types is None:
        return alive
    return max(alive, sum(count * actors_on(res, ask) for res, count in node_types))


def launcher_node_types(autoscaling: Mapping) -> list[tuple[dict[str, float], int]]:
    """The node types of a cluster launcher's autoscaling config (`available_node_types`), as
    (resources, max_count). A type's count is its `max_workers` (Ray's default: the cluster's,
    0 for the head type), at most the cluster's; the head type is one node more.

    Args:
        autoscaling: the parsed YAML a launcher head runs its autoscaler with.
    """
    cluster_max = autoscaling.get("max_workers")
    head = autoscaling.get("head_node_type")
    types = []
    for name, spec in (autoscaling.get("available_node_types") or {}).items():
        count = spec.get("max_workers", 0 if name == head else cluster_max or 0)
        if cluster_max is not None:
            count = min(count, cluster_max)
        count += name == head
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        types.append((resources, int(count)))
    return types


def cap_pool(ray_cfg: RayConfig, capacity: int | None) -> str | None:
    """Lowers `ray.aug_max_actors` to `capacity` (in place), or refuses a pool whose smallest
    size can never be held; returns the line saying so, else None.

    Args:
        capacity: `pool_capacity`, or None where nodes may still join by hand (a cluster
            without an autoscaler that the job joined): nothing to cap.
    """
    if capacity is None or ray_cfg.patches_on_trainer:
        return None
    ask = actor_ask(ray_cfg)
    if capacity < ray_cfg.aug_min_actors:
        raise ConfigError(
            f"ray.aug_min_actors={ray_cfg.aug_min_actors} cannot work: the cluster's nodes and "
            f"node types hold at most {capacity} augmentation actors of {ask}; lower it (or "
            "ray.aug_cpus_per_actor), or give a node type the resources"
        )
    if capacity >= ray_cfg.aug_max_actors:
        return None
    wanted, ray_cfg.aug_max_actors = ray_cfg.aug_max_actors, capacity
    return (
        f"ray.aug_max_actors={wanted} lowered to {capacity}: the most augmentation actors of "
        f"{ask} the cluster's nodes and node types can hold (more would wait for ever)"
    )
