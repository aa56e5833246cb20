"""Logical axis names -> mesh axes, and sharded initialization without a full host copy.

Parameters are created with logical axis names in their `out_sharding` metadata (e.g. ("embed", "mlp")).
One rules table maps each logical name to a mesh axis (or None: replicated). A dimension that the mapped
mesh axis does not divide is replicated instead (e.g. 3 KV heads over 2 tensor shards), so any model fits
any mesh; the resulting layout is still deterministic and inspectable.
"""

from typing import Any, Callable, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]

LOGICAL_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("ensemble", None),
    ("attributes", None),
    ("positions", None),
)


def _axis_size(mesh: Mesh, mesh_axes) -> int:
  if mesh_axes is None:
    return 1
  names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  size = 1
  for name in names:
    size *= mesh.shape[name]
  return size


def logical_to_spec(logical_names: Sequence[str | None], rules: Rules = LOGICAL_RULES,
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec.

  Args:
    logical_names: one name (or None) per array dimension.
    rules: (logical name, mesh axis or tuple of mesh axes or None) pairs.
    shape, mesh: when both are given, a dimension that its mesh axes do not divide is replicated, and a
      mesh axis already used by an earlier dimension is not used twice.
  """
  table = dict(rules)
  unknown = [name for name in logical_names if name is not None and name not in table]
  if unknown:
    raise ValueError(f"logical axis names {unknown} have no sharding rule; known: {sorted(table)}")
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_names):
    mesh_axes = None if name is None else table[name]
    if mesh_axes is not None and mesh is not None:
      names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
      names = tuple(n for n in names if n not in used and mesh.shape[n] > 1)
      mesh_axes = names if names else None
      if mesh_axes is not None and shape is not None and shape[dim] % _axis_size(mesh, mesh_axes):
        mesh_axes = None
      if mesh_axes is not None:
        used.update(mesh_axes)
        mesh_axes = mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes
    spec.append(mesh_axes)
  return PartitionSpec(*spec)


def _variable_names(variable) -> tuple | None:
  metadata = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
  return metadata.get("out_sharding") or metadata.get("sharding_names") or metadata.get("sharding")


def state_shardings(abstract_state, mesh: Mesh, rules: Rules = LOGICAL_RULES):
  """NamedShardings for every leaf of an (abstract) nnx.State, from its logical axis metadata.

  Leaves without logical names are replicated.
  """

  def one(variable):
    names = _variable_names(variable)
    value = variable.get_value() if hasattr(variable, "get_value") else variable.value
    shape = getattr(value, "shape", ())
    if not names or len(names) != len(shape):
      spec = PartitionSpec()
    else:
      spec = logical_to_spec(names, rules, shape=shape, mesh=mesh)
    return variable.replace(NamedSharding(mesh, spec))

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
  """A fully replicated sharding on `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 2, batch_axes: Sequence[str] = ("data", "fsdp")) -> NamedSharding:
  """Sharding of a batch array: leading axis over `batch_axes`, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(tuple(batch_axes), *([None] * (ndim - 1))))


def init_sharded(make_module: Callable[[], nnx.Module], mesh: Mesh | None,
                 rules: Rules = LOGICAL_RULES) -> nnx.Module:
  """Initializes `make_module()` abstractly, then materializes each parameter directly in its sharding.

  No device ever holds a full copy of a sharded parameter: the jitted initializer's out_shardings place
  every leaf where it belongs. With `mesh=None` this is a plain initialization.
  """
  if mesh is None:
    return make_module()
  abstract = nnx.eval_shape(make_module)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh, rules)

  state = jax.jit(lambda: nnx.split(make_module())[1], out_shardings=shardings)()
  return nnx.merge(graphdef, state)
