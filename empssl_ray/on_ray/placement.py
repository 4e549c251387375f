"""Where bookkeeping actors live: the head node, which spot losses and scale-downs never take."""

from __future__ import annotations

from typing import Any

# Every Ray node has its own node:<ip> resource; the head also has this one.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def on_head(actor_class: Any) -> Any:
    """`actor_class` placed on the head node, outside any Tune trial's placement group: a
    bookkeeping actor on a worker node that leaves would take the run with it."""
    return actor_class.options(resources={HEAD_NODE_RESOURCE: 0.001}, scheduling_strategy="DEFAULT")
