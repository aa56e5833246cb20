"""Meshes, logical-axis sharding rules, sharded initialization and multi-process setup (`distributed`)."""

from jaxrlhf.parallel import distributed
from jaxrlhf.parallel.mesh import MeshConfig, make_mesh
from jaxrlhf.parallel.sharding import (
    BATCH_AXES,
    LOGICAL_RULES,
    auto_axes,
    batch_axes,
    batch_sharding,
    batch_shards,
    init_sharded,
    logical_to_spec,
    replicated,
    state_shardings,
)

__all__ = [
    "BATCH_AXES", "LOGICAL_RULES", "MeshConfig", "auto_axes", "batch_axes", "batch_sharding", "batch_shards",
    "distributed", "init_sharded", "logical_to_spec", "make_mesh", "replicated", "state_shardings",
]
