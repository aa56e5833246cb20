"""Meshes, logical-axis sharding rules and sharded initialization."""

from jaxrlhf.parallel.mesh import MeshConfig, make_mesh
from jaxrlhf.parallel.sharding import (
    LOGICAL_RULES,
    batch_sharding,
    init_sharded,
    logical_to_spec,
    replicated,
    state_shardings,
)

__all__ = [
    "MeshConfig", "make_mesh", "LOGICAL_RULES", "batch_sharding", "init_sharded", "logical_to_spec",
    "replicated", "state_shardings",
]
