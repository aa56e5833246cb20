"""`stages.common.overwrite`, how pretrained weights enter a train state: the values land in the old leaves' dtype
and sharding (on the library's meshes and on `jax.make_mesh`'s explicit ones), a broadcast stacks K copies on the
devices (an ensemble's shared backbone), the state passed in is left as it was, and a shape mismatch is named."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrlhf.parallel import MeshConfig, make_mesh
from jaxrlhf.parallel.mesh import MESH_AXES
from jaxrlhf.stages import common

K = 3


class _Leaves(nnx.Module):
  """A stacked (K, 8, 6) fp32 leaf, as an ensemble's members hold their backbone, and an (8, 6) bf16 one."""

  def __init__(self):
    self.members = nnx.Param(jnp.zeros((K, 8, 6), jnp.float32))
    self.single = nnx.Param(jnp.zeros((8, 6), jnp.bfloat16))


def _sharded_state(mesh):
  state = nnx.state(_Leaves())
  placed = {"members": jax.device_put(state["members"][...], NamedSharding(mesh, P(None, "fsdp", "tensor"))),
            "single": jax.device_put(state["single"][...], NamedSharding(mesh, P("data", "fsdp")))}
  nnx.replace_by_pure_dict(state, placed)
  return state


@pytest.mark.parametrize("mesh_kind", ["library", "explicit"])
def test_values_land_in_the_old_dtype_and_sharding(mesh_kind):
  devices = jax.devices()[:8]
  mesh = (make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), devices) if mesh_kind == "library"
          else jax.make_mesh((2, 2, 2), MESH_AXES, devices=devices))
  state = _sharded_state(mesh)
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(8, 6)).astype(np.float32)
  single = rng.normal(size=(8, 6)).astype(np.float32)  # fp32 weights into a bf16 leaf

  stacked = common.overwrite(state, {"members": weights}, broadcast=K)
  got = stacked["members"][...]
  assert got.dtype == jnp.float32 and got.shape == (K, 8, 6)
  assert got.sharding.spec == P(None, "fsdp", "tensor") and got.sharding.mesh.shape == mesh.shape
  np.testing.assert_array_equal(np.asarray(got), np.broadcast_to(weights, (K, 8, 6)))
  np.testing.assert_array_equal(np.asarray(stacked["single"][...]), np.zeros((8, 6)))  # not in `pure`: kept

  cast = common.overwrite(state, {"single": single})
  got = cast["single"][...]
  assert got.dtype == jnp.bfloat16 and got.sharding.spec == P("data", "fsdp")
  np.testing.assert_array_equal(np.asarray(got), single.astype(ml_dtypes.bfloat16))
  np.testing.assert_array_equal(np.asarray(state["members"][...]), np.zeros((K, 8, 6)))  # the input is unchanged


def test_a_shape_mismatch_is_named():
  state = _sharded_state(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8]))
  with pytest.raises(ValueError, match=r"shape \(3, 8, 5\) does not match the model's \(3, 8, 6\)"):
    common.overwrite(state, {"members": np.zeros((8, 5), np.float32)}, broadcast=K)
  with pytest.raises(ValueError, match=r"shape \(6, 8\) does not match the model's \(8, 6\)"):
    common.overwrite(state, {"single": np.zeros((6, 8), np.float32)})


def test_leaves_of_one_shape_share_one_stacking_program():
  """An unrolled model's layers repeat a few leaf shapes: stacking them compiles one program per (shape, sharding),
  not one per leaf (each compile costs ~40 ms on this CPU, hundreds of leaves in a real model)."""
  state = _sharded_state(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8]))
  common.overwrite(state, {"members": np.ones((8, 6), np.float32)}, broadcast=K)
  before = common._stacker.cache_info()
  for value in (2.0, 3.0):
    out = common.overwrite(state, {"members": np.full((8, 6), value, np.float32)}, broadcast=K)
    np.testing.assert_array_equal(np.asarray(out["members"][...]), np.full((K, 8, 6), value))
  after = common._stacker.cache_info()
  assert after.misses == before.misses and after.hits == before.hits + 2
