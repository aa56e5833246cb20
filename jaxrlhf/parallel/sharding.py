"""Logical axis names -> mesh axes, and sharded initialization without a full host copy.

Parameters are created with logical axis names in their `out_sharding` metadata (e.g. ("embed", "mlp")).
One rules table maps each logical name to a mesh axis (or None: replicated). A dimension that the mapped
mesh axis does not divide is replicated instead (e.g. 3 KV heads over 2 tensor shards), so any model fits
any mesh; the resulting layout is still deterministic and inspectable.
"""

from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxrlhf.parallel.mesh import MESH_AXES

Rules = Sequence[tuple[str, Any]]

# The mesh axes a batch's leading (example) axis is split over: data parallelism and FSDP both take a share of
# the examples. Every batch placement in the library goes through `batch_axes` / `batch_sharding`.
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: Rules = (
    ("batch", BATCH_AXES),
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
    shape, mesh: with `mesh`, the mesh axes it lacks (a user's `jax.make_mesh((8,), ("data",))`) or that
      have size 1 shard nothing; with `shape` too, a dimension that its mesh axes do not divide is replicated.
      A mesh axis already used by an earlier dimension is never used twice (a PartitionSpec may name each
      mesh axis once).

  Raises:
    ValueError: a logical name without a rule, or (with `mesh`) a rule naming a mesh axis that is neither in
      `mesh` nor one of the library's axes (data, fsdp, tensor): a typo in custom rules.
  """
  table = dict(rules)
  unknown = [name for name in logical_names if name is not None and name not in table]
  if unknown:
    raise ValueError(f"logical axis names {unknown} have no sharding rule; known: {sorted(table)}")
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_names):
    mesh_axes = None if name is None else table[name]
    if mesh_axes is not None:
      names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
      names = tuple(n for n in names if n not in used)
      if mesh is not None:
        foreign = [n for n in names if n not in mesh.axis_names and n not in MESH_AXES]
        if foreign:
          raise ValueError(f"logical axis {name!r}: its rule names mesh axes {foreign}, which the mesh "
                           f"{dict(mesh.shape)} does not have")
        # The library's axes that a user's mesh leaves out, or of size 1, shard nothing.
        names = tuple(n for n in names if mesh.shape.get(n, 1) > 1)
      mesh_axes = names if names else None
      if mesh_axes is not None and mesh is not None and shape is not None and \
          shape[dim] % _axis_size(mesh, mesh_axes):
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

  Leaves without logical names are replicated. Any mesh works (see `auto_axes`).
  """
  mesh = auto_axes(mesh)

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
  """A fully replicated sharding on `mesh` (with Auto axes, see `auto_axes`)."""
  return NamedSharding(auto_axes(mesh), PartitionSpec())


def auto_axes(mesh: Mesh) -> Mesh:
  """`mesh` with every axis of type Auto (the same devices and names).

  The library places arrays with explicit in/out shardings at jit boundaries and lets XLA propagate inside
  (Auto axes). `jax.make_mesh` defaults to Explicit axes in recent JAX, under which sharding becomes part of
  every array's type and ops such as gathers over a sharded axis fail to type-check; every public function
  that takes a user's mesh converts it here first, so any mesh works.
  """
  if mesh is None or all(t == AxisType.Auto for t in mesh.axis_types):
    return mesh
  return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The `BATCH_AXES` that `mesh` has, in order (a batch's leading axis is split over them)."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_shards(mesh: Mesh) -> int:
  """How many shards a batch's leading axis is split into on `mesh` (the product of its batch axes)."""
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def batch_sharding(mesh: Mesh | None, ndim: int = 1, axis: int = 0) -> NamedSharding | None:
  """Sharding of batch arrays: axis `axis` (the examples) over the mesh's batch axes, the others replicated.

  `ndim` only pads the spec with trailing Nones; a spec shorter than an array's rank replicates the rest, so
  the default also fits every array of a batch pytree. None for mesh None (jit places the batch). The sharding's
  mesh has Auto axes (`auto_axes`), like the parameter shardings it goes into one jit with.
  """
  if axis < 0:  # A negative axis would index the padded spec from its end: the wrong dimension.
    raise ValueError(f"batch_sharding: axis must be >= 0 (counted from the front), got {axis}")
  if mesh is None:
    return None
  spec = [None] * max(ndim, axis + 1)
  spec[axis] = batch_axes(mesh) or None
  return NamedSharding(auto_axes(mesh), PartitionSpec(*spec))


def init_sharded(make_module: Callable[[], nnx.Module], mesh: Mesh | None,
                 rules: Rules = LOGICAL_RULES) -> nnx.Module:
  """Initializes `make_module()` abstractly, then materializes each parameter directly in its sharding.

  No device ever holds a full copy of a sharded parameter: the jitted initializer's out_shardings place
  every leaf where it belongs. With `mesh=None` this is a plain initialization.
  """
  if mesh is None:
    return make_module()
  mesh = auto_axes(mesh)
  abstract = nnx.eval_shape(make_module)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh, rules)

  state = jax.jit(lambda: nnx.split(make_module())[1], out_shardings=shardings)()
  return nnx.merge(graphdef, state)
