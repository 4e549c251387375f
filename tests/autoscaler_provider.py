"""Ray's fake multi-node provider (nodes as local processes), with node types that declare
`memory`, as cloud node types do (Ray's AWS provider fills it in from the instance type).

The stock provider hands every resource of a node type to `RayParams(resources=...)`, which
refuses `memory`; this one passes it as `RayParams(memory=...)`. The autoscaler on the head
imports it by module path (`provider: {type: external, module: tests.autoscaler_provider.
MemoryFakeProvider}`), so the head's PYTHONPATH names the repository.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import ray._private.parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class MemoryFakeProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(
        self, node_config: Any, tags: Any, count: int, resources: dict, labels: Any
    ) -> None:
        resources = dict(resources)
        memory = resources.pop("memory", None)
        params = ray._private.parameter.RayParams
        # The parent builds its RayParams by attribute lookup at call time: give it the memory.
        ray._private.parameter.RayParams = partial(params, memory=memory)  # type: ignore[misc,assignment]
        try:
            super()._create_node_with_resources_and_labels(
                node_config, tags, count, resources, labels
            )
        finally:
            ray._private.parameter.RayParams = params  # type: ignore[misc]
