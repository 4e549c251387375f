"""Where bookkeeping actors live: the head node, which spot losses and scale-downs never take."""

from __future__ import annotations

from typing import Any

# Every Ray node has its own node:<ip> resource; the head also has this one.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def trial_on_head(cpus: float) -> dict[str, float]:
    """Resources of a Tune trial's driver function placed on the head node: spot losses and
    scale-downs never take it (nor the Train controller and dataset actors Ray pins beside it).
    Cluster heads here hold no CPUs, so `cpus` is 0 there; the trainers ask their own."""
    return {"CPU": cpus, HEAD_NODE_RESOURCE: 0.001}


def on_head(actor_class: Any) -> Any:
    """`actor_class` placed on the head node, outside any Tune trial's placement group: a
    bookkeeping actor on a worker node that leaves would take the run with it."""
    return actor_class.options(resources={HEAD_NODE_RESOURCE: 0.001}, scheduling_strategy="DEFAULT")
