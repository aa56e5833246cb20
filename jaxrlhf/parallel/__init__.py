"""Meshes, logical-axis sharding rules, sharded initialization and multi-process setup (`distributed`)."""

from jaxrlhf.parallel import distributed
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
    "distributed", "MeshConfig", "make_mesh", "LOGICAL_RULES", "batch_sharding", "init_sharded", "logical_to_spec",
    "replicated", "state_shardings",
]
